"""A saved folder is code on the Hub: it loads with ``trust_remote_code=True`` in a Python where hfgen is NOT
importable (DESIGN.md, "Code on the Hub") and gives bit-identical outputs.

One subprocess loads every folder (starting Python with torch and transformers costs seconds). It runs with
``python -S`` (no site-packages, no .pth files, so no editable-install finder) and a ``PYTHONPATH`` of symlinks to
the venv's site-packages minus every hfgen entry, from an empty working directory.
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import build, load_hfgen_tokenizer, random_ids, tiny_config
from hfgen import HfGenDecoderForCausalLM, HfGenDecoderForSequenceClassification

VARIANTS = {
    "default": {},
    "off_by_one": dict(softmax_variant="off_by_one"),
    "adaptive_temperature": dict(softmax_variant="adaptive_temperature"),
    "alibi": dict(position_embedding="alibi", num_key_value_heads=1),
    "relative_bias": dict(position_embedding="relative_bias", attention_gate=True),
}
EXPECTED_FILES = {"config.json", "model.safetensors", "configuration_hfgen_decoder.py", "modeling_hfgen_decoder.py"}
AUTO_CLASSES = {"AutoConfig", "AutoModel", "AutoModelForCausalLM", "AutoModelForSequenceClassification"}
TEXT = "The with statement is used to wrap the execution of a block"

CHILD = textwrap.dedent("""
    import importlib.util, json, sys
    import torch
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    assert importlib.util.find_spec("hfgen") is None, "hfgen is importable in the isolated interpreter"
    jobs = json.load(open(sys.argv[1]))
    results = {}
    for job in jobs:
        auto = {"AutoModelForCausalLM": AutoModelForCausalLM, "AutoModel": AutoModel,
                "AutoModelForSequenceClassification": AutoModelForSequenceClassification}[job["auto"]]
        model = auto.from_pretrained(job["path"], trust_remote_code=True).eval()
        module = type(model).__module__
        assert module.startswith("transformers_modules"), module
        inputs = torch.load(job["inputs"])
        with torch.no_grad():
            out = model(**inputs)
        key = "last_hidden_state" if job["auto"] == "AutoModel" else "logits"
        results[job["name"]] = {"output": out[key], "class": type(model).__name__, "module": module}
        if job.get("tokenizer"):
            tokenizer = AutoTokenizer.from_pretrained(job["path"], trust_remote_code=True)
            results[job["name"]]["token_ids"] = tokenizer(job["text"])["input_ids"]
    assert importlib.util.find_spec("hfgen") is None and "hfgen" not in sys.modules
    torch.save(results, sys.argv[2])
