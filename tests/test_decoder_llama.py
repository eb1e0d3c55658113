"""With default keys the decoder is Llama: same parameter names, same logits for the same weights, and a Llama
checkpoint loads into it and then runs with any variant switched on (DESIGN.md, "Public contract")."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from conftest import LLAMA_KEYS, TINY, build, random_ids
from hfgen import HfGenDecoderConfig, HfGenDecoderForCausalLM

def llama_and_hfgen(attn_implementation: str, **overrides):
    """A random Llama and an hfgen decoder holding exactly its weights."""
    llama = build(LlamaForCausalLM, LlamaConfig(**{**LLAMA_KEYS, **overrides}), attn_implementation=attn_implementation)
    ours = build(HfGenDecoderForCausalLM, HfGenDecoderConfig(**{**LLAMA_KEYS, **overrides}), seed=1,
                 attn_implementation=attn_implementation)
    ours.load_state_dict(llama.state_dict(), strict=True)
    return llama, ours


def test_state_dict_keys_and_shapes_match_llama():
    llama = build(LlamaForCausalLM, LlamaConfig(**LLAMA_KEYS))
    ours = build(HfGenDecoderForCausalLM, HfGenDecoderConfig(**LLAMA_KEYS))
    theirs = {k: tuple(v.shape) for k, v in llama.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == theirs


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("num_key_value_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("padding", [None, "left", "right"])
def test_logits_match_llama(attn_implementation, num_key_value_heads, padding):
    llama, ours = llama_and_hfgen(attn_implementation, num_key_value_heads=num_key_value_heads)
    ids = random_ids(3, 9)
    mask = torch.ones_like(ids)
    if padding == "left":
        mask[1, :4] = 0
        mask[2, :2] = 0
    elif padding == "right":
        mask[1, 5:] = 0
        mask[2, 7:] = 0
    ids = ids.masked_fill(mask == 0, 0)
    kwargs = {} if padding is None else {"attention_mask": mask}
    with torch.no_grad():
        expected = llama(ids, **kwargs).logits
        got = ours(ids, **kwargs).logits
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=1e-5)


def test_llama_checkpoint_loads_then_runs_with_a_variant(tmp_path):
    llama = build(LlamaForCausalLM, LlamaConfig(**LLAMA_KEYS))
    llama.save_pretrained(tmp_path)
    ids = random_ids(2, 8)
    with torch.no_grad():
        expected = llama(ids).logits

    ours = HfGenDecoderForCausalLM.from_pretrained(tmp_path).eval()
    assert ours.config.model_type == "hfgen_decoder"
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, expected, atol=1e-5, rtol=1e-5)

    variant = HfGenDecoderForCausalLM.from_pretrained(tmp_path, softmax_variant="off_by_one").eval()
    assert variant.config.softmax_variant == "off_by_one"
    for name, tensor in llama.state_dict().items():  # the same weights ...
        torch.testing.assert_close(variant.state_dict()[name], tensor, atol=0, rtol=0)
    with torch.no_grad():
        logits = variant(ids).logits
    assert torch.isfinite(logits).all()
    assert (logits - expected).abs().max() > 1e-3  # ... and a different attention


def test_llama_checkpoint_with_tied_embeddings(tmp_path):
    llama = build(LlamaForCausalLM, LlamaConfig(**LLAMA_KEYS, tie_word_embeddings=True))
    assert llama.lm_head.weight.data_ptr() == llama.model.embed_tokens.weight.data_ptr()
    llama.save_pretrained(tmp_path)
    ours = HfGenDecoderForCausalLM.from_pretrained(tmp_path).eval()
    assert ours.config.tie_word_embeddings
    assert ours.lm_head.weight is ours.model.embed_tokens.weight
    ids = random_ids(2, 8)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, llama(ids).logits, atol=1e-5, rtol=1e-5)


def test_tied_embeddings_are_tied_and_survive_save_load(tmp_path):
    model = build(HfGenDecoderForCausalLM, HfGenDecoderConfig(**TINY, tie_word_embeddings=True))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    # Really tied: a change to one is a change to the other, and training moves them together.
    with torch.no_grad():
        model.model.embed_tokens.weight[5, 0] = 123.0
    assert model.lm_head.weight[5, 0] == 123.0
    model.train()
    ids = random_ids(2, 8)
    model(ids, labels=ids).loss.backward()
    assert model.lm_head.weight.grad is model.model.embed_tokens.weight.grad
    model.zero_grad()
    model.eval()

    model.save_pretrained(tmp_path)
    reloaded = HfGenDecoderForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.tie_word_embeddings
    assert reloaded.lm_head.weight is reloaded.model.embed_tokens.weight
    torch.testing.assert_close(reloaded.lm_head.weight, model.lm_head.weight, atol=0, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, atol=0, rtol=0)


def test_untied_embeddings_stay_untied(tmp_path):
    model = build(HfGenDecoderForCausalLM, HfGenDecoderConfig(**TINY))
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    model.save_pretrained(tmp_path)
    reloaded = HfGenDecoderForCausalLM.from_pretrained(tmp_path)
    assert reloaded.lm_head.weight.data_ptr() != reloaded.model.embed_tokens.weight.data_ptr()
    torch.testing.assert_close(reloaded.lm_head.weight, model.lm_head.weight, atol=0, rtol=0)
