"""Vision-language models (``hfgen_vlm``, ``hfgen_vit``): each fusion against a formula or an invariant.

- ViT patch embedding == ViT's stride-p convolution (torch's Conv2d) with the same weights.
- projection / early fusion == the decoder fed by hand with the image vectors in place of the image tokens.
- cross-attention with Flamingo's closed gates == the language model alone; opened gates change the output.
- generation: cached == uncached, left-padded rows == rows alone, for every fusion.
- the frozen language model does not move while the bridge trains.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import hfgen  # noqa: F401  (registers the Auto classes)
from hfgen.models import HfGenDecoderConfig, HfGenDecoderForCausalLM
from hfgen.models.configuration_hfgen_vit import HfGenViTConfig
from hfgen.models.configuration_hfgen_vlm import FUSIONS, HfGenVlmConfig
from hfgen.models.modeling_hfgen_vit import HfGenViTModel, patchify
from hfgen.models.modeling_hfgen_vlm import HfGenVlmForConditionalGeneration

VOCAB = 64
IMAGE_TOKEN = VOCAB - 1


def vlm_config(fusion: str, **text) -> HfGenVlmConfig:
    text_config = HfGenDecoderConfig(**{**dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                               pad_token_id=0, eos_token_id=1, initializer_range=0.1), **text})
    vision = HfGenViTConfig(image_size=8, patch_size=4, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                            num_attention_heads=4)
    return HfGenVlmConfig(text_config=text_config, vision_config=vision, fusion=fusion, image_token_id=IMAGE_TOKEN,
                          initializer_range=0.1)


def build_vlm(fusion: str, seed: int = 0, **text) -> HfGenVlmForConditionalGeneration:
    torch.manual_seed(seed)
    model = HfGenVlmForConditionalGeneration(vlm_config(fusion, **text)).eval()
    if fusion == "cross_attention":  # open Flamingo's gates so that the images matter
        for layer in model.model.cross_attention_layers:
            layer.attn_gate.data.fill_(0.8)
            layer.mlp_gate.data.fill_(0.5)
    return model


def prompt(model, text_ids: list[int]) -> torch.Tensor:
    return torch.tensor([IMAGE_TOKEN] * model.config.num_image_tokens + text_ids)


def images(n: int, seed: int = 3) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_patch_embedding_is_vits_strided_convolution():
    config = HfGenViTConfig(image_size=8, patch_size=4, num_channels=3, hidden_size=32, intermediate_size=64,
                            num_hidden_layers=1, num_attention_heads=4)
    model = HfGenViTModel(config)
    conv = nn.Conv2d(3, 32, kernel_size=4, stride=4)
    conv.weight.data.copy_(model.patch_embedding.proj.weight.view(32, 3, 4, 4))
    conv.bias.data.copy_(model.patch_embedding.proj.bias)
    x = torch.randn(2, 3, 8, 8)
    expected = conv(x).flatten(2).transpose(1, 2)  # ViT: [N, D, H/p, W/p] -> [N, patches, D]
    torch.testing.assert_close(model.patch_embedding(x), expected)
    assert patchify(x, 4).shape == (2, 4, 48)


def test_vit_save_reload_identical(tmp_path):
    torch.manual_seed(0)
    model = HfGenViTModel(HfGenViTConfig(image_size=8, patch_size=2, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=4)).eval()
    model.save_pretrained(tmp_path)
    from transformers import AutoModel

    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    x = images(3)
    with torch.no_grad():
        assert torch.equal(model(x).last_hidden_state, reloaded(x).last_hidden_state)


@pytest.mark.parametrize("fusion", ["projection", "early"])
def test_image_vectors_replace_the_image_tokens(fusion):
    """The model == its decoder fed by hand: token embeddings, with the image vectors written over the image
    tokens' slots (projector(ViT(x)) or patch embedding + patch position)."""
    model = build_vlm(fusion)
    ids = torch.stack([prompt(model, [5, 6, 7]), prompt(model, [8, 9, 10])])
    x = images(2)
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=x).logits
        inner = model.model
        embeds = inner.language_model.embed_tokens(ids)
        if fusion == "projection":
            vectors = inner.multi_modal_projector(inner.vision_model(x).last_hidden_state)
        else:
            vectors = inner.early_embedding.patch_embedding(x) + inner.early_embedding.position_embedding.weight
        n = model.config.num_image_tokens
        embeds[:, :n] = vectors
        expected = model.lm_head(inner.language_model(inputs_embeds=embeds).last_hidden_state)
    torch.testing.assert_close(out, expected)


def test_cross_attention_with_closed_gates_is_the_language_model():
    """Flamingo: tanh(0) = 0 gates at initialisation leave the frozen language model's output unchanged."""
    torch.manual_seed(0)
    model = HfGenVlmForConditionalGeneration(vlm_config("cross_attention")).eval()
    lm = HfGenDecoderForCausalLM(copy.deepcopy(model.config.text_config)).eval()
    lm.model.load_state_dict(model.model.language_model.state_dict())
    lm.lm_head.load_state_dict(model.lm_head.state_dict())
    ids = torch.stack([prompt(model, [5, 6, 7])])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, pixel_values=images(1)).logits, lm(input_ids=ids).logits)
        for layer in model.model.cross_attention_layers:
            layer.attn_gate.fill_(0.5)
        assert not torch.allclose(model(input_ids=ids, pixel_values=images(1)).logits, lm(input_ids=ids).logits)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_images_change_the_output(fusion):
    model = build_vlm(fusion)
    ids = prompt(model, [5, 6])[None]
    with torch.no_grad():
        a = model(input_ids=ids, pixel_values=images(1, seed=1)).logits
        b = model(input_ids=ids, pixel_values=images(1, seed=2)).logits
    assert not torch.allclose(a[:, -1], b[:, -1])