""")


def isolated_pythonpath(root) -> str:
    """A folder of symlinks to every site-packages entry except hfgen's own (package, dist-info, editable hooks)."""
    folder = root / "site"
    folder.mkdir()
    for packages in site.getsitepackages():
        if not os.path.isdir(packages):
            continue
        for name in os.listdir(packages):
            lowered = name.lower()
            if lowered.startswith("hfgen") or (lowered.startswith("__editable__") and "hfgen" in lowered):
                continue
            if not (folder / name).exists():
                (folder / name).symlink_to(os.path.join(packages, name))
    return str(folder)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Save every folder, load them all in one isolated subprocess; return what both sides computed."""
    root = tmp_path_factory.mktemp("hub")
    try:
        tokenizer = load_hfgen_tokenizer()
    except pytest.skip.Exception:
        tokenizer = None
    jobs, local = [], {}

    def add(name, model, auto, inputs, **extra):
        path = root / name
        if not path.exists():
            model.save_pretrained(path)
        torch.save(inputs, root / f"{name}.inputs.pt")
        with torch.no_grad():
            local[name] = model(**inputs).logits
        jobs.append(dict(name=name, path=str(path), auto=auto, inputs=str(root / f"{name}.inputs.pt"), **extra))
        return path

    ids = random_ids(2, 9)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    inputs = {"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask}
    for name, variant in VARIANTS.items():
        overrides = dict(variant)
        if name == "default" and tokenizer is not None:
            overrides.update(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
        model = build(HfGenDecoderForCausalLM, tiny_config(**overrides))
        path = add(name, model, "AutoModelForCausalLM", inputs,
                   **({"tokenizer": True, "text": TEXT} if name == "default" and tokenizer is not None else {}))
        if name == "default" and tokenizer is not None:
            tokenizer.save_pretrained(path)
        if name in ("default", "alibi"):  # the bare decoder from the same folder
            jobs.append(dict(name=f"{name}-base", path=str(path), auto="AutoModel", inputs=jobs[-1]["inputs"]))
            with torch.no_grad():
                local[f"{name}-base"] = model.model(**inputs).last_hidden_state
    for name in ("default", "off_by_one"):
        classifier = build(HfGenDecoderForSequenceClassification, tiny_config(num_labels=3, **VARIANTS[name]))
        add(f"{name}-classifier", classifier, "AutoModelForSequenceClassification", inputs)

    (root / "jobs.json").write_text(json.dumps(jobs))
    workdir = root / "cwd"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "HF_", "TRANSFORMERS"))}
    # The same torch thread count as this process: bitwise-equal outputs need the same reduction order.
    env.update(PYTHONPATH=isolated_pythonpath(root), HF_HOME=str(root / "hf_home"), HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS=str(torch.get_num_threads()))
    result = subprocess.run([sys.executable, "-S", "-c", CHILD, str(root / "jobs.json"), str(root / "out.pt")],
                            cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"isolated load failed:\n{result.stdout}\n{result.stderr[-6000:]}"
    remote = torch.load(root / "out.pt")
    return dict(root=root, local=local, remote=remote, tokenizer=tokenizer, jobs=jobs)


def test_the_isolated_interpreter_cannot_import_hfgen(tmp_path):
    """The isolation itself: the same environment without the model folders fails to import hfgen."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = isolated_pythonpath(tmp_path)
    result = subprocess.run([sys.executable, "-S", "-c", "import transformers, torch; import hfgen"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "No module named 'hfgen'" in result.stderr, result.stderr[-2000:]


@pytest.mark.parametrize("name", [*VARIANTS, "default-base", "alibi-base", "default-classifier",
                                  "off_by_one-classifier"])
def test_isolated_load_gives_identical_outputs(exported, name):
    remote = exported["remote"][name]
    assert remote["module"].startswith("transformers_modules")
    assert torch.equal(remote["output"], exported["local"][name]), name


def test_isolated_load_picks_the_right_classes(exported):
    remote = exported["remote"]
    assert remote["default"]["class"] == "HfGenDecoderForCausalLM"
    assert remote["default-base"]["class"] == "HfGenDecoderModel"
    assert remote["default-classifier"]["class"] == "HfGenDecoderForSequenceClassification"


def test_isolated_tokenizer_encodes_the_same(exported):
    if exported["tokenizer"] is None:
        pytest.skip("hfgen.data.load_tokenizer is not available: no tokenizer to export")
    assert exported["remote"]["default"]["token_ids"] == exported["tokenizer"](TEXT)["input_ids"]


@pytest.mark.parametrize("name", [*VARIANTS, "default-classifier"])
def test_saved_folder_lists_every_auto_class_and_holds_the_code(exported, name):
    folder = exported["root"] / name
    files = set(os.listdir(folder))
    assert EXPECTED_FILES <= files, sorted(files)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "hfgen_decoder"
    assert AUTO_CLASSES <= set(config["auto_map"]), config["auto_map"]
    for reference in config["auto_map"].values():  # "module.Class": the module's file is in the folder
        assert reference.split(".")[0] + ".py" in files, reference
    # Every sibling the copied modules import with `from .x import y` was copied too.
    for source in (f for f in files if f.endswith(".py")):
        for line in (folder / source).read_text().splitlines():
            if line.startswith("from .") and " import " in line:
                assert line.split()[1][1:] + ".py" in files, f"{source}: {line}"


def test_every_auto_map_entry_names_a_class_of_its_own_family():
    """Each family's config.json ``auto_map`` (its ``AUTO_MAP``) and the in-process registration come from one
    list, and every entry is a class whose ``config_class`` is that family's: Gato no longer carries the decoder's
    ``AutoModel`` / ``AutoModelForSequenceClassification`` entries (loading through them raised "config_class ...
    not consistent"). An Auto class a family does not serve is transformers' clear "Unrecognized configuration"."""
    from transformers import AutoConfig, AutoModel

    from hfgen.models.registration import CONFIGS, family_models

    for config_class in CONFIGS:
        assert config_class().auto_map == config_class.AUTO_MAP, config_class.__name__
        assert config_class.AUTO_MAP["AutoConfig"].endswith(f".{config_class.__name__}")
        for auto_class, model_class in family_models(config_class):
            assert model_class.config_class is config_class, (auto_class.__name__, model_class.__name__)
            assert auto_class._model_mapping[config_class] is model_class
        assert AutoConfig.for_model(config_class.model_type).__class__ is config_class
    gato = CONFIGS[[c.model_type for c in CONFIGS].index("hfgen_gato")]()
    assert set(gato.auto_map) == {"AutoConfig", "AutoModelForCausalLM"}
    with pytest.raises(ValueError, match="Unrecognized configuration class"):
        AutoModel.from_config(gato)
