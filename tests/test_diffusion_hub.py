"""Saved image generators are code on the Hub: pipelines load with ``DiffusionPipeline.from_pretrained(path,
trust_remote_code=True)`` and single models with ``diffusers.AutoModel.from_pretrained(path,
trust_remote_code=True)`` in a Python where hfgen is NOT importable (the isolation of test_hub_portability.py),
and give identical outputs."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler

from conftest import load_hfgen_tokenizer
from hfgen import HfGenEncoderConfig, HfGenEncoderModel
from hfgen.diffusion import (
    HfGenDiffusionPipeline,
    HfGenDiTModel,
    HfGenFlowModel,
    HfGenGANDiscriminator,
    HfGenGANGenerator,
    HfGenUNet2DModel,
    HfGenVAEModel,
)
from hfgen.diffusion.vq_hfgen import HfGenVQModel
from test_diffusion_pipeline import DIT, UNET, randomised
from test_hub_portability import isolated_pythonpath

CHILD = textwrap.dedent("""
    import importlib.util, json, sys
    import torch
    from diffusers import AutoModel, DiffusionPipeline

    assert importlib.util.find_spec("hfgen") is None, "hfgen is importable in the isolated interpreter"
    jobs = json.load(open(sys.argv[1]))
    results = {}
    for job in jobs:
        inputs = torch.load(job["inputs"])
        if job["kind"] == "pipeline":
            pipe = DiffusionPipeline.from_pretrained(job["path"], trust_remote_code=True)
            pipe.set_progress_bar_config(disable=True)
            out = pipe(generator=torch.Generator().manual_seed(0), output_type="pt", **inputs).images
            classes = {k: type(v).__name__ for k, v in pipe.components.items() if v is not None}
            modules = [type(v).__module__ for v in pipe.components.values() if v is not None]
            classes["pipeline"] = type(pipe).__name__
        else:
            model = AutoModel.from_pretrained(job["path"], trust_remote_code=True).eval()
            with torch.no_grad():
                out = getattr(model, job["method"])(**inputs)
            out = out if torch.is_tensor(out) else out[0]
            classes, modules = {"model": type(model).__name__}, [type(model).__module__]
        results[job["name"]] = {"output": out, "classes": classes, "modules": modules}
    assert "hfgen" not in sys.modules
    torch.save(results, sys.argv[2])
