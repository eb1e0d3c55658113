"""Framework features a Hugging Face user relies on: gradient checkpointing, torch.compile, big-model loading with
disk offload, hidden states and attention weights, the sequence-classification head, buffers after reload."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification, LlamaConfig, LlamaForCausalLM

from conftest import LLAMA_KEYS, TINY, build, padded, random_ids, tiny_config
from hfgen import HfGenDecoderConfig, HfGenDecoderForCausalLM, HfGenDecoderForSequenceClassification, HfGenDecoderModel


# ------------------------------------------------------------------------------------ gradient checkpointing


def counting(forward, calls: list):
    def wrapper(*args, **kwargs):
        calls.append(1)
        return forward(*args, **kwargs)

    return wrapper


def gradients(model, ids):
    model.zero_grad()
    model(ids, labels=ids).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.filterwarnings("ignore:`gradient_checkpointing_enable` is deprecated:FutureWarning")
@pytest.mark.parametrize("variant", [{}, dict(position_embedding="alibi", softmax_variant="adaptive_temperature"),
                                     dict(attention_scoring="additive", attention_gate=True),
                                     dict(position_embedding="relative_bias")],
                         ids=["default", "alibi-adaptive", "additive-gate", "relative_bias"])
def test_gradient_checkpointing_gives_the_same_gradients(variant):
    model = build(HfGenDecoderForCausalLM, tiny_config(**variant)).train()
    ids = random_ids(2, 10)
    plain = gradients(model, ids)
    assert len(plain) == len(list(model.parameters()))

    model.gradient_checkpointing_enable()
    calls = []
    for layer in model.model.layers:  # count MLP runs: they happen inside the checkpointed region
        layer.mlp.forward = counting(layer.mlp.forward, calls)
    checkpointed = gradients(model, ids)
    # Checkpointing really happened: every layer ran again during the backward pass.
    assert len(calls) == 2 * model.config.num_hidden_layers
    assert checkpointed.keys() == plain.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)


# ------------------------------------------------------------------------------------------- torch.compile


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_matches_eager(backend):
    model = build(HfGenDecoderForCausalLM, tiny_config())
    ids = random_ids(2, 8)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    with torch.no_grad():
        expected = model(ids, attention_mask=mask).logits
        compiled = torch.compile(model, backend=backend)
        got = compiled(ids, attention_mask=mask).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------ big-model loading


def test_disk_offload_generates_the_same_tokens(tmp_path):
    model = build(HfGenDecoderForCausalLM, tiny_config())
    model.save_pretrained(tmp_path / "model")
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    offloaded = HfGenDecoderForCausalLM.from_pretrained(
        tmp_path / "model", device_map="auto", max_memory={"cpu": size // 2}, offload_folder=tmp_path / "offload")
    placement = set(offloaded.hf_device_map.values())
    assert "disk" in placement, offloaded.hf_device_map
    assert any(p.device.type == "meta" for p in offloaded.parameters())  # weights stay on disk until used

    ids = random_ids(2, 6)
    options = dict(do_sample=False, max_new_tokens=6, pad_token_id=0, output_logits=True,
                   return_dict_in_generate=True)
    expected = model.generate(ids, **options)
    got = offloaded.generate(ids, **options)
    torch.testing.assert_close(got.sequences, expected.sequences, atol=0, rtol=0)
    torch.testing.assert_close(torch.stack(got.logits), torch.stack(expected.logits), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- hidden states and attentions


def test_hidden_states_and_attentions_match_llama():
    llama = build(LlamaForCausalLM, LlamaConfig(**LLAMA_KEYS), attn_implementation="eager")
    ours = build(HfGenDecoderForCausalLM, HfGenDecoderConfig(**LLAMA_KEYS), attn_implementation="eager")
    ours.load_state_dict(llama.state_dict())
    ids = random_ids(2, 7)
    with torch.no_grad():
        theirs = llama(ids, output_hidden_states=True, output_attentions=True)
        got = ours(ids, output_hidden_states=True, output_attentions=True)
    layers = ours.config.num_hidden_layers
    assert len(got.hidden_states) == len(theirs.hidden_states) == layers + 1
    assert len(got.attentions) == len(theirs.attentions) == layers
    for mine, reference in zip(got.hidden_states + got.attentions, theirs.hidden_states + theirs.attentions):
        assert mine.shape == reference.shape
        torch.testing.assert_close(mine, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("softmax_variant", ["standard", "off_by_one", "adaptive_temperature"])
def test_attention_rows_are_distributions(softmax_variant):
    config = tiny_config(softmax_variant=softmax_variant)
    model = build(HfGenDecoderModel, config, attn_implementation="eager")
    ids = random_ids(2, 7)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    with torch.no_grad():
        out = model(ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == config.num_hidden_layers + 1
    for hidden in out.hidden_states:
        assert hidden.shape == (2, 7, config.hidden_size)
    torch.testing.assert_close(out.hidden_states[-1], out.last_hidden_state, atol=0, rtol=0)
    assert len(out.attentions) == config.num_hidden_layers
    allowed = torch.ones(7, 7).tril().bool()[None] & mask.bool()[:, None, :]  # [B, Q, K]
    real_queries = mask.bool()  # rows of padding queries are never used: only real ones are checked
    for weights in out.attentions:
        assert weights.shape == (2, config.num_attention_heads, 7, 7)
        rows = weights.permute(0, 2, 1, 3)[real_queries]  # [real queries, H, K]
        assert (rows >= 0).all()
        # Nothing goes to the future or to padding.
        assert (rows.masked_select(~allowed[real_queries][:, None, :]) == 0).all()
        sums = rows.sum(-1)
        if softmax_variant == "off_by_one":  # exp(z_i) / (1 + sum_j exp(z_j)) leaves mass on the implicit zero
            assert (sums < 1).all()
        else:
            torch.testing.assert_close(sums, torch.ones_like(sums), atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------ sequence classification


def classifier(num_labels: int = 3, **overrides):
    return build(HfGenDecoderForSequenceClassification, tiny_config(num_labels=num_labels, **overrides))


ROWS = [random_ids(1, 6, seed=5)[0], random_ids(1, 3, seed=6)[0], random_ids(1, 5, seed=7)[0]]


@pytest.mark.parametrize("side", ["right", "left"])
def test_classifier_pools_the_last_real_token(side):
    model = classifier()
    ids, mask = padded(ROWS, side)
    with torch.no_grad():
        alone = torch.cat([model(row[None]).logits for row in ROWS])
        batch = model(ids, attention_mask=mask).logits
        # The head really reads the last token: the same row without its last token scores differently.
        shorter = model(ROWS[0][None, :-1]).logits
    assert batch.shape == (len(ROWS), 3)
    torch.testing.assert_close(batch, alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(shorter[0], alone[0], atol=1e-3)
    if side == "right":  # without a mask the last non-pad token is found from pad_token_id
        with torch.no_grad():
            torch.testing.assert_close(model(ids).logits, alone, atol=1e-5, rtol=1e-5)


def test_classifier_losses():
    model = classifier(num_labels=3)
    ids, mask = padded(ROWS, "right")
    labels = torch.tensor([2, 0, 1])
    out = model(ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels))
    out.loss.backward()
    assert model.score.weight.grad is not None and model.score.weight.grad.abs().sum() > 0

    regressor = classifier(num_labels=1)
    targets = torch.tensor([0.5, -1.0, 2.0])
    out = regressor(ids, attention_mask=mask, labels=targets)
    assert out.logits.shape == (3, 1)
    torch.testing.assert_close(out.loss, F.mse_loss(out.logits.squeeze(-1), targets))
    out.loss.backward()
    assert regressor.score.weight.grad.abs().sum() > 0


def test_classifier_save_load_plain_and_auto(tmp_path):
    model = classifier(position_embedding="relative_bias", softmax_variant="off_by_one")
    model.save_pretrained(tmp_path)
    ids, mask = padded(ROWS, "left")
    with torch.no_grad():
        expected = model(ids, attention_mask=mask).logits
    for loader in (HfGenDecoderForSequenceClassification, AutoModelForSequenceClassification):
        reloaded = loader.from_pretrained(tmp_path).eval()
        assert reloaded.config.num_labels == 3
        with torch.no_grad():
            assert torch.equal(reloaded(ids, attention_mask=mask).logits, expected), loader.__name__


# ---------------------------------------------------------------------------------------- rotary buffer


@pytest.mark.parametrize("model_class", [HfGenDecoderForCausalLM, HfGenDecoderForSequenceClassification,
                                         HfGenDecoderModel])
def test_rotary_inv_freq_is_recomputed_after_from_pretrained(model_class, tmp_path):
    theta, head_dim = 500.0, TINY["hidden_size"] // TINY["num_attention_heads"]
    config = tiny_config(rope_parameters={"rope_type": "default", "rope_theta": theta})
    model = build(model_class, config)
    model.save_pretrained(tmp_path)
    reloaded = model_class.from_pretrained(tmp_path).eval()
    base = reloaded if model_class is HfGenDecoderModel else reloaded.model
    # RoFormer: theta_i = base^(-2i/d) for i = 0 .. d/2 - 1.
    expected = torch.tensor([theta ** (-2 * i / head_dim) for i in range(head_dim // 2)], dtype=torch.float32)
    torch.testing.assert_close(base.rotary_emb.inv_freq, expected, atol=1e-7, rtol=1e-6)
    ids = random_ids(2, 9)
    with torch.no_grad():
        first, second = model(ids), reloaded(ids)
    key = "last_hidden_state" if model_class is HfGenDecoderModel else "logits"
    assert torch.equal(first[key], second[key])
