"""``hfgen_vlm`` as a Hugging Face user meets it: the processor (image + text -> inputs) saved with the model,
``AutoProcessor`` / ``AutoModelForImageTextToText`` and ``pipeline("image-text-to-text")`` from the saved folder,
the folder loading where hfgen is not installed, and clear errors for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

import hfgen  # noqa: F401
from hfgen.data.captions import (VlmCollator, caption, text_only, vlm_examples, vlm_processor, vlm_tokenizer)
from hfgen.models import HfGenDecoderConfig
from hfgen.models.configuration_hfgen_vit import HfGenViTConfig
from hfgen.models.configuration_hfgen_vlm import HfGenVlmConfig
from hfgen.models.modeling_hfgen_vlm import HfGenVlmForConditionalGeneration
from hfgen.models.processing_hfgen_vlm import HfGenVlmImageProcessor
from test_hub_portability import isolated_pythonpath

CHILD = textwrap.dedent("""
    import importlib.util, json, sys
    import numpy as np, torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    assert importlib.util.find_spec("hfgen") is None, "hfgen is importable in the isolated interpreter"
    results = {}
    for path in json.load(open(sys.argv[1])):
        model = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
        image = Image.fromarray(np.load(path + "/../image.npy"))
        inputs = processor(images=[image], text=["<image> caption:"])
        with torch.no_grad():
            logits = model(**inputs).logits
        results[path] = {"logits": logits, "input_ids": inputs["input_ids"], "module": type(model).__module__,
                         "processor": type(processor).__name__}
    # The Gato-like decoder's folder, saved beside them.
    from transformers import AutoModelForCausalLM

    gato = AutoModelForCausalLM.from_pretrained(sys.argv[3], trust_remote_code=True).eval()
    with torch.no_grad():
        results["gato"] = {"logits": gato(**torch.load(sys.argv[3] + "/../gato_inputs.pt")).logits,
                           "module": type(gato).__module__}
    assert "hfgen" not in sys.modules
    torch.save(results, sys.argv[2])
