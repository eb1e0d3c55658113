"""Mixture of experts on the decoder (``num_experts``), built on transformers' MoE machinery: Mixtral checkpoints load
and give Mixtral's logits and auxiliary loss; every experts implementation equals the routing formula computed
densely; no token is dropped; router logits are recorded outputs whose losses follow their formulas (Mixtral's
load-balancing loss written out, the z-loss); each example alone equals it in a batch; generation, save -> load and
PEFT LoRA on the expert weights work; the default keeps the plain MLP exactly."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from safetensors import safe_open
from transformers import MixtralConfig, MixtralForCausalLM
from transformers.testing_utils import CaptureLogger

from conftest import LLAMA_KEYS, build, padded, random_ids, tiny_config
from hfgen import HfGenDecoderForCausalLM
from hfgen.models.moe import HfGenSparseMoeBlock, expert_utilization
from hfgen.models.moe import logger as moe_logger
from hfgen.training.peft_defaults import check_peft_targets, expert_target_parameters

MOE = dict(num_experts=4, num_experts_per_tok=2)
NEW_TOKENS = 6
GREEDY = dict(do_sample=False, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, pad_token_id=0,
              eos_token_id=None)
IMPLEMENTATIONS = ("eager", "grouped_mm", "batched_mm")


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
    assert hfgen.config.output_router_logits is True  # Mixtral's config value, kept
    assert not hfgen.loading_info["missing_keys"] and not hfgen.loading_info["unexpected_keys"], hfgen.loading_info
    for layer in range(2):
        ours, theirs = hfgen.model.layers[layer].block_sparse_moe, mixtral.model.layers[layer].mlp
        for name in ("gate_up_proj", "down_proj"):
            assert torch.equal(getattr(ours.experts, name), getattr(theirs.experts, name)), (layer, name)
        assert torch.equal(ours.gate.weight, theirs.gate.weight)


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
    for mine, reference in zip(ours.router_logits, theirs.router_logits, strict=True):
        torch.testing.assert_close(mine[real.reshape(-1)], reference[real.reshape(-1)], atol=1e-5, rtol=1e-5)


def dense_reference(block: HfGenSparseMoeBlock, x: torch.Tensor) -> torch.Tensor:
    """Every token through its top-k experts, written from the weights: ``W2 (silu(W1 x) * W3 x)`` with ``W1``/``W3``
    the gate/up rows of ``gate_up_proj``, combined with the renormalised top-k softmax weights."""
    flat = x.reshape(-1, x.shape[-1])
    probs = F.softmax(flat @ block.gate.weight.T, dim=-1)
    experts = block.experts
    size = experts.down_proj.shape[-1]
    out = torch.zeros_like(flat)
    for t in range(flat.shape[0]):
        top = torch.topk(probs[t], block.top_k).indices
        for e in top.tolist():
            w1, w3, w2 = experts.gate_up_proj[e, :size], experts.gate_up_proj[e, size:], experts.down_proj[e]
            out[t] += probs[t, e] / probs[t, top].sum() * (w2 @ (F.silu(w1 @ flat[t]) * (w3 @ flat[t])))
    return out.reshape(x.shape)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("top_k", [1, 2, 4])
def test_every_experts_implementation_equals_the_dense_formula(top_k, implementation):
    model = build(HfGenDecoderForCausalLM, tiny_config(num_experts=4, num_experts_per_tok=top_k))
    model.set_experts_implementation(implementation)  # transformers' experts interface
    assert model.config._experts_implementation == implementation
    block = model.model.layers[0].block_sparse_moe
    with torch.no_grad():
        for x in (torch.randn(3, 5, 32, generator=torch.Generator().manual_seed(top_k)), torch.randn(1, 1, 32)):
            torch.testing.assert_close(block(x), dense_reference(block, x), atol=1e-5, rtol=1e-5)


def test_experts_implementation_through_from_pretrained(tmp_path, moe_model):
    moe_model.save_pretrained(tmp_path)
    assert moe_model.config._experts_implementation == "grouped_mm"  # transformers' default, as for Mixtral
    loaded = HfGenDecoderForCausalLM.from_pretrained(tmp_path, experts_implementation="batched_mm").eval()
    assert loaded.config._experts_implementation == "batched_mm"
    ids = random_ids(2, 6)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, moe_model(ids).logits, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="experts_implementation"):
        HfGenDecoderForCausalLM.from_pretrained(tmp_path, experts_implementation="no_such_kernel")


def test_no_token_is_dropped_when_every_token_picks_the_same_expert():
    model = build(HfGenDecoderForCausalLM, tiny_config(num_experts=4, num_experts_per_tok=1))
    block = model.model.layers[0].block_sparse_moe
    with torch.no_grad():
        block.gate.weight.zero_()
        block.gate.weight[2] = 1.0  # logit of expert 2 = sum(x): make every x sum positive
        x = torch.rand(2, 16, 32) + 0.1
        assert (block.gate(x.reshape(-1, 32))[2] == 2).all()
        w1, w3, w2 = block.experts.gate_up_proj[2, :64], block.experts.gate_up_proj[2, 64:], block.experts.down_proj[2]
        torch.testing.assert_close(block(x), (F.silu(x @ w1.T) * (x @ w3.T)) @ w2.T, atol=1e-5, rtol=1e-5)


def test_router_logits_are_recorded_and_the_losses_follow_their_formulas(moe_model):
    ids, mask = padded([random_ids(1, 7, seed=2)[0], random_ids(1, 4, seed=3)[0]], "left")
    with torch.no_grad():
        out = moe_model(ids, attention_mask=mask, labels=ids)
        # the recorded logits are the router applied to what each MoE block received
        inputs = []
        hooks = [layer.block_sparse_moe.register_forward_pre_hook(lambda m, a: inputs.append(a[0]))
                 for layer in moe_model.model.layers]
        moe_model(ids, attention_mask=mask)
        for hook in hooks:
            hook.remove()
    assert len(out.router_logits) == 2 and all(r.shape == (2 * 7, 4) for r in out.router_logits)
    for layer, (recorded, x) in enumerate(zip(out.router_logits, inputs, strict=True)):
        gate = moe_model.model.layers[layer].block_sparse_moe.gate.weight
        torch.testing.assert_close(recorded, x.reshape(-1, 32) @ gate.T, atol=1e-6, rtol=1e-5)
    real = mask.reshape(-1).bool()
    logits = [layer_logits[real] for layer_logits in out.router_logits]
    # z-loss: mean over layers and real tokens of logsumexp^2
    z = torch.cat([torch.logsumexp(layer_logits, -1) ** 2 for layer_logits in logits]).mean()
    torch.testing.assert_close(out.z_loss, z, atol=1e-6, rtol=1e-5)
    # aux (load_balancing_loss_func written out): E * sum_e f_e P_e over all layers' real tokens
    probs = torch.cat([F.softmax(layer_logits, -1) for layer_logits in logits])
    chosen = torch.topk(probs, 2, dim=-1).indices.reshape(-1)
    f = torch.bincount(chosen, minlength=4).float() / probs.shape[0]
    torch.testing.assert_close(out.aux_loss, 4 * (f * probs.mean(0)).sum(), atol=1e-6, rtol=1e-5)
    # the loss is the language-modelling loss plus both, weighted
    lm = F.cross_entropy(out.logits[:, :-1].reshape(-1, 128), ids[:, 1:].reshape(-1))
    config = moe_model.config
    torch.testing.assert_close(out.loss, lm + config.router_aux_loss_coef * out.aux_loss
                               + config.router_z_loss_coef * out.z_loss, atol=1e-5, rtol=1e-5)
    # utilisation (a logging helper, not an output): per layer, share of the real tokens' top-k slots, by hand
    usage = expert_utilization(out.router_logits, 2, mask)
    for layer, layer_logits in enumerate(logits):
        picks = torch.topk(layer_logits, 2, dim=-1).indices.reshape(-1).tolist()
        torch.testing.assert_close(usage[layer], torch.tensor([picks.count(e) / len(picks) for e in range(4)]))


def test_output_router_logits_off_gives_the_plain_output_and_loss(moe_model):
    ids = random_ids(2, 6)
    with torch.no_grad():
        on = moe_model(ids, labels=ids)
        off = moe_model(ids, labels=ids, output_router_logits=False)
        quiet = copy.deepcopy(moe_model)
        quiet.config.output_router_logits = False  # (the head's and the base model's config: one object)
        by_config = quiet(ids, labels=ids)
    for out in (off, by_config):
        assert type(out).__name__ == "CausalLMOutputWithPast" and "router_logits" not in out
        torch.testing.assert_close(out.logits, on.logits, atol=0, rtol=0)
        lm = F.cross_entropy(on.logits[:, :-1].reshape(-1, 128), ids[:, 1:].reshape(-1))
        torch.testing.assert_close(out.loss, lm, atol=1e-6, rtol=1e-5)


def test_each_example_alone_equals_it_in_a_batch(moe_model):
    """transformers' batching equivalence with experts: per-example fields row for row (router logits: the rows of
    that example's tokens); the losses are batch statistics and are not compared."""
    ids = random_ids(3, 8, seed=5)
    with torch.no_grad():
        batch = moe_model(ids, output_hidden_states=True)
        for i in range(3):
            alone = moe_model(ids[i:i + 1], output_hidden_states=True)
            torch.testing.assert_close(batch.logits[i], alone.logits[0], atol=1e-5, rtol=1e-5)
            for mine, single in zip(batch.hidden_states, alone.hidden_states, strict=True):
                torch.testing.assert_close(mine[i], single[0], atol=1e-5, rtol=1e-5)
            for mine, single in zip(batch.router_logits, alone.router_logits, strict=True):
                torch.testing.assert_close(mine.reshape(3, 8, 4)[i], single, atol=1e-5, rtol=1e-5)
    assert not any(key not in ("loss", "aux_loss", "z_loss") and value.dim() == 2 and value.shape[0] != 3 * 8
                   for key, value in batch.items() if isinstance(value, torch.Tensor))