""")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("diffusion_hub")
    jobs, local = [], {}

    def add_pipeline(name, pipe, **inputs):
        pipe.set_progress_bar_config(disable=True)
        pipe.save_pretrained(root / name)
        torch.save(inputs, root / f"{name}.pt")
        local[name] = pipe(generator=torch.Generator().manual_seed(0), output_type="pt", **inputs).images
        jobs.append(dict(name=name, kind="pipeline", path=str(root / name), inputs=str(root / f"{name}.pt")))

    def add_model(name, model, method, **inputs):
        model.eval().save_pretrained(root / name)
        torch.save(inputs, root / f"{name}.pt")
        with torch.no_grad():
            out = getattr(model, method)(**inputs)
        local[name] = out if torch.is_tensor(out) else out[0]
        jobs.append(dict(name=name, kind="model", method=method, path=str(root / name),
                         inputs=str(root / f"{name}.pt")))

    torch.manual_seed(0)
    unet = randomised(HfGenUNet2DModel(**UNET, num_class_embeds=3, attention_scoring="general"))
    add_pipeline("unet-class", HfGenDiffusionPipeline(unet, DDIMScheduler(num_train_timesteps=50)),
                 class_labels=[0, 2], guidance_scale=2.0, num_inference_steps=3)
    dit = randomised(HfGenDiTModel(**DIT, cross_attention_dim=6, softmax_variant="off_by_one"))
    add_pipeline("dit-text", HfGenDiffusionPipeline(dit, EulerDiscreteScheduler(num_train_timesteps=50)),
                 prompt_embeds=torch.randn(2, 3, 6), guidance_scale=3.0, num_inference_steps=3)
    tokenizer = load_hfgen_tokenizer()
    encoder = HfGenEncoderModel(HfGenEncoderConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                                   num_hidden_layers=1, num_attention_heads=2,
                                                   pad_token_id=tokenizer.pad_token_id)).eval()
    text_unet = randomised(HfGenUNet2DModel(**UNET, cross_attention_dim=16))
    add_pipeline("text-encoder", HfGenDiffusionPipeline(text_unet, DDIMScheduler(num_train_timesteps=50),
                                                        text_encoder=encoder, tokenizer=tokenizer),
                 prompt=["a seven", "the digit zero"], guidance_scale=2.0, num_inference_steps=2)
    vae = randomised(HfGenVAEModel(latent_channels=2, block_out_channels=(8, 8), norm_num_groups=4, sample_size=8))
    latent_unet = randomised(HfGenUNet2DModel(sample_size=4, in_channels=2, out_channels=2, block_out_channels=(8, 8),
                                              num_attention_heads=2, norm_num_groups=4))
    add_pipeline("latent", HfGenDiffusionPipeline(latent_unet, DDIMScheduler(num_train_timesteps=50), vae=vae),
                 batch_size=2, num_inference_steps=2)
    add_model("vae", vae, "decode", z=torch.randn(2, 2, 4, 4))
    add_model("gan-generator", randomised(HfGenGANGenerator(latent_dim=8, image_size=8, base_channels=8)), "forward",
              latents=torch.randn(3, 8))
    discriminator = HfGenGANDiscriminator(image_size=8, base_channels=8).train()
    discriminator(torch.randn(4, 1, 8, 8))  # one power iteration: u, v are not their initial values
    add_model("gan-discriminator", discriminator, "forward", images=torch.randn(3, 1, 8, 8))
    flow = HfGenFlowModel(sample_size=4, num_steps=2, hidden_channels=8).train()
    flow(torch.randn(8, 1, 4, 4))  # actnorm data-dependent init
    with torch.no_grad():
        for step in flow.steps:
            step.coupling.net[-1].weight.normal_(0, 0.3)
    add_model("flow", flow, "decode", z=torch.randn(2, 1, 4, 4))
    vq = HfGenVQModel(block_out_channels=(8, 16), latent_channels=4, norm_num_groups=4, num_vq_embeddings=16,
                      num_levels=2)
    add_model("vqvae2", vq, "detokenize", tokens=vq.tokenize(torch.randn(2, 1, 8, 8)))

    (root / "jobs.json").write_text(json.dumps(jobs))
    workdir = root / "cwd"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "HF_", "TRANSFORMERS", "DIFFUSERS"))}
    env.update(PYTHONPATH=isolated_pythonpath(root), HF_HOME=str(root / "hf_home"), HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-S", "-c", CHILD, str(root / "jobs.json"), str(root / "out.pt")],
                            cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"isolated load failed:\n{result.stdout}\n{result.stderr[-6000:]}"
    return dict(root=root, local=local, remote=torch.load(root / "out.pt"))


NAMES = ["unet-class", "dit-text", "text-encoder", "latent", "vae", "gan-generator", "gan-discriminator", "flow",
         "vqvae2"]


@pytest.mark.parametrize("name", NAMES)
def test_isolated_load_gives_identical_outputs(exported, name):
    remote = exported["remote"][name]
    assert all(m.startswith(("diffusers_modules", "diffusers.", "transformers.")) for m in remote["modules"]), remote
    assert torch.equal(remote["output"], exported["local"][name]), name


def test_isolated_load_picks_the_right_classes(exported):
    remote = exported["remote"]
    assert remote["unet-class"]["classes"] == {"pipeline": "HfGenDiffusionPipeline", "unet": "HfGenUNet2DModel",
                                               "scheduler": "DDIMScheduler"}
    assert remote["dit-text"]["classes"]["unet"] == "HfGenDiTModel"
    assert remote["latent"]["classes"]["vae"] == "HfGenVAEModel"
    assert remote["text-encoder"]["classes"]["text_encoder"] == "HfGenEncoderModel"
    assert remote["flow"]["classes"] == {"model": "HfGenFlowModel"}


def test_saved_pipeline_folder_layout(exported):
    folder = exported["root"] / "latent"
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_hfgen_diffusion", "HfGenDiffusionPipeline"]
    assert index["unet"] == ["unet_hfgen", "HfGenUNet2DModel"] and index["vae"] == ["vae_hfgen", "HfGenVAEModel"]
    assert (folder / "pipeline_hfgen_diffusion.py").is_file()
    # one self-contained file per component: from the Hub, diffusers fetches only `<component>/<module>.py`
    assert {f for f in os.listdir(folder / "unet") if f.endswith(".py")} == {"unet_hfgen.py"}
    assert {f for f in os.listdir(folder / "vae") if f.endswith(".py")} == {"vae_hfgen.py"}
    for source in (folder / "pipeline_hfgen_diffusion.py", folder / "unet" / "unet_hfgen.py",
                   folder / "vae" / "vae_hfgen.py"):
        for node in ast.walk(ast.parse(source.read_text())):  # real imports, not import lines inside strings
            if isinstance(node, ast.ImportFrom):
                assert not node.level and node.module.split(".")[0] != "hfgen", (source, ast.unparse(node))
            elif isinstance(node, ast.Import):
                assert all(alias.name.split(".")[0] != "hfgen" for alias in node.names), (source, ast.unparse(node))