@pytest.mark.parametrize("fusion", FUSIONS)
def test_cached_generation_equals_uncached(fusion):
    model = build_vlm(fusion)
    ids = torch.stack([prompt(model, [5, 6, 7]), prompt(model, [9, 3, 2])])
    x = images(2)
    kwargs = dict(input_ids=ids, pixel_values=x, max_new_tokens=6, do_sample=False, min_new_tokens=6,
                  output_logits=True, return_dict_in_generate=True)
    cached = model.generate(**kwargs)
    uncached = model.generate(**kwargs, use_cache=False)
    assert torch.equal(cached.sequences, uncached.sequences)
    torch.testing.assert_close(torch.stack(cached.logits), torch.stack(uncached.logits), rtol=1e-4, atol=1e-4)
    # And the last step's logits == a full forward pass over the whole generated sequence.
    with torch.no_grad():
        full = model(input_ids=cached.sequences[:, :-1], pixel_values=x).logits[:, -1]
    torch.testing.assert_close(cached.logits[-1], full, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_left_padded_rows_equal_rows_alone(fusion):
    model = build_vlm(fusion)
    rows = [prompt(model, [5, 6, 7, 8, 9]), prompt(model, [4, 2])]
    x = images(2)
    width = max(len(r) for r in rows)
    ids = torch.zeros(2, width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, width - len(row):], mask[i, width - len(row):] = row, 1
    batched = model.generate(input_ids=ids, attention_mask=mask, pixel_values=x, max_new_tokens=5,
                             min_new_tokens=5, do_sample=False, output_logits=True, return_dict_in_generate=True)
    for i, row in enumerate(rows):
        alone = model.generate(input_ids=row[None], pixel_values=x[i:i + 1], max_new_tokens=5, min_new_tokens=5,
                               do_sample=False, output_logits=True, return_dict_in_generate=True)
        assert torch.equal(batched.sequences[i, width:], alone.sequences[0, len(row):])
        torch.testing.assert_close(torch.stack(batched.logits)[:, i], torch.stack(alone.logits)[:, 0], rtol=1e-4,
                                   atol=1e-4)


@pytest.mark.parametrize("fusion", ["projection", "cross_attention"])
def test_frozen_language_model_stays_put_while_the_bridge_trains(fusion):
    model = build_vlm(fusion).train()
    model.freeze_language_model()
    lm_before = [p.detach().clone() for p in model.language_model_parameters()]
    bridge = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert bridge and all("language_model" not in n and not n.startswith("lm_head") for n, _ in bridge)
    bridge_before = [p.detach().clone() for _, p in bridge]
    ids = torch.stack([prompt(model, [5, 6, 7]), prompt(model, [9, 3, 2])])
    optimizer = torch.optim.SGD([p for _, p in bridge], lr=0.1)
    model(input_ids=ids, pixel_values=images(2), labels=ids).loss.backward()
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(lm_before, model.language_model_parameters()))
    assert any(not torch.equal(a, p) for a, (_, p) in zip(bridge_before, bridge))
    assert all(p.grad is None for p in model.language_model_parameters())


@pytest.mark.parametrize("fusion", FUSIONS)
def test_save_reload_through_auto_class_identical(fusion, tmp_path):
    from transformers import AutoConfig, AutoModelForImageTextToText

    model = build_vlm(fusion)
    model.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).fusion == fusion
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert type(reloaded) is HfGenVlmForConditionalGeneration
    ids = torch.stack([prompt(model, [5, 6, 7])])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, pixel_values=images(1)).logits,
                           reloaded(input_ids=ids, pixel_values=images(1)).logits)


def test_cross_attention_gate_init_sets_the_gates_and_survives_reload(tmp_path):
    """``cross_attention_gate_init`` is where every tanh gate starts (0 = Flamingo's closed gates), also when the
    model is built on the meta device by from_pretrained; a value that is not a number in [-10, 10] is refused."""
    config = vlm_config("cross_attention")
    config.cross_attention_gate_init = 0.5
    torch.manual_seed(0)
    model = HfGenVlmForConditionalGeneration(config).eval()
    gates = [g for layer in model.model.cross_attention_layers for g in (layer.attn_gate, layer.mlp_gate)]
    assert gates and all(g.item() == 0.5 for g in gates)
    model.save_pretrained(tmp_path)
    reloaded = HfGenVlmForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert reloaded.config.cross_attention_gate_init == 0.5
    ids = torch.stack([prompt(model, [5, 6, 7])])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, pixel_values=images(1)).logits,
                           reloaded(input_ids=ids, pixel_values=images(1)).logits)
    for bad in ("open", True, 11.0):
        with pytest.raises(ValueError, match=r"cross_attention_gate_init must be a number in \[-10, 10\]"):
            HfGenVlmConfig(fusion="cross_attention", cross_attention_gate_init=bad)