def test_default_keeps_the_plain_mlp_exactly():
    plain = build(HfGenDecoderForCausalLM, tiny_config())
    explicit = build(HfGenDecoderForCausalLM, tiny_config(num_experts=0))
    assert list(plain.state_dict()) == list(explicit.state_dict())
    assert "model.layers.0.mlp.gate_proj.weight" in plain.state_dict()
    assert not any("expert" in k for k in plain.state_dict())
    assert plain.config.output_router_logits is False
    ids = random_ids(2, 6)
    with torch.no_grad():
        out = plain(ids, labels=ids)
    assert type(out).__name__ == "CausalLMOutputWithPast"
    assert type(plain.model(ids)).__name__ == "BaseModelOutputWithPast"
    torch.testing.assert_close(out.logits, explicit(ids).logits, atol=0, rtol=0)
    with pytest.raises(ValueError, match=r"output_router_logits=True needs a mixture of experts"):
        plain(ids, output_router_logits=True)


def test_gradients_reach_the_router_and_the_experts(moe_model):
    model = copy.deepcopy(moe_model).train()
    ids = random_ids(4, 12)
    out = model(ids, labels=ids)
    out.loss.backward()
    block = model.model.layers[0].block_sparse_moe
    assert block.gate.weight.grad.abs().sum() > 0
    used = torch.topk(out.router_logits[0], 2, dim=-1).indices.unique()
    assert (block.experts.gate_up_proj.grad.abs().sum((1, 2))[used] > 0).all()
    assert (block.experts.down_proj.grad.abs().sum((1, 2))[used] > 0).all()