""")


@pytest.fixture(scope="module")
def tokenizer():
    return vlm_tokenizer()


def tiny_vlm(tokenizer, fusion: str) -> HfGenVlmForConditionalGeneration:
    torch.manual_seed(0)
    text = HfGenDecoderConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                              num_attention_heads=4, pad_token_id=tokenizer.pad_token_id,
                              eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True)
    vision = HfGenViTConfig(image_size=8, patch_size=4, hidden_size=32, intermediate_size=64, num_hidden_layers=1)
    config = HfGenVlmConfig(text_config=text, vision_config=vision, fusion=fusion,
                            image_token_id=tokenizer.convert_tokens_to_ids("<image>"))
    model = HfGenVlmForConditionalGeneration(config).eval()
    if fusion == "cross_attention":
        for layer in model.model.cross_attention_layers:
            layer.attn_gate.data.fill_(0.8)
    return model


def digit_image(seed: int = 0) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((8, 8)) * 255).astype(np.uint8))


def test_processor_expands_placeholders_and_scales_images(tokenizer):
    model = tiny_vlm(tokenizer, "projection")
    processor = vlm_processor(model.config, tokenizer)
    image = digit_image()
    batch = processor(images=[image, image], text=["<image> caption:", "<image> question: is this digit even?"])
    image_id = model.config.image_token_id
    assert ((batch["input_ids"] == image_id).sum(1) == model.config.vision_config.num_patches).all()
    expected = torch.from_numpy(np.array(image)).float() / 255 * 2 - 1  # (x/255 - 0.5) / 0.5
    torch.testing.assert_close(batch["pixel_values"][0, 0], expected)
    assert batch["attention_mask"][0, 0] == 0  # left padding for generation: the shorter prompt is padded left


@pytest.mark.parametrize("fusion", ["early", "projection", "cross_attention"])
def test_processor_and_model_save_and_reload(tokenizer, fusion, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = tiny_vlm(tokenizer, fusion)
    processor = vlm_processor(model.config, tokenizer)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    reloaded_processor = AutoProcessor.from_pretrained(tmp_path)
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    inputs = processor(images=[digit_image()], text=["<image> caption:"])
    again = reloaded_processor(images=[digit_image()], text=["<image> caption:"])
    assert all(torch.equal(inputs[k], again[k]) for k in inputs)
    with torch.no_grad():
        same = torch.equal(model(**inputs).logits, reloaded(**again).logits)
    print(f"identical logits: {same}")
    assert same


def test_pipeline_image_text_to_text_from_saved_folder(tokenizer, tmp_path):
    from transformers import pipeline

    model = tiny_vlm(tokenizer, "projection")
    processor = vlm_processor(model.config, tokenizer)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    pipe = pipeline("image-text-to-text", model=str(tmp_path))
    out = pipe(images=digit_image(), text="<image> caption:", max_new_tokens=4, do_sample=False)
    inputs = processor(images=[digit_image()], text=["<image> caption:"])
    direct = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    expected = processor.decode(direct[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert out[0]["generated_text"] == "<image> caption:" + expected


def test_folders_load_where_hfgen_is_not_installed(tokenizer, tmp_path):
    jobs, local = [], {}
    image = np.asarray(digit_image(1))
    np.save(tmp_path / "image.npy", image)
    for fusion in ("early", "projection", "cross_attention"):
        model = tiny_vlm(tokenizer, fusion)
        processor = vlm_processor(model.config, tokenizer)
        path = tmp_path / fusion
        model.save_pretrained(path)
        processor.save_pretrained(path)
        inputs = processor(images=[Image.fromarray(image)], text=["<image> caption:"])
        with torch.no_grad():
            local[str(path)] = (model(**inputs).logits, inputs["input_ids"])
        jobs.append(str(path))
    from test_gato import tiny_gato

    gato = tiny_gato()
    gato.save_pretrained(tmp_path / "gato")
    gato_inputs = {"input_ids": torch.tensor([[gato.config.image_token_id] * gato.config.num_patches + [5, 6]]),
                   "pixel_values": torch.randn(1, 1, 8, 8)}
    torch.save(gato_inputs, tmp_path / "gato_inputs.pt")
    with torch.no_grad():
        gato_logits = gato(**gato_inputs).logits
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "HF_", "TRANSFORMERS"))}
    env.update(PYTHONPATH=isolated_pythonpath(tmp_path), HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1",
               # the child's thread count = ours: a different one splits reductions differently (last-bit changes)
               TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS=str(torch.get_num_threads()))
    result = subprocess.run([sys.executable, "-S", "-c", CHILD, str(tmp_path / "jobs.json"), str(tmp_path / "out.pt"),
                             str(tmp_path / "gato")],
                            cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"isolated load failed:\n{result.stdout}\n{result.stderr[-6000:]}"
    remote = torch.load(tmp_path / "out.pt")
    for path, (logits, ids) in local.items():
        assert remote[path]["module"].startswith("transformers_modules")
        assert remote[path]["processor"] == "HfGenVlmProcessor"
        assert torch.equal(remote[path]["input_ids"], ids)
        assert torch.equal(remote[path]["logits"], logits), path
    assert remote["gato"]["module"].startswith("transformers_modules")
    assert torch.equal(remote["gato"]["logits"], gato_logits)


# --- data -------------------------------------------------------------------------------------------------------

def test_captions_and_answers_follow_the_labels():
    images = torch.zeros(10, 1, 8, 8)
    labels = torch.arange(10)
    examples = vlm_examples(images, labels)
    words = "zero one two three four five six seven eight nine".split()
    captions = [e.target for e in examples if e.kind == "caption"]
    assert captions == [f" a handwritten {w}" for w in words]
    even = [e.target.strip() for e in examples if "even" in e.prompt]
    assert even == ["yes" if d % 2 == 0 else "no" for d in range(10)]
    greater = [e.target.strip() for e in examples if "greater than four" in e.prompt]
    assert greater == ["yes" if d > 4 else "no" for d in range(10)]
    assert caption(7) == "a handwritten seven"
    assert all("<image>" not in t for t in text_only(examples))
    # LENS-like: the language model's text has the image's description where the image will be.
    assert text_only(examples)[7 * 4] == " seven caption: a handwritten seven"
    assert text_only(examples, describe_image=False)[7 * 4] == " caption: a handwritten seven"


def test_collator_puts_the_loss_on_the_target_only(tokenizer):
    model = tiny_vlm(tokenizer, "projection")
    processor = vlm_processor(model.config, tokenizer)
    examples = vlm_examples(torch.rand(2, 1, 8, 8) * 2 - 1, torch.tensor([7, 2]), kinds=("caption",))
    batch = VlmCollator(processor)(examples)
    for row in range(2):
        kept = batch["labels"][row][batch["labels"][row] != -100].tolist()
        target = tokenizer(examples[row].target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        assert kept == target
    with torch.no_grad():
        assert torch.isfinite(model(**batch).loss)


# --- bad input --------------------------------------------------------------------------------------------------

def test_image_size_not_divisible_by_patch_size():
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        HfGenViTConfig(image_size=10, patch_size=4)


def test_wrong_image_shape_is_a_clear_error(tokenizer):
    model = tiny_vlm(tokenizer, "projection")
    ids = torch.tensor([[model.config.image_token_id] * 4 + [5]])
    with pytest.raises(ValueError, match="not divisible by the patch size"):
        model(input_ids=ids, pixel_values=torch.zeros(1, 1, 10, 10))
    with pytest.raises(ValueError, match="image_size"):
        model(input_ids=ids, pixel_values=torch.zeros(1, 1, 12, 12))


@pytest.mark.parametrize("fusion", ["early", "projection", "cross_attention"])
def test_more_images_than_placeholders(tokenizer, fusion):
    model = tiny_vlm(tokenizer, fusion)
    processor = vlm_processor(model.config, tokenizer)
    with pytest.raises(ValueError, match="more images than image placeholders"):
        processor(images=[digit_image(), digit_image()], text=["<image> caption:"])
    ids = torch.tensor([[model.config.image_token_id] * model.config.num_image_tokens + [5]])
    with pytest.raises(ValueError, match="more images than image placeholders"):
        model(input_ids=ids, pixel_values=torch.zeros(2, 1, 8, 8))


def test_unknown_fusion_and_bad_image_token():
    with pytest.raises(ValueError, match="valid choices are: 'early', 'projection', 'cross_attention'"):
        HfGenVlmConfig(fusion="late")
    with pytest.raises(ValueError, match="image_token_id"):
        HfGenVlmConfig(text_config=HfGenDecoderConfig(vocab_size=100), image_token_id=100)


def test_unsupported_image_type():
    with pytest.raises(ValueError, match="Unsupported image type"):
        HfGenVlmImageProcessor(image_size=8)(["not an image"])
