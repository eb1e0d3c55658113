"""Code on the Hub for the encoder-decoder family: a saved folder loads with ``AutoModelForSeq2SeqLM`` /
``AutoModel`` and ``trust_remote_code=True`` in a Python where hfgen is NOT importable, and gives identical logits
and generated tokens (the isolation is tests/test_hub_portability.py's: ``python -S``, site-packages minus hfgen)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import build
from hfgen import HfGenSeq2SeqForConditionalGeneration
from test_hub_portability import isolated_pythonpath
from test_seq2seq_fixtures import VARIANTS, decoder_ids, source_batch, tiny_seq2seq_config

NAMES = ["default", "t5_like", "alibi", "adaptive_temperature"]
GENERATE = {"greedy": dict(do_sample=False), "beams": dict(num_beams=3, do_sample=False)}

CHILD = textwrap.dedent("""
    import importlib.util, json, sys
    import torch
    from transformers import AutoModel, AutoModelForSeq2SeqLM

    assert importlib.util.find_spec("hfgen") is None, "hfgen is importable in the isolated interpreter"
    jobs = json.load(open(sys.argv[1]))
    inputs = torch.load(sys.argv[2])
    generate = json.load(open(sys.argv[3]))
    results = {}
    for name, path in jobs.items():
        model = AutoModelForSeq2SeqLM.from_pretrained(path, trust_remote_code=True).eval()
        base = AutoModel.from_pretrained(path, trust_remote_code=True).eval()
        with torch.no_grad():
            result = {"logits": model(**inputs).logits, "base": base(**inputs).last_hidden_state,
                      "class": type(model).__name__, "base_class": type(base).__name__,
                      "module": type(model).__module__}
        source = {k: v for k, v in inputs.items() if k != "decoder_input_ids"}
        for how, kwargs in generate.items():
            result[how] = model.generate(**source, max_new_tokens=6, min_new_tokens=6, **kwargs)
        results[name] = result
    assert "hfgen" not in sys.modules
    torch.save(results, sys.argv[4])
""")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub_seq2seq")
    ids, mask = source_batch()
    inputs = dict(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids(3, 5))
    jobs, local = {}, {}
    for name in NAMES:
        model = build(HfGenSeq2SeqForConditionalGeneration, tiny_seq2seq_config(**VARIANTS[name]))
        model.save_pretrained(root / name)
        jobs[name] = str(root / name)
        with torch.no_grad():
            local[name] = {"logits": model(**inputs).logits, "base": model.model(**inputs).last_hidden_state}
        for how, kwargs in GENERATE.items():
            local[name][how] = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6,
                                              min_new_tokens=6, **kwargs)
    torch.save(inputs, root / "inputs.pt")
    (root / "jobs.json").write_text(json.dumps(jobs))
    (root / "generate.json").write_text(json.dumps(GENERATE))
    workdir = root / "cwd"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "HF_", "TRANSFORMERS"))}
    env.update(PYTHONPATH=isolated_pythonpath(root), HF_HOME=str(root / "hf_home"), HF_HUB_OFFLINE="1")
    args = [str(root / f) for f in ("jobs.json", "inputs.pt", "generate.json", "out.pt")]
    result = subprocess.run([sys.executable, "-S", "-c", CHILD, *args], cwd=workdir, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, f"isolated load failed:\n{result.stdout}\n{result.stderr[-6000:]}"
    return dict(root=root, local=local, remote=torch.load(root / "out.pt"))


@pytest.mark.parametrize("name", NAMES)
def test_isolated_load_gives_identical_logits_and_tokens(exported, name):
    remote, local = exported["remote"][name], exported["local"][name]
    assert remote["module"].startswith("transformers_modules")
    assert remote["class"] == "HfGenSeq2SeqForConditionalGeneration" and remote["base_class"] == "HfGenSeq2SeqModel"
    assert torch.equal(remote["logits"], local["logits"])
    assert torch.equal(remote["base"], local["base"])
    for how in GENERATE:
        assert torch.equal(remote[how], local[how]), how


def test_saved_folder_lists_every_auto_class_and_holds_the_code(exported):
    folder = exported["root"] / "default"
    files = set(os.listdir(folder))
    assert {"config.json", "model.safetensors", "configuration_hfgen_seq2seq.py", "modeling_hfgen_seq2seq.py",
            "t5_conversion.py"} <= files, sorted(files)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "hfgen_seq2seq" and config["is_encoder_decoder"] is True
    assert {"AutoConfig", "AutoModel", "AutoModelForSeq2SeqLM"} <= set(config["auto_map"])
    for source in (f for f in files if f.endswith(".py")):
        for line in (folder / source).read_text().splitlines():
            line = line.strip()
            if line.startswith("from .") and " import " in line:
                assert line.split()[1][1:] + ".py" in files, f"{source}: {line}"
