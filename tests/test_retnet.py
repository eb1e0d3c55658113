"""RetNet (``hfgen_retnet``): the three forms of retention against each other and against the formula written out,
generation with the recurrent-state cache against full forwards, left padding against the rows alone, bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache

from conftest import padded, random_ids
from hfgen import HfGenRetNetCache, HfGenRetNetConfig, HfGenRetNetForCausalLM
from hfgen.models.modeling_hfgen_retnet import (
    retention_chunkwise,
    retention_log_decays,
    retention_parallel,
    retention_recurrent,
    rotate,
    rotation_tables,
)

TINY_RETNET = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   pad_token_id=0, retention_chunk_size=4, initializer_range=0.1)
MODES = ("parallel", "chunkwise", "recurrent")
NEW_TOKENS = 6
GREEDY = dict(do_sample=False, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, pad_token_id=0,
              eos_token_id=None)


def retnet_config(**overrides) -> HfGenRetNetConfig:
    return HfGenRetNetConfig(**{**TINY_RETNET, **overrides})


def build_retnet(config=None, seed: int = 0) -> HfGenRetNetForCausalLM:
    torch.manual_seed(seed)
    return HfGenRetNetForCausalLM(copy.deepcopy(config or retnet_config())).eval()


@pytest.fixture(scope="module")
def model():
    return build_retnet()


def random_qkv(batch=2, heads=3, length=11, dk=4, dv=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, heads, length, dk, generator=g), torch.randn(batch, heads, length, dk, generator=g),
            torch.randn(batch, heads, length, dv, generator=g), torch.randn(batch, heads, dk, dv, generator=g))


# ------------------------------------------------------------------------------------------ the math


def test_decays_are_one_minus_two_to_the_minus_five_minus_h():
    gammas = retention_log_decays(6).exp()
    for h, gamma in enumerate(gammas.tolist()):
        assert gamma == pytest.approx(1 - 2 ** (-5 - h), rel=1e-7)


def test_retention_against_the_formula_written_out():
    """``o_n = sum_{m<=n} gamma^(n-m) (q_n . k_m) v_m + gamma^(n+1) q_n S_0``, loops over n and m."""
    q, k, v, state = random_qkv(batch=1, heads=2, length=5, dk=3, dv=2)
    log_decay = retention_log_decays(2)
    gammas = log_decay.exp().tolist()
    expected = torch.zeros(1, 2, 5, 2)
    expected_state = torch.zeros(1, 2, 3, 2)
    for h, gamma in enumerate(gammas):
        for n in range(5):
            total = gamma ** (n + 1) * (q[0, h, n] @ state[0, h])
            for m in range(n + 1):
                total = total + gamma ** (n - m) * torch.dot(q[0, h, n], k[0, h, m]) * v[0, h, m]
            expected[0, h, n] = total
        expected_state[0, h] = gamma**5 * state[0, h] + sum(
            gamma ** (4 - m) * torch.outer(k[0, h, m], v[0, h, m]) for m in range(5))
    for name, form in [("parallel", retention_parallel), ("recurrent", retention_recurrent),
                       ("chunkwise", lambda *a: retention_chunkwise(*a[:4], 2, a[4]))]:
        out, new_state = form(q, k, v, log_decay, state)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5, msg=name)
        torch.testing.assert_close(new_state, expected_state, atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("chunk", [1, 3, 4, 16])
def test_three_forms_agree_on_random_inputs(chunk):
    q, k, v, state = random_qkv(length=13, seed=chunk)
    log_decay = retention_log_decays(3)
    for initial in (None, state):
        ref, ref_state = retention_parallel(q, k, v, log_decay, initial)
        for out, new_state in (retention_recurrent(q, k, v, log_decay, initial),
                               retention_chunkwise(q, k, v, log_decay, chunk, initial)):
            torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(new_state, ref_state, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_three_forms_agree_on_long_sequences():
    """2048 tokens, 8 heads (decays down to 1 - 2^-12): the forms stay within 1e-5 of the output's scale."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 8, 2048, d, generator=g) / d**0.5 for d in (16, 16, 32))
    log_decay = retention_log_decays(8)
    ref, ref_state = retention_parallel(q, k, v, log_decay)
    for out, state in (retention_chunkwise(q, k, v, log_decay, 64), retention_recurrent(q, k, v, log_decay)):
        torch.testing.assert_close(out, ref, atol=1e-5 * ref.abs().max().item(), rtol=1e-5)
        torch.testing.assert_close(state, ref_state, atol=1e-5 * ref_state.abs().max().item(), rtol=1e-5)