def test_router_losses_train_the_router_under_gradient_checkpointing(moe_model):
    """Non-reentrant checkpointing trains the router through the router losses exactly as without checkpointing.
    Reentrant checkpointing cannot (the layers run without autograd, so the recorded router logits have no
    gradient): hfgen says so rather than leave the router silently without its balancing loss."""
    ids = random_ids(2, 8)
    grads = []
    for kwargs in (None, {"use_reentrant": False}):
        model = copy.deepcopy(moe_model).train()
        if kwargs:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        model(ids).aux_loss.backward()
        grads.append(model.model.layers[0].block_sparse_moe.gate.weight.grad)
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], atol=1e-7, rtol=1e-5)
    model = copy.deepcopy(moe_model).train()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
    type(moe_logger).warning_once.cache_clear()  # (warned at most once per process otherwise)
    with CaptureLogger(moe_logger) as captured:
        out = model(ids, labels=ids)
    assert out.loss.requires_grad and not out.aux_loss.requires_grad
    assert "'use_reentrant': False" in captured.out


def test_cached_generation_equals_uncached(moe_model):
    ids = random_ids(2, 6)
    cached = moe_model.generate(ids, **GREEDY)
    torch.testing.assert_close(cached, moe_model.generate(ids, use_cache=False, **GREEDY), atol=0, rtol=0)


