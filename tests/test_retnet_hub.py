"""A saved RetNet folder (and a decoder with a mixture of experts) is code on the Hub: it loads with
``trust_remote_code=True`` where hfgen is not importable and gives identical outputs (the isolated interpreter of
``test_hub_portability``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from conftest import build, random_ids, tiny_config
from hfgen import HfGenDecoderForCausalLM
from test_hub_portability import CHILD, isolated_pythonpath
from test_retnet import build_retnet, retnet_config

EXPECTED_FILES = {"config.json", "model.safetensors", "configuration_hfgen_retnet.py", "modeling_hfgen_retnet.py"}


def test_isolated_load_gives_identical_outputs(tmp_path):
    ids = random_ids(2, 9)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    inputs = {"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask}
    torch.save(inputs, tmp_path / "inputs.pt")
    models = {"retnet": build_retnet(),
              "retnet-moe": build_retnet(retnet_config(num_experts=4, mlp_type="gated", hidden_act="silu")),
              "decoder-moe": build(HfGenDecoderForCausalLM, tiny_config(num_experts=4, num_experts_per_tok=2))}
    jobs, local = [], {}
    for name, model in models.items():
        model.save_pretrained(tmp_path / name)
        files = set(os.listdir(tmp_path / name))
        expected = EXPECTED_FILES if name.startswith("retnet") else {"modeling_hfgen_decoder.py"}
        assert expected <= files and "moe.py" in files, sorted(files)
        config = json.loads((tmp_path / name / "config.json").read_text())
        assert {"AutoConfig", "AutoModel", "AutoModelForCausalLM"} <= set(config["auto_map"])
        with torch.no_grad():
            local[name] = model(**inputs).logits
            local[f"{name}-base"] = model.model(**inputs).last_hidden_state
        for auto, key in (("AutoModelForCausalLM", name), ("AutoModel", f"{name}-base")):
            jobs.append(dict(name=key, path=str(tmp_path / name), auto=auto, inputs=str(tmp_path / "inputs.pt")))
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "HF_", "TRANSFORMERS"))}
    env.update(PYTHONPATH=isolated_pythonpath(tmp_path), HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-S", "-c", CHILD, str(tmp_path / "jobs.json"), str(tmp_path / "out.pt")],
                            cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"isolated load failed:\n{result.stdout}\n{result.stderr[-6000:]}"
    remote = torch.load(tmp_path / "out.pt")
    for name in local:
        assert remote[name]["module"].startswith("transformers_modules"), remote[name]["module"]
        assert torch.equal(remote[name]["output"], local[name]), name
    assert remote["retnet"]["class"] == "HfGenRetNetForCausalLM"
    assert remote["retnet-base"]["class"] == "HfGenRetNetModel"
    assert remote["decoder-moe"]["class"] == "HfGenDecoderForCausalLM"