def test_rotation_is_relative():
    """``rot(q, n) . rot(k, m)`` depends on ``n - m`` only: shifting both positions changes nothing."""
    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(1, 1, 1, 8, generator=g), torch.randn(1, 1, 1, 8, generator=g)
    dots = [(rotate(q, torch.tensor([[n + s]]), 10000.0) * rotate(k, torch.tensor([[2 + s]]), 10000.0)).sum()
            for n, s in [(7, 0), (7, 13), (7, 101)]]
    torch.testing.assert_close(dots[1], dots[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dots[2], dots[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose((q * k).sum(), dots[0])  # and the rotation did something


def test_multi_scale_retention_layer_against_the_formula(model):
    """``MSR(X) = (swish(X W_G) * GroupNorm(heads)) W_O``, the group norm written out as a per-head layer norm."""
    layer = model.model.layers[0].retention
    torch.nn.init.normal_(layer.group_norm.weight)
    torch.nn.init.normal_(layer.group_norm.bias)
    x = torch.randn(2, 7, 32, generator=torch.Generator().manual_seed(5))
    positions = torch.arange(7)[None]
    with torch.no_grad():
        out = layer(x, positions, None, mode="parallel")
        H, dk, dv = 4, 8, 16
        q = rotate(layer.q_proj(x).view(2, 7, H, dk).transpose(1, 2), positions, 10000.0) / dk**0.5
        k = rotate(layer.k_proj(x).view(2, 7, H, dk).transpose(1, 2), positions, 10000.0)
        v = layer.v_proj(x).view(2, 7, H, dv).transpose(1, 2)
        heads = torch.zeros(2, H, 7, dv)
        for h in range(H):
            gamma = 1 - 2 ** (-5 - h)
            decay = torch.tensor([[gamma ** (n - m) if n >= m else 0.0 for m in range(7)] for n in range(7)])
            heads[:, h] = ((q[:, h] @ k[:, h].transpose(-1, -2)) * decay) @ v[:, h]
        mean, var = heads.mean(-1, keepdim=True), heads.var(-1, unbiased=False, keepdim=True)
        normed = ((heads - mean) / torch.sqrt(var + model.config.rms_norm_eps)).transpose(1, 2).reshape(2, 7, H * dv)
        normed = normed * layer.group_norm.weight + layer.group_norm.bias
        gate = layer.g_proj(x)
        expected = layer.o_proj(gate * torch.sigmoid(gate) * normed)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------ the model


def random_mask(batch, length, seed):
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(batch, length, generator=g) > 0.3).long()
    mask[:, -1] = 1
    return mask


@pytest.mark.parametrize("seed", [0, 1])
def test_three_forms_give_the_same_logits_and_gradients(seed):
    model = build_retnet(retnet_config(retention_chunk_size=3), seed=seed)
    ids, mask = random_ids(3, 10, seed=seed), random_mask(3, 10, seed)
    results = {}
    for mode in MODES:
        model.zero_grad()
        out = model(ids, attention_mask=mask, labels=ids, retention_mode=mode)
        out.loss.backward()
        results[mode] = (out.logits.detach(), model.model.layers[0].retention.q_proj.weight.grad.clone())
    for mode in ("chunkwise", "recurrent"):
        torch.testing.assert_close(results[mode][0], results["parallel"][0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(results[mode][1], results["parallel"][1], atol=1e-5, rtol=1e-5)


def test_prefill_in_pieces_with_the_cache_equals_one_forward(model):
    ids = random_ids(2, 12)
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        cache = HfGenRetNetCache(model.config)
        first = model(ids[:, :5], cache=cache, use_cache=True).logits
        second = model(ids[:, 5:11], cache=cache, use_cache=True, retention_mode="parallel").logits
        third = model(ids[:, 11:], cache=cache, use_cache=True).logits
    assert cache.get_seq_length() == 12
    torch.testing.assert_close(torch.cat((first, second, third), 1), full, atol=1e-5, rtol=1e-5)


def test_state_size_does_not_grow_with_the_context(model):
    sizes = []
    for length in (4, 40):
        cache = HfGenRetNetCache(model.config)
        with torch.no_grad():
            model(random_ids(1, length), cache=cache, use_cache=True)
        sizes.append(sum(cache.get_state(i).numel() for i in range(model.config.num_hidden_layers)))
    assert sizes[0] == sizes[1] == 2 * 4 * 8 * 16  # layers x heads x d_k x d_v


def generate_with_logits(model, ids, **kwargs):
    out = model.generate(ids, output_logits=True, return_dict_in_generate=True, **GREEDY, **kwargs)
    return out.sequences, torch.stack(out.logits, dim=1)


def test_cached_generation_equals_uncached(model):
    ids = random_ids(2, 6)
    cached, cached_logits = generate_with_logits(model, ids)
    uncached, uncached_logits = generate_with_logits(model, ids, use_cache=False)
    torch.testing.assert_close(cached, uncached, atol=0, rtol=0)
    torch.testing.assert_close(cached_logits, uncached_logits, atol=1e-5, rtol=1e-5)


ROWS = [random_ids(1, 7, seed=2)[0], random_ids(1, 4, seed=3)[0], random_ids(1, 2, seed=4)[0]]


def left_padded(rows):
    """Left-padded with a real token (7), not the pad id: the pad id's embedding is zero and would hide a mask
    that is not applied; only the attention mask marks the padding."""
    ids, mask = padded(rows, "left")
    return ids.masked_fill(mask == 0, 7), mask


def test_left_padded_batch_equals_rows_alone(model):
    ids, mask = left_padded(ROWS)
    width = ids.shape[1]
    batch, batch_logits = generate_with_logits(model, ids, attention_mask=mask)
    for i, row in enumerate(ROWS):
        alone, alone_logits = generate_with_logits(model, row[None])
        torch.testing.assert_close(batch[i, width:], alone[0, len(row):], atol=0, rtol=0)
        torch.testing.assert_close(batch_logits[i], alone_logits[0], atol=1e-5, rtol=1e-5)


def test_cached_generation_equals_one_full_forward(model):
    ids, mask = left_padded(ROWS)
    out, step_logits = generate_with_logits(model, ids, attention_mask=mask)
    full_mask = torch.cat((mask, torch.ones(len(ROWS), NEW_TOKENS, dtype=torch.long)), dim=1)
    with torch.no_grad():
        logits = model(out, attention_mask=full_mask, use_cache=False).logits
    width = ids.shape[1]
    torch.testing.assert_close(step_logits, logits[:, width - 1:-1], atol=1e-5, rtol=1e-5)


def test_a_cache_passed_to_generate_is_used(model):
    ids = random_ids(2, 6)
    cache = HfGenRetNetCache(model.config)
    out = model.generate(ids, cache=cache, **GREEDY)
    torch.testing.assert_close(out, model.generate(ids, **GREEDY), atol=0, rtol=0)
    assert cache.get_seq_length() == 6 + NEW_TOKENS - 1  # the last token is never fed back


def test_beam_search_with_the_state_cache_equals_without(model):
    ids = random_ids(2, 5)
    options = dict(num_beams=3, num_return_sequences=2, **GREEDY)
    torch.testing.assert_close(model.generate(ids, **options), model.generate(ids, use_cache=False, **options),
                               atol=0, rtol=0)


def test_save_load_and_auto_class(tmp_path, model):
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is HfGenRetNetForCausalLM
    ids = random_ids(2, 9)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, atol=0, rtol=0)


def test_mixture_of_experts_feed_forward():
    """The MoE block is reusable here: forms still agree, router logits are recorded and the router losses come
    out."""
    model = build_retnet(retnet_config(num_experts=4, num_experts_per_tok=2, mlp_type="gated", hidden_act="silu"))
    ids = random_ids(2, 8)
    outs = [model(ids, labels=ids, retention_mode=mode) for mode in ("parallel", "chunkwise")]
    torch.testing.assert_close(outs[1].logits, outs[0].logits, atol=1e-5, rtol=1e-5)
    out = outs[0]
    assert len(out.router_logits) == 2 and all(r.shape == (2 * 8, 4) for r in out.router_logits)
    assert out.aux_loss > 0 and out.z_loss > 0
    assert model.model.layers[0].block_sparse_moe.experts.down_proj.shape == (4, 32, model.config.intermediate_size)


# ------------------------------------------------------------------------------------------ the decoding step
# One token without gradients takes the layers' functional step (fused projections, in-place state update, rotation
# tables by blocks of positions); with gradients the same token goes through the modules. Same numbers expected.


def decode(model, ids, mask, steps: int, grad: bool, **kwargs):
    """Prefill ``ids`` into a state cache, then feed ``steps`` greedy tokens one at a time, with gradients enabled
    (the modules) or not (the functional step). Returns the logits of the steps and the final states."""
    cache = HfGenRetNetCache(model.config)
    with torch.no_grad():
        token = model(ids, attention_mask=mask, cache=cache, use_cache=True).logits[:, -1:].argmax(-1)
    logits, outputs = [], []
    for _ in range(steps):
        mask = torch.cat((mask, torch.ones_like(token)), dim=1)
        with torch.set_grad_enabled(grad):
            out = model(token, attention_mask=mask, cache=cache, use_cache=True, **kwargs)
        logits.append(out.logits.detach())
        outputs.append(out)
        token = logits[-1][:, -1:].argmax(-1)
    states = [cache.get_state(i).detach() for i in range(model.config.num_hidden_layers)]
    return torch.cat(logits, dim=1), states, outputs


def assert_same_decoding(model, ids, mask, steps=4, **kwargs):
    fast_logits, fast_states, fast = decode(model, ids, mask, steps, grad=False, **kwargs)
    slow_logits, slow_states, slow = decode(model, ids, mask, steps, grad=True, **kwargs)
    torch.testing.assert_close(fast_logits, slow_logits, atol=1e-5, rtol=1e-5)
    for fast_state, slow_state in zip(fast_states, slow_states):
        torch.testing.assert_close(fast_state, slow_state, atol=1e-5, rtol=1e-5)
    return fast, slow


@pytest.mark.parametrize("overrides", [
    {},
    dict(norm_type="rmsnorm", mlp_type="gated", hidden_act="silu", mlp_bias=True),
    dict(num_experts=4, num_experts_per_tok=2, mlp_type="gated", hidden_act="silu"),  # MoE: the modules' path
])
def test_decoding_step_equals_the_modules(overrides):
    model = build_retnet(retnet_config(decoding_weight_copies=True, **overrides))
    ids, mask = left_padded(ROWS)
    assert model.model._decoding_plan is None
    assert_same_decoding(model, ids, mask)
    planned = model.model._decoding_plan is not None  # the plan's path did run, except with experts
    assert planned == (not model.config.num_experts)


def test_decoding_step_follows_weight_updates():
    """The fused projection is a copy: an in-place update (an optimizer step) or a new weight tensor must reach it."""
    model = build_retnet(retnet_config(decoding_weight_copies=True))
    ids, mask = random_ids(2, 5), torch.ones(2, 5, dtype=torch.long)
    before, _, _ = decode(model, ids, mask, 2, grad=False)
    retention = model.model.layers[0].retention
    with torch.no_grad():
        retention.k_proj.weight.mul_(1.5)
        model.model.layers[1].retention.q_proj.weight = torch.nn.Parameter(
            torch.randn_like(retention.q_proj.weight) * 0.1)
    after, _ = assert_same_decoding(model, ids, mask, steps=2)
    assert not torch.allclose(after[0].logits, before[:, :1], atol=1e-3)  # the update did change the numbers


def test_decoding_step_with_adapters_and_hooks():
    """A LoRA adapter (not a plain linear layer) and output hooks (``output_hidden_states``) keep the modules' path
    where needed: the numbers of every step are still those of the modules."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(build_retnet(), LoraConfig(r=4, target_modules=["q_proj", "g_proj", "o_proj", "up_proj"],
                                                      init_lora_weights=False)).eval()
    ids, mask = left_padded(ROWS)
    fast, slow = assert_same_decoding(model, ids, mask, steps=2, output_hidden_states=True)
    for fast_out, slow_out in zip(fast, slow):
        assert len(fast_out.hidden_states) == model.config.num_hidden_layers + 1
        for a, b in zip(fast_out.hidden_states, slow_out.hidden_states):
            torch.testing.assert_close(a, b.detach(), atol=1e-5, rtol=1e-5)
    with model.disable_adapter():  # and the adapter does change the numbers
        plain, _, _ = decode(model, ids, mask, 2, grad=False)
    assert not torch.allclose(plain, torch.cat([out.logits for out in fast], dim=1), atol=1e-3)


def test_decoding_step_leaves_states_of_a_graph_alone():
    """After a forward with gradients, the cached states belong to its graph: a decoding step must not update them
    in place (backward still works, the old state is unchanged)."""
    model = build_retnet()
    ids = random_ids(2, 6)
    cache = HfGenRetNetCache(model.config)
    loss = model(ids, labels=ids, cache=cache, use_cache=True).loss
    state = cache.get_state(0)
    copy_of_state = state.detach().clone()
    with torch.no_grad():
        model(ids[:, :1], cache=cache, use_cache=True)
    assert cache.get_state(0) is not state
    torch.testing.assert_close(state.detach(), copy_of_state, atol=0, rtol=0)
    loss.backward()


def test_step_rotation_blocks_equal_the_tables():
    model = build_retnet()
    inv_freq = model.model.layers[0].retention.constants(torch.device("cpu"))[2]
    for position in (0, 3, 255, 256, 700, 5):  # within, across and back before a block
        expected = rotation_tables(torch.tensor([[position]]), inv_freq)
        for got, want in zip(model.model.step_rotation(position, torch.device("cpu")), expected):
            torch.testing.assert_close(got, want, atol=0, rtol=0)


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("overrides, pattern", [
    (dict(hidden_size=30, num_attention_heads=4), r"hidden_size \(30\) must be divisible by num_attention_heads \(4\)"),
    (dict(hidden_size=36, num_attention_heads=4), r"head width .* must be even, got 36 / 4 = 9"),
    (dict(retention_mode="fast"), r"retention_mode='fast'.*'parallel', 'chunkwise', 'recurrent'"),
    (dict(value_factor=0), r"value_factor must be a positive integer"),
    (dict(num_experts=2, num_experts_per_tok=3, mlp_type="gated"), r"num_experts_per_tok .* between 1 and "
                                                                    r"num_experts \(2\)"),
])
def test_bad_config(overrides, pattern):
    with pytest.raises(ValueError, match=pattern):
        retnet_config(**overrides)


def test_bad_cache_types(model):
    ids = random_ids(1, 4)
    with pytest.raises(ValueError, match=r"HfGenRetNetCache .* not a DynamicCache"):
        model(ids, cache=DynamicCache())
    with pytest.raises(ValueError, match=r"cache_implementation='static' cannot be used .* None, 'dynamic'"):
        model.generate(ids, cache_implementation="static", **GREEDY)
    with pytest.raises(ValueError, match=r"not a DynamicCache"):
        model.generate(ids, cache=DynamicCache(), **GREEDY)
    with pytest.raises(ValueError, match=r"cannot be cropped"):
        HfGenRetNetCache(model.config).crop(1)
    # assisted decoding crops the cache after rejected drafts: refused up front, by hfgen (transformers' own check
    # moved between releases), with the cache the caller passed left as it was
    cache = HfGenRetNetCache(model.config)
    with pytest.raises(ValueError, match=r"Assisted generation .* cannot be used with HfGenRetNet.*beam search"):
        model.generate(ids, prompt_lookup_num_tokens=2, **GREEDY)
    with pytest.raises(ValueError, match=r"Assisted generation"):
        model.generate(ids, prompt_lookup_num_tokens=2, cache=cache, **GREEDY)
    assert cache.get_seq_length() == 0


def test_bad_inputs(model):
    ids = random_ids(1, 4)
    with pytest.raises(ValueError, match=r"2D attention_mask"):
        model(ids, attention_mask=torch.ones(1, 1, 4, 4))
    with pytest.raises(ValueError, match=r"retention_mode='fast'"):
        model(ids, retention_mode="fast")
    with pytest.raises(ValueError, match=r"Token ids must lie in \[0, 128\)"):
        model(ids + 200)


# ------------------------------------------------------------------------------------------ the HF stack


def test_gradient_checkpointing_gives_the_same_gradients():
    ids = random_ids(2, 9)
    grads = []
    for checkpointing in (False, True):
        model = build_retnet().train()
        if checkpointing:
            model.activation_checkpointing_enable()
            assert all(layer.gradient_checkpointing for layer in model.model.layers)
        model(ids, labels=ids).loss.backward()
        grads.append(model.model.layers[0].retention.k_proj.weight.grad)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-5)


def test_lora_adapter_trains_with_the_trainer(tmp_path):
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments, default_data_collator

    model = get_peft_model(build_retnet().train(),
                           LoraConfig(r=4, target_modules=["q_proj", "k_proj", "v_proj", "g_proj", "o_proj"]))
    ids = random_ids(8, 10)
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    before = {n: p.clone() for n, p in model.named_parameters() if p.requires_grad}
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=2, learning_rate=1e-2,
                             report_to=[], use_cpu=True, save_strategy="no", logging_strategy="no")
    Trainer(model=model, args=args, train_dataset=data, data_collator=default_data_collator).train()
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert changed and all("lora_" in n for n in changed)


def test_text_generation_pipeline():
    from transformers import pipeline

    tokenizer = pytest.importorskip("conftest").load_hfgen_tokenizer()
    model = build_retnet(retnet_config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id))
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    text = "The with statement"
    out = generator(text, max_new_tokens=5, do_sample=False)[0]["generated_text"]
    ids = tokenizer(text, return_tensors="pt").input_ids
    expected = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out == tokenizer.decode(expected[0], skip_special_tokens=True)