# dynamo traces the whole decoding step: about 9 s at load 10; "eager" is the one whose compiled path is hfgen's
@pytest.mark.parametrize("implementation", ["eager", pytest.param("grouped_mm", marks=pytest.mark.slow)])
def test_static_cache_generation_compiles_to_one_graph_with_the_eager_tokens(moe_model, implementation):
    """With transformers' experts kernels (grouped_mm, the default) an MoE decoding step, router losses included,
    compiles whole (``fullgraph=True``): one graph for every step, the tokens of eager decoding. hfgen's "eager"
    experts (a Python loop over data-dependent slices, which raised under ``fullgraph=True``) hand the traced step
    to grouped_mm and compile whole too."""
    from test_static_cache_compile import GraphCounter, cpu_compile_config

    moe_model = copy.deepcopy(moe_model)
    moe_model.set_experts_implementation(implementation)
    ids, mask = padded([random_ids(1, 7, seed=2)[0], random_ids(1, 4, seed=3)[0]], "left")
    torch._dynamo.reset()
    eager = moe_model.generate(ids, attention_mask=mask, cache_implementation="static", **GREEDY)
    counter = GraphCounter()
    compiled = moe_model.generate(ids, attention_mask=mask, cache_implementation="static",
                                  compile_config=cpu_compile_config(counter), **GREEDY)
    torch._dynamo.reset()
    assert counter.graphs == 1
    torch.testing.assert_close(compiled, eager, atol=0, rtol=0)


def test_left_padded_batch_equals_rows_alone(moe_model):
    rows = [random_ids(1, 7, seed=2)[0], random_ids(1, 3, seed=4)[0]]
    ids, mask = padded(rows, "left")
    batch = moe_model.generate(ids, attention_mask=mask, **GREEDY)
    for i, row in enumerate(rows):
        alone = moe_model.generate(row[None], **GREEDY)
        torch.testing.assert_close(batch[i, ids.shape[1]:], alone[0, len(row):], atol=0, rtol=0)


def test_save_load_identical_with_per_expert_tensors_on_disk(tmp_path, moe_model):
    moe_model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        keys = set(f.keys())
        # Mixtral's on-disk names (and hfgen's before the 3D layout): one tensor per expert and projection
        assert {f"model.layers.1.block_sparse_moe.experts.3.{w}.weight" for w in ("w1", "w2", "w3")} <= keys
        assert not any("gate_up_proj" in key or "down_proj" in key for key in keys)
        size = moe_model.config.intermediate_size
        torch.testing.assert_close(f.get_tensor("model.layers.0.block_sparse_moe.experts.2.w3.weight"),
                                   moe_model.model.layers[0].block_sparse_moe.experts.gate_up_proj[2, size:],
                                   atol=0, rtol=0)
    loaded = HfGenDecoderForCausalLM.from_pretrained(tmp_path).eval()
    assert all(torch.equal(a, b) for a, b in zip(moe_model.state_dict().values(), loaded.state_dict().values(),
                                                 strict=True))
    ids = random_ids(2, 6)
    with torch.no_grad():
        ours, theirs = moe_model(ids, labels=ids), loaded(ids, labels=ids)
    for key in ("logits", "loss", "aux_loss", "z_loss"):
        torch.testing.assert_close(getattr(theirs, key), getattr(ours, key), atol=1e-6, rtol=0)


