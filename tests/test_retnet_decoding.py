"""RetNet's decoding plan (``hfgen/models/retnet_decoding.py``): one token without gradients runs through input-major
copies of the weights, from ``HfGenRetNetForCausalLM`` straight to the layers. Every test compares it with the
modules' path (the same token with gradients enabled), or checks that it steps aside when it must."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch

from conftest import random_ids
from hfgen import HfGenRetNetCache
from hfgen.models.retnet_decoding import HUGE_PAGE, exact_gelu, in_huge_pages
from test_retnet import GREEDY, ROWS, assert_same_decoding, build_retnet, decode, left_padded, retnet_config


def test_the_plan_follows_the_head_and_can_be_switched_off():
    model = build_retnet(retnet_config(decoding_weight_copies=True))
    ids, mask = left_padded(ROWS)
    before, _, _ = decode(model, ids, mask, 2, grad=False)
    plan = model.model._decoding_plan
    assert plan is not None and plan.head_module is model.lm_head
    with torch.no_grad():
        model.lm_head.weight.mul_(2.0)  # an in-place update of a copied matrix: the copy must be remade
    after, _ = assert_same_decoding(model, ids, mask, steps=2)
    assert model.model._decoding_plan is not plan
    assert not torch.allclose(after[0].logits, before[:, :1], atol=1e-3)

    model.config.decoding_weight_copies = False  # no copies: the modules decode, with the same numbers
    off, _, _ = decode(model, ids, mask, 2, grad=False)
    assert model.model._decoding_plan is None
    torch.testing.assert_close(off, torch.cat([out.logits for out in after], dim=1), atol=1e-5, rtol=1e-5)


def test_the_plan_steps_aside_for_hooks_and_replaced_forwards():
    """A hook added after the plan was made, or a ``forward`` replaced on the instance (as Accelerate's device hooks
    do), must run: the step then goes through the modules."""
    model = build_retnet(retnet_config(decoding_weight_copies=True))
    ids, mask = left_padded(ROWS)
    decode(model, ids, mask, 1, grad=False)
    assert model.model._decoding_plan is not None
    calls = []

    def double(module, inputs, output):
        calls.append(1)
        return output * 2

    handle = model.model.layers[1].mlp.register_forward_hook(double)
    fast, _ = assert_same_decoding(model, ids, mask, steps=2)
    assert calls and model.model._decoding_plan is None
    handle.remove()
    plain, _, _ = decode(model, ids, mask, 2, grad=False)
    assert not torch.allclose(plain, torch.cat([out.logits for out in fast], dim=1), atol=1e-3)

    o_proj = model.model.layers[0].retention.o_proj
    original = o_proj.forward
    o_proj.forward = lambda x: original(x) * 0.5
    halved, _ = assert_same_decoding(model, ids, mask, steps=2)
    assert model.model._decoding_plan is None
    assert not torch.allclose(plain, torch.cat([out.logits for out in halved], dim=1), atol=1e-3)


@pytest.mark.parametrize("prompt_length", [1, 5])  # 1: the first step makes the states
def test_decoded_states_stay_usable_by_autograd(prompt_length):
    """The step runs in inference mode when it updates every state in place; the states must stay ordinary tensors
    (also those a step makes, and those replacing states a graph holds): later forwards with gradients from the same
    cache train."""
    model = build_retnet(retnet_config(decoding_weight_copies=True))
    cache = HfGenRetNetCache(model.config)
    token = random_ids(2, prompt_length)
    for _ in range(2):  # no-grad decoding, a forward with gradients, no-grad decoding again, then gradients
        with torch.no_grad():
            for _ in range(3):
                out = model(token, cache=cache, use_cache=True)
                token = out.logits[:, -1:].argmax(-1)
        assert model.model._decoding_plan is not None
        assert not out.logits.is_inference()
        assert not any(cache.get_state(i).is_inference() for i in range(model.config.num_hidden_layers))
        more = random_ids(2, 3, seed=5)
        model(more, labels=more, cache=cache, use_cache=True).loss.backward()
    assert model.lm_head.weight.grad is not None


def test_a_cache_of_another_batch_is_refused_before_any_state_changes():
    model = build_retnet(retnet_config(decoding_weight_copies=True))
    cache = HfGenRetNetCache(model.config)
    with torch.no_grad():
        model(random_ids(2, 5), cache=cache, use_cache=True)
    states = [cache.get_state(i).clone() for i in range(model.config.num_hidden_layers)]
    for grad in (False, True):
        with torch.set_grad_enabled(grad), pytest.raises(ValueError, match=r"batch of 2 rows, but the input has 1"):
            model(random_ids(1, 1), cache=cache, use_cache=True)
    for i, state in enumerate(states):
        torch.testing.assert_close(cache.get_state(i), state, atol=0, rtol=0)


def test_a_model_that_decoded_copies_and_pickles():
    """The plan (weight copies) is not part of a copied or pickled model; the copy decodes the same tokens."""
    model = build_retnet(retnet_config(decoding_weight_copies=True))
    ids, mask = left_padded(ROWS)
    expected, _, _ = decode(model, ids, mask, 3, grad=False)
    assert model.model._decoding_plan is not None
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    for other in (copy.deepcopy(model), torch.load(buffer, weights_only=False)):
        assert other.model._decoding_plan is None
        got, _, _ = decode(other, ids, mask, 3, grad=False)
        torch.testing.assert_close(got, expected, atol=0, rtol=0)


def test_generation_inside_inference_mode_equals_no_grad():
    model = build_retnet(retnet_config(norm_type="rmsnorm", mlp_type="gated", hidden_act="silu",
                                       decoding_weight_copies=True))
    ids, mask = left_padded(ROWS)
    with torch.no_grad():
        expected = model.generate(ids, attention_mask=mask, **GREEDY)
    assert model.model._decoding_plan is not None  # generate's steps went through the plan
    with torch.inference_mode():
        got = model.generate(ids, attention_mask=mask, **GREEDY)
    torch.testing.assert_close(got, expected, atol=0, rtol=0)


def test_bad_decoding_weight_copies():
    with pytest.raises(ValueError, match=r"decoding_weight_copies must be True or False, got 'yes'"):
        retnet_config(decoding_weight_copies="yes")


def test_exact_gelu_is_the_formula():
    """GELU(x) = x Phi(x), Phi the standard normal CDF, written out with math.erf (Hendrycks & Gimpel)."""
    x = torch.linspace(-6, 6, 241, dtype=torch.float64)
    expected = torch.tensor([v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x.tolist()], dtype=torch.float64)
    torch.testing.assert_close(exact_gelu(x), expected, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(exact_gelu(x.float()), expected.float(), atol=1e-6, rtol=1e-6)


def test_copies_in_one_block_are_equal_and_aligned():
    tensors = [torch.randn(5, 7), torch.randn(3, dtype=torch.float64), torch.randn(2, 4, 6).to(torch.bfloat16)]
    block, views = in_huge_pages(tensors)
    for view, tensor in zip(views, tensors):
        assert view.dtype == tensor.dtype and view.shape == tensor.shape
        torch.testing.assert_close(view, tensor, atol=0, rtol=0)
    if block is not None:  # Linux: one block, the first view on a 2 MiB boundary, every view 64-byte aligned
        assert views[0].data_ptr() % HUGE_PAGE == 0 and all(view.data_ptr() % 64 == 0 for view in views)
        tensors[0].add_(1)  # copies, not views of the originals
        assert not torch.equal(views[0], tensors[0])


def test_weights_changed_through_data_are_seen_by_default_and_after_a_reset():
    """``p.data`` edits (an EMA update, a manual rescale) bump no version counter. Without copies (the default) the
    next tokens are those of a model built with the new weights; with copies, after ``reset_decoding_plan``."""
    ids, mask = left_padded(ROWS)
    for copies in (False, True):
        model = build_retnet(retnet_config(decoding_weight_copies=copies))
        decode(model, ids, mask, 2, grad=False)  # (with copies: the plan and its copies are made here)
        with torch.no_grad():
            for param in model.parameters():
                param.data.mul_(1.5)
        if copies:
            model.model.reset_decoding_plan()
        fresh = copy.deepcopy(model)  # the same weights, no plan carried over
        torch.testing.assert_close(decode(model, ids, mask, 3, grad=False)[0],
                                   decode(fresh, ids, mask, 3, grad=True)[0], atol=1e-5, rtol=1e-5)
    assert retnet_config().decoding_weight_copies is False
