"""Mixture of experts on the decoder (``num_experts``): Mixtral checkpoints load and give Mixtral's logits and
auxiliary loss, the grouped dispatch equals the routing formula computed densely, no token is dropped, the losses
and statistics follow their formulas, generation invariants hold, and the default keeps the plain MLP exactly."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers import MixtralConfig, MixtralForCausalLM

from conftest import LLAMA_KEYS, build, padded, random_ids, tiny_config
from hfgen import HfGenDecoderForCausalLM
from hfgen.models.moe import HfGenSparseMoeBlock

MOE = dict(num_experts=4, num_experts_per_tok=2)
NEW_TOKENS = 6
GREEDY = dict(do_sample=False, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, pad_token_id=0,
              eos_token_id=None)


@pytest.fixture(scope="module")
def moe_model():
    return build(HfGenDecoderForCausalLM, tiny_config(**MOE))


@pytest.fixture(scope="module")
def mixtral_pair(tmp_path_factory):
    """A tiny MixtralForCausalLM saved as transformers saves it, and that folder loaded into the hfgen decoder."""
    torch.manual_seed(0)
    config = MixtralConfig(**LLAMA_KEYS, num_local_experts=4, num_experts_per_tok=2, output_router_logits=True,
                           router_aux_loss_coef=0.02, initializer_range=0.1)
    mixtral = MixtralForCausalLM(config).eval()
    path = tmp_path_factory.mktemp("mixtral")
    mixtral.save_pretrained(path)
    hfgen, info = HfGenDecoderForCausalLM.from_pretrained(path, router_z_loss_coef=0.0, output_loading_info=True)
    hfgen.loading_info = info
    return mixtral, hfgen.eval()


def test_mixtral_checkpoint_loads_with_every_weight(mixtral_pair):
    mixtral, hfgen = mixtral_pair
    assert hfgen.config.num_experts == 4 and hfgen.config.num_experts_per_tok == 2
    assert not hfgen.loading_info["missing_keys"] and not hfgen.loading_info["unexpected_keys"], hfgen.loading_info
    keys = set(hfgen.state_dict())
    assert "model.layers.1.block_sparse_moe.experts.3.w2.weight" in keys
    assert "model.layers.0.block_sparse_moe.gate.weight" in keys
    torch.testing.assert_close(hfgen.model.layers[0].block_sparse_moe.experts[2].w1.weight,
                               mixtral.model.layers[0].mlp.experts.gate_up_proj[2, :64], atol=0, rtol=0)


@pytest.mark.parametrize("padding", [False, True])
def test_logits_loss_and_aux_loss_equal_mixtral(mixtral_pair, padding):
    mixtral, hfgen = mixtral_pair
    ids = random_ids(2, 9)
    mask = torch.ones_like(ids)
    if padding:
        mask[1, :3] = 0
    with torch.no_grad():
        labels = ids.clone()
        labels[1, :4] = -100  # no target predicted from a padding position (pads and the first real token)
        ours = hfgen(ids, attention_mask=mask, labels=labels)
        theirs = mixtral(ids, attention_mask=mask, labels=labels)
    real = mask.bool()  # padding rows attend to nothing: their (unused) outputs are convention
    torch.testing.assert_close(ours.logits[real], theirs.logits[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.aux_loss, theirs.aux_loss, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ours.loss, theirs.loss, atol=1e-5, rtol=1e-5)  # lm + 0.02 * aux on both
    for mine, reference in zip(ours.router_logits, theirs.router_logits):
        torch.testing.assert_close(mine[real.reshape(-1)], reference[real.reshape(-1)], atol=1e-5, rtol=1e-5)


def dense_reference(block: HfGenSparseMoeBlock, x: torch.Tensor) -> torch.Tensor:
    """Every expert on every token, combined with the renormalised top-k softmax weights: the formula, densely."""
    flat = x.reshape(-1, x.shape[-1])
    probs = F.softmax(block.gate(flat), dim=-1)
    out = torch.zeros_like(flat)
    for t in range(flat.shape[0]):
        top = torch.topk(probs[t], block.top_k).indices
        for e in top.tolist():
            expert = block.experts[e]
            y = expert.w2(F.silu(expert.w1(flat[t])) * expert.w3(flat[t]))
            out[t] += probs[t, e] / probs[t, top].sum() * y
    return out.reshape(x.shape)


@pytest.mark.parametrize("top_k", [1, 2, 4])
def test_grouped_dispatch_equals_the_dense_formula(top_k):
    model = build(HfGenDecoderForCausalLM, tiny_config(num_experts=4, num_experts_per_tok=top_k))
    block = model.model.layers[0].block_sparse_moe
    x = torch.randn(3, 5, 32, generator=torch.Generator().manual_seed(top_k))
    with torch.no_grad():
        torch.testing.assert_close(block(x), dense_reference(block, x), atol=1e-5, rtol=1e-5)


def test_no_token_is_dropped_when_every_token_picks_the_same_expert():
    model = build(HfGenDecoderForCausalLM, tiny_config(num_experts=4, num_experts_per_tok=1))
    block = model.model.layers[0].block_sparse_moe
    with torch.no_grad():
        block.gate.weight.zero_()
        block.gate.weight[2] = 1.0  # logit of expert 2 = sum(x): make every x sum positive
        x = torch.rand(2, 16, 32) + 0.1
        out = block(x)
        expert = block.experts[2]
        torch.testing.assert_close(out, expert.w2(F.silu(expert.w1(x)) * expert.w3(x)), atol=1e-5, rtol=1e-5)
    assert (block.selected_experts == 2).all()


def test_losses_and_utilisation_follow_their_formulas(moe_model):
    ids, mask = padded([random_ids(1, 7, seed=2)[0], random_ids(1, 4, seed=3)[0]], "left")
    with torch.no_grad():
        out = moe_model(ids, attention_mask=mask, labels=ids)
    real = mask.reshape(-1).bool()
    logits = [b.router_logits[real] for b in (layer.block_sparse_moe for layer in moe_model.model.layers)]
    # z-loss: mean over layers and real tokens of logsumexp^2
    z = torch.cat([torch.logsumexp(l, -1) ** 2 for l in logits]).mean()
    torch.testing.assert_close(out.z_loss, z, atol=1e-6, rtol=1e-5)
    # utilisation: per layer, share of the real tokens' top-k slots per expert, counted by hand
    for layer, layer_logits in enumerate(logits):
        chosen = torch.topk(layer_logits, 2, dim=-1).indices.reshape(-1).tolist()
        expected = torch.tensor([chosen.count(e) / len(chosen) for e in range(4)])
        torch.testing.assert_close(out.expert_utilization[layer], expected)
    # aux: E * sum_e f_e P_e over all layers' real tokens
    probs = torch.cat([F.softmax(l, -1) for l in logits])
    chosen = torch.topk(probs, 2, dim=-1).indices.reshape(-1)
    f = torch.bincount(chosen, minlength=4).float() / probs.shape[0]
    torch.testing.assert_close(out.aux_loss, 4 * (f * probs.mean(0)).sum(), atol=1e-6, rtol=1e-5)
    # the loss is the language-modelling loss plus both, weighted
    lm = F.cross_entropy(out.logits[:, :-1].reshape(-1, 128), ids[:, 1:].reshape(-1))
    config = moe_model.config
    torch.testing.assert_close(out.loss, lm + config.router_aux_loss_coef * out.aux_loss
                               + config.router_z_loss_coef * out.z_loss, atol=1e-5, rtol=1e-5)


def test_default_keeps_the_plain_mlp_exactly():
    plain = build(HfGenDecoderForCausalLM, tiny_config())
    explicit = build(HfGenDecoderForCausalLM, tiny_config(num_experts=0))
    assert list(plain.state_dict()) == list(explicit.state_dict())
    assert "model.layers.0.mlp.gate_proj.weight" in plain.state_dict()
    assert not any("expert" in k for k in plain.state_dict())
    ids = random_ids(2, 6)
    with torch.no_grad():
        out = plain(ids, labels=ids)
    assert type(out).__name__ == "CausalLMOutputWithPast"
    torch.testing.assert_close(out.logits, explicit(ids).logits, atol=0, rtol=0)


def test_gradients_reach_the_router_and_the_experts(moe_model):
    model = copy.deepcopy(moe_model).train()
    ids = random_ids(4, 12)
    model(ids, labels=ids).loss.backward()
    block = model.model.layers[0].block_sparse_moe
    assert block.gate.weight.grad.abs().sum() > 0
    used = block.selected_experts.unique().tolist()
    assert all(block.experts[e].w1.weight.grad.abs().sum() > 0 for e in used)


def test_cached_generation_equals_uncached(moe_model):
    ids = random_ids(2, 6)
    cached = moe_model.generate(ids, **GREEDY)
    torch.testing.assert_close(cached, moe_model.generate(ids, use_cache=False, **GREEDY), atol=0, rtol=0)


def test_left_padded_batch_equals_rows_alone(moe_model):
    rows = [random_ids(1, 7, seed=2)[0], random_ids(1, 3, seed=4)[0]]
    ids, mask = padded(rows, "left")
    batch = moe_model.generate(ids, attention_mask=mask, **GREEDY)
    for i, row in enumerate(rows):
        alone = moe_model.generate(row[None], **GREEDY)
        torch.testing.assert_close(batch[i, ids.shape[1]:], alone[0, len(row):], atol=0, rtol=0)


def test_save_load_identical(tmp_path, moe_model):
    moe_model.save_pretrained(tmp_path)
    loaded = HfGenDecoderForCausalLM.from_pretrained(tmp_path).eval()
    ids = random_ids(2, 6)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, moe_model(ids).logits, atol=0, rtol=0)


@pytest.mark.parametrize("overrides, pattern", [
    (dict(num_experts=4, num_experts_per_tok=5), r"num_experts_per_tok must be an integer between 1 and "
                                                 r"num_experts \(4\).*got 5"),
    (dict(num_experts=4, num_experts_per_tok=0), r"num_experts_per_tok .* got 0"),
    (dict(num_experts=-1), r"num_experts must be 0 .* or a positive integer, got -1"),
    (dict(num_experts=4, router_aux_loss_coef=-1.0), r"router_aux_loss_coef must be a number >= 0"),
])
def test_bad_moe_config(overrides, pattern):
    with pytest.raises(ValueError, match=pattern):
        tiny_config(**overrides)


def test_sliding_window_config_is_refused():
    with pytest.raises(ValueError, match=r"sliding_window=4096 .* not supported"):
        tiny_config(num_local_experts=4, sliding_window=4096)
    assert tiny_config(num_local_experts=4, sliding_window=None).num_experts == 4


def test_bad_moe_key_through_from_pretrained(tmp_path, moe_model):
    moe_model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"num_experts_per_tok .* between 1 and num_experts \(4\)"):
        HfGenDecoderForCausalLM.from_pretrained(tmp_path, num_experts_per_tok=9)