def test_half_precision_keeps_the_router_in_fp32(tmp_path, moe_model):
    """The top-k choice is discontinuous, so bf16-rounded router logits send near-tied tokens to other experts: the
    router's weight stays fp32 under ``dtype=torch.bfloat16`` (``_keep_in_fp32_modules_strict``) and routes in fp32,
    while the experts run in bf16."""
    moe_model.save_pretrained(tmp_path)
    half = HfGenDecoderForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    block = half.model.layers[0].block_sparse_moe
    assert block.gate.weight.dtype == torch.float32 and block.experts.gate_up_proj.dtype == torch.bfloat16
    ids = random_ids(3, 10)
    with torch.no_grad():
        got, reference = half(ids), moe_model(ids)
    assert all(layer.dtype == torch.float32 for layer in got.router_logits)
    assert (got.logits.float() - reference.logits).abs().max() < 0.1 * reference.logits.abs().max()


def test_peft_lora_adapts_the_expert_weights(moe_model):
    """Experts are 3D parameters, not nn.Linear modules: PEFT's LoRA reaches them through ``target_parameters``."""
    model = copy.deepcopy(moe_model).train()
    with pytest.raises(ValueError, match=r"3D parameters.*target_parameters=\['experts.gate_up_proj', "
                                         r"'experts.down_proj'\]"):
        check_peft_targets(model, LoraConfig(target_modules=["w1", "w2", "w3"]))  # the per-expert Linear names
    assert expert_target_parameters(build(HfGenDecoderForCausalLM, tiny_config())) == []
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], target_parameters=expert_target_parameters(model))
    peft_model = get_peft_model(model, config)
    wrapped = {m.parameter_name for m in peft_model.modules() if type(m).__name__ == "ParamWrapper"}
    assert wrapped == {"gate_up_proj", "down_proj"}
    assert any(".experts." in name and p.requires_grad for name, p in peft_model.named_parameters())
    ids = random_ids(2, 8)
    with torch.no_grad():
        torch.testing.assert_close(peft_model(ids).logits, moe_model(ids).logits, atol=1e-6, rtol=0)  # B = 0
    before = copy.deepcopy(moe_model.model.layers[0].block_sparse_moe.experts.gate_up_proj)
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    peft_model(ids, labels=ids).loss.backward()
    optimizer.step()
    peft_model.eval()
    with torch.no_grad():
        adapted = peft_model(ids).logits
        merged = peft_model.merge_and_unload()
        after = merged.model.layers[0].block_sparse_moe.experts.gate_up_proj
        assert not torch.equal(after, before)  # the update reached the expert weights
        torch.testing.assert_close(merged(ids).logits, adapted, atol=1e-5, rtol=1e-5)
    assert (adapted - moe_model(ids).logits).abs().max() > 1e-4


@pytest.mark.parametrize("overrides, pattern", [
    (dict(num_experts=4, num_experts_per_tok=5), r"num_experts_per_tok must be an integer between 1 and "
                                                 r"num_experts \(4\).*got 5"),
    (dict(num_experts=4, num_experts_per_tok=0), r"num_experts_per_tok .* got 0"),
    (dict(num_experts=-1), r"num_experts must be 0 .* or a positive integer, got -1"),
    (dict(num_experts=4, router_aux_loss_coef=-1.0), r"router_aux_loss_coef must be a number >= 0"),
    (dict(num_experts=4, output_router_logits="yes"), r"output_router_logits must be True or False, got 'yes'"),
    (dict(output_router_logits=True), r"output_router_logits=True needs a mixture of experts"),
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
