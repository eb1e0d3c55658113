"""Code on the Hub for the encoder family: a saved folder loads through every Auto class it lists with
``trust_remote_code=True`` in a Python where hfgen is NOT importable, and gives identical outputs (the isolation is
tests/test_hub_portability.py's: ``python -S``, site-packages minus hfgen, an empty working directory)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from hfgen import (
    HfGenEncoderForMaskedLM,
    HfGenEncoderForPreTraining,
    HfGenEncoderForSequenceClassification,
    HfGenEncoderForTokenClassification,
)
from hfgen.models.configuration_hfgen_encoder import ENCODER_AUTO_MAP
from test_encoder_fixtures import VARIANTS, right_padded_batch, tiny_encoder_config
from test_hub_portability import isolated_pythonpath

# (folder, model class, variant); every folder is also loaded through AutoModel (the bare encoder).
FOLDERS = [("mlm-bert", HfGenEncoderForMaskedLM, "bert"),
           ("mlm-disentangled", HfGenEncoderForMaskedLM, "disentangled_gqa_off_by_one"),
           ("pretraining-alibi", HfGenEncoderForPreTraining, "alibi"),
           ("classifier-rotary", HfGenEncoderForSequenceClassification, "rotary"),
           ("tagger-adaptive", HfGenEncoderForTokenClassification, "disentangled_adaptive")]
AUTO = {HfGenEncoderForMaskedLM: "AutoModelForMaskedLM", HfGenEncoderForPreTraining: "AutoModelForPreTraining",
        HfGenEncoderForSequenceClassification: "AutoModelForSequenceClassification",
        HfGenEncoderForTokenClassification: "AutoModelForTokenClassification"}

CHILD = textwrap.dedent("""
    import importlib.util, json, sys
    import torch
    import transformers

    assert importlib.util.find_spec("hfgen") is None, "hfgen is importable in the isolated interpreter"
    jobs = json.load(open(sys.argv[1]))
    inputs = torch.load(sys.argv[2])
    results = {}
    for job in jobs:
        model = getattr(transformers, job["auto"]).from_pretrained(job["path"], trust_remote_code=True).eval()
        with torch.no_grad():
            out = model(**inputs)
        results[job["name"]] = {"outputs": {k: v for k, v in out.items() if torch.is_tensor(v)},
                                "class": type(model).__name__, "module": type(model).__module__}
    assert "hfgen" not in sys.modules
    torch.save(results, sys.argv[3])
""")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub_encoder")
    ids, mask, _ = right_padded_batch()
    inputs = {"input_ids": ids, "attention_mask": mask}
    torch.save(inputs, root / "inputs.pt")
    jobs, local = [], {}
    for name, model_class, variant in FOLDERS:
        torch.manual_seed(0)
        model = model_class(copy.deepcopy(tiny_encoder_config(num_labels=3, **VARIANTS[variant]))).eval()
        model.save_pretrained(root / name)
        with torch.no_grad():
            local[name] = {k: v for k, v in model(**inputs).items() if torch.is_tensor(v)}
            local[f"{name}-base"] = {"last_hidden_state": model.bert(**inputs).last_hidden_state}
        jobs += [dict(name=name, path=str(root / name), auto=AUTO[model_class]),
                 dict(name=f"{name}-base", path=str(root / name), auto="AutoModel")]
    (root / "jobs.json").write_text(json.dumps(jobs))
    workdir = root / "cwd"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "HF_", "TRANSFORMERS"))}
    env.update(PYTHONPATH=isolated_pythonpath(root), HF_HOME=str(root / "hf_home"), HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-S", "-c", CHILD, str(root / "jobs.json"), str(root / "inputs.pt"),
                             str(root / "out.pt")], cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"isolated load failed:\n{result.stdout}\n{result.stderr[-6000:]}"
    return dict(root=root, local=local, remote=torch.load(root / "out.pt"))


@pytest.mark.parametrize("name", [n for folder, _, _ in FOLDERS for n in (folder, f"{folder}-base")])
def test_isolated_load_gives_identical_outputs(exported, name):
    remote = exported["remote"][name]
    assert remote["module"].startswith("transformers_modules"), remote["module"]
    local = exported["local"][name]
    last = "last_hidden_state"
    keys = [last] if name.endswith("-base") else [k for k in local if k != last]
    assert keys
    for key in keys:
        assert torch.equal(remote["outputs"][key], local[key]), (name, key)
    expected = "HfGenEncoderModel" if name.endswith("-base") else \
        next(c for f, c, _ in FOLDERS if f == name).__name__
    assert remote["class"] == expected


@pytest.mark.parametrize("name", [folder for folder, _, _ in FOLDERS])
def test_saved_folder_lists_every_auto_class_and_holds_the_code(exported, name):
    folder = exported["root"] / name
    files = set(os.listdir(folder))
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "hfgen_encoder"
    assert config["auto_map"] == ENCODER_AUTO_MAP
    assert {"configuration_hfgen_encoder.py", "modeling_hfgen_encoder.py", "disentangled.py"} <= files
    for source in (f for f in files if f.endswith(".py")):
        for line in (folder / source).read_text().splitlines():
            if line.startswith("from .") and " import " in line:
                assert line.split()[1][1:] + ".py" in files, f"{source}: {line}"
