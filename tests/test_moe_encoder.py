"""Mixture of experts on the encoder family (``num_experts`` on ``HfGenEncoderConfig``, the decoder's keys): the
routed layer equals a per-token loop written from the formula (GELU and gated experts, with biases), padding changes
nothing, the recorded router logits give losses and statistics that follow their formulas, save -> load is
identical with the per-expert tensors on disk meaning what they did before the 3D layout (also through
``trust_remote_code`` where hfgen is not importable), Trainer trains it, and bad keys are refused before anything
is built."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from transformers import Trainer, TrainingArguments
from transformers.modeling_outputs import MaskedLMOutput

from hfgen import (
    HfGenEncoderConfig,
    HfGenEncoderForMaskedLM,
    HfGenEncoderForPreTraining,
    HfGenEncoderForSequenceClassification,
    HfGenEncoderForTokenClassification,
)
from hfgen.models.moe import expert_utilization
from test_encoder_fixtures import TINY_ENCODER, tiny_encoder_config
from test_hub_portability import CHILD, isolated_pythonpath

MOE = dict(num_experts=4, num_experts_per_tok=2)
GATED = dict(mlp_type="gated", hidden_act="silu", norm_position="pre", norm_type="rmsnorm")


def build_encoder(model_class=HfGenEncoderForMaskedLM, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return model_class(copy.deepcopy(tiny_encoder_config(num_labels=3, **{**MOE, **overrides}))).eval()


def expert_tensors(block, e: int) -> dict[str, torch.Tensor | None]:
    """Expert ``e``'s projections as per-expert matrices and biases: ``w1`` (gate for gated experts, else up), ``w3``
    (up; gated only), ``w2`` (down), cut from the 3D weights."""
    experts = block.experts
    size = experts.down_proj.shape[-1]
    bias = getattr(experts, "gate_up_proj_bias", None)
    gated = experts.gate_up_proj.shape[1] == 2 * size
    tensors = dict(w1=experts.gate_up_proj[e, :size], b1=None if bias is None else bias[e, :size],
                   w2=experts.down_proj[e], b2=None if bias is None else experts.down_proj_bias[e], w3=None, b3=None)
    if gated:
        tensors.update(w3=experts.gate_up_proj[e, size:], b3=None if bias is None else bias[e, size:])
    return tensors


def expert_formula(t: dict, x: torch.Tensor, activation) -> torch.Tensor:
    """``W2 act(W1 x + b1) + b2`` (GELU) or ``W2 (act(W1 x + b1) * (W3 x + b3)) + b2`` (gated), one vector ``x``."""
    def affine(weight, bias, v):
        return weight @ v + (bias if bias is not None else 0)

    hidden = activation(affine(t["w1"], t["b1"], x))
    if t["w3"] is not None:
        hidden = hidden * affine(t["w3"], t["b3"], x)
    return affine(t["w2"], t["b2"], hidden)


def per_token_loop(block, x: torch.Tensor, activation, tensors=None) -> torch.Tensor:
    """``y = sum_{e in topk(p)} p_e / sum_topk p * E_e(x)``, ``p = softmax(W_g x)``, one token at a time, each expert
    from its own weights (``tensors[e]``; by default cut from the block's 3D weights)."""
    tensors = tensors or [expert_tensors(block, e) for e in range(block.experts.num_experts)]
    flat = x.reshape(-1, x.shape[-1])
    out = torch.zeros_like(flat)
    for t in range(flat.shape[0]):
        probs = torch.softmax(block.gate.weight @ flat[t], dim=-1)
        top = torch.topk(probs, block.top_k).indices.tolist()
        norm = sum(probs[e] for e in top)
        for e in top:
            out[t] += probs[e] / norm * expert_formula(tensors[e], flat[t], activation)
    return out.reshape(x.shape)


@pytest.mark.parametrize("kind, top_k", [("standard", 1), ("standard", 2), ("gated", 2), ("gated", 4)])
def test_routed_layer_equals_the_per_token_loop(kind, top_k):
    variant = GATED if kind == "gated" else {}
    model = build_encoder(num_experts_per_tok=top_k, **variant)
    block = model.bert.encoder.layer[0].block_sparse_moe
    size = model.config.intermediate_size
    assert block.experts.gate_up_proj.shape == (4, 2 * size if kind == "gated" else size, 32)
    assert block.experts.gate_up_proj_bias is not None  # the encoder's mlp_bias=True reaches the experts
    activation = F.silu if kind == "gated" else F.gelu
    with torch.no_grad():
        for x in (torch.randn(3, 5, 32, generator=torch.Generator().manual_seed(top_k)),
                  torch.randn(1, 1, 32, generator=torch.Generator().manual_seed(7))):  # one token
            torch.testing.assert_close(block(x), per_token_loop(block, x, activation), atol=1e-5, rtol=1e-5)


def test_no_token_is_dropped_when_all_pick_one_expert():
    block = build_encoder(num_experts_per_tok=1).bert.encoder.layer[0].block_sparse_moe
    with torch.no_grad():
        block.gate.weight.zero_()
        block.gate.weight[3] = 1.0  # every token (positive entries) picks expert 3
        x = torch.rand(2, 20, 32) + 0.1
        t = expert_tensors(block, 3)
        expected = F.gelu(x @ t["w1"].T + t["b1"]) @ t["w2"].T + t["b2"]
        torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)
        assert (block.gate(x.reshape(-1, 32))[2] == 3).all()


def rows_and_batch():
    generator = torch.Generator().manual_seed(3)
    rows = [torch.randint(1, 128, (length,), generator=generator) for length in (9, 4)]
    ids = torch.zeros(2, 9, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, :len(row)], mask[i, :len(row)] = row, 1
    return rows, ids, mask


def test_padded_batch_equals_rows_alone():
    model = build_encoder()
    rows, ids, mask = rows_and_batch()
    with torch.no_grad():
        batch = model(ids, attention_mask=mask)
        for i, row in enumerate(rows):
            alone = model(row[None])
            torch.testing.assert_close(batch.logits[i, :len(row)], alone.logits[0], atol=1e-5, rtol=1e-5)
            for mine, single in zip(batch.router_logits, alone.router_logits, strict=True):  # per-token rows
                torch.testing.assert_close(mine.reshape(2, 9, 4)[i, :len(row)], single, atol=1e-5, rtol=1e-5)
        # the short row with five pad columns: the same routing statistics as alone (padding never counts)
        short = model(ids[1:], attention_mask=mask[1:])
        alone = model(rows[1][None])
    for key in ("aux_loss", "z_loss"):
        torch.testing.assert_close(getattr(short, key), getattr(alone, key), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(expert_utilization(short.router_logits, 2, mask[1:]),
                               expert_utilization(alone.router_logits, 2), atol=1e-6, rtol=1e-5)


def plain_router_losses(router_logits, real: torch.Tensor, top_k: int, num_experts: int):
    """Written out with Python loops over real tokens: utilisation per layer, Switch aux loss over all layers'
    tokens together, z-loss = mean of logsumexp^2."""
    chosen_all, probs_all, squares, usage = [], [], [], []
    for logits in router_logits:
        chosen_layer = []
        for t in torch.nonzero(real).flatten().tolist():
            probs = torch.exp(logits[t]) / torch.exp(logits[t]).sum()
            chosen = torch.topk(probs, top_k).indices.tolist()
            chosen_layer += chosen
            probs_all.append(probs)
            squares.append(torch.log(torch.exp(logits[t]).sum()) ** 2)
        usage.append([chosen_layer.count(e) / len(chosen_layer) for e in range(num_experts)])
        chosen_all += chosen_layer
    tokens = len(probs_all)
    f = [chosen_all.count(e) / tokens for e in range(num_experts)]
    mean_probs = torch.stack(probs_all).mean(0)
    aux = num_experts * sum(f[e] * mean_probs[e] for e in range(num_experts))
    return aux, sum(squares) / len(squares), torch.tensor(usage)


def test_mlm_loss_and_statistics_follow_their_formulas():
    model = build_encoder(router_aux_loss_coef=0.1, router_z_loss_coef=0.01)
    _, ids, mask = rows_and_batch()
    labels = torch.full_like(ids, -100)
    labels[0, [1, 4, 7]] = ids[0, [1, 4, 7]]
    labels[1, 2] = 5
    with torch.no_grad():
        out = model(ids, attention_mask=mask, labels=labels)
    aux, z, usage = plain_router_losses(out.router_logits, mask.reshape(-1).bool(), 2, 4)
    torch.testing.assert_close(out.aux_loss, aux, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.z_loss, z, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(expert_utilization(out.router_logits, 2, mask), usage.float(), atol=1e-6, rtol=1e-5)
    assert len(out.router_logits) == 2 and all(r.shape == (2 * 9, 4) for r in out.router_logits)
    mlm = F.cross_entropy(out.logits.reshape(-1, 128), labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, mlm + 0.1 * aux + 0.01 * z, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model_class", [HfGenEncoderForSequenceClassification, HfGenEncoderForTokenClassification,
                                         HfGenEncoderForPreTraining])
def test_every_head_adds_the_router_losses(model_class):
    model = build_encoder(model_class, router_aux_loss_coef=0.1, router_z_loss_coef=0.01)
    _, ids, mask = rows_and_batch()
    inputs = dict(input_ids=ids, attention_mask=mask)
    if model_class is HfGenEncoderForSequenceClassification:
        inputs["labels"] = torch.tensor([2, 0])
    elif model_class is HfGenEncoderForTokenClassification:
        inputs["labels"] = torch.where(mask.bool(), ids % 3, -100)
    else:
        inputs.update(labels=torch.where(mask.bool(), ids, -100), next_sentence_label=torch.tensor([0, 1]))
    with torch.no_grad():
        out = model(**inputs)
        plain = model.bert(ids, attention_mask=mask)  # the base model records the same router logits
    aux, z, _ = plain_router_losses(out.router_logits, mask.reshape(-1).bool(), 2, 4)
    torch.testing.assert_close(out.aux_loss, aux, atol=1e-6, rtol=1e-5)
    for mine, base in zip(out.router_logits, plain.router_logits, strict=True):
        torch.testing.assert_close(mine, base, atol=0, rtol=0)
    if model_class is HfGenEncoderForSequenceClassification:
        task = F.cross_entropy(out.logits, inputs["labels"])
    elif model_class is HfGenEncoderForTokenClassification:
        task = F.cross_entropy(out.logits.reshape(-1, 3), inputs["labels"].reshape(-1), ignore_index=-100)
    else:
        task = (F.cross_entropy(out.prediction_logits.reshape(-1, 128), inputs["labels"].reshape(-1))
                + F.cross_entropy(out.seq_relationship_logits, inputs["next_sentence_label"]))
    torch.testing.assert_close(out.loss, task + 0.1 * aux + 0.01 * z, atol=1e-5, rtol=1e-5)
    assert out.to_tuple()[0] is out.loss


def test_default_keeps_the_plain_mlp_exactly():
    torch.manual_seed(0)
    plain = HfGenEncoderForMaskedLM(tiny_encoder_config()).eval()
    torch.manual_seed(0)
    explicit = HfGenEncoderForMaskedLM(tiny_encoder_config(num_experts=0)).eval()
    assert list(plain.state_dict()) == list(explicit.state_dict())
    assert "bert.encoder.layer.0.intermediate.dense.weight" in plain.state_dict()
    assert not any("expert" in k for k in plain.state_dict())
    ids = torch.randint(1, 128, (2, 6))
    with torch.no_grad():
        out = plain(ids)
    assert type(out) is MaskedLMOutput
    torch.testing.assert_close(out.logits, explicit(ids).logits, atol=0, rtol=0)


def test_gradients_reach_router_and_experts_also_with_checkpointing():
    _, ids, mask = rows_and_batch()
    grads = []
    for checkpointing in (False, True):
        model = build_encoder(**GATED).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        out = model(ids, attention_mask=mask, labels=torch.where(mask.bool(), ids, -100))
        out.loss.backward()
        block = model.bert.encoder.layer[0].block_sparse_moe
        assert block.gate.weight.grad.abs().sum() > 0
        used = torch.topk(out.router_logits[0], 2, dim=-1).indices.unique()
        up_rows = block.experts.gate_up_proj.grad[:, model.config.intermediate_size:]  # W3 of each expert
        assert (up_rows[used].abs().sum((1, 2)) > 0).all()
        grads.append((block.gate.weight.grad, block.experts.gate_up_proj.grad))
    for without, with_checkpointing in zip(*grads, strict=True):
        torch.testing.assert_close(without, with_checkpointing, atol=1e-6, rtol=1e-5)


def test_trainer_trains_the_moe_encoder(tmp_path):
    model = build_encoder().train()
    generator = torch.Generator().manual_seed(0)
    data = []
    for _ in range(16):
        ids = torch.randint(1, 128, (10,), generator=generator)
        labels = torch.full_like(ids, -100)
        labels[::3] = ids[::3]
        data.append(dict(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels))
    before = copy.deepcopy(model.bert.encoder.layer[1].block_sparse_moe.state_dict())
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4, learning_rate=1e-2,
                             logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=data)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    predictions = trainer.predict(data[:6])  # the router outputs stay out of the predictions: logits alone
    assert predictions.predictions.shape == (6, 10, 128) and predictions.metrics["test_loss"] > 0
    after = model.bert.encoder.layer[1].block_sparse_moe.state_dict()
    assert not torch.equal(before["gate.weight"], after["gate.weight"])
    assert sum(not torch.equal(before[k], after[k]) for k in before if k.startswith("experts.")) > 0


def save_and_load(tmp_path):
    model = build_encoder(**GATED)
    model.save_pretrained(tmp_path / "mlm")
    return model, HfGenEncoderForMaskedLM.from_pretrained(tmp_path / "mlm").eval()


def test_save_load_identical(tmp_path):
    model, loaded = save_and_load(tmp_path)
    _, ids, mask = rows_and_batch()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    with torch.no_grad():
        ours, theirs = model(ids, attention_mask=mask), loaded(ids, attention_mask=mask)
        # Loaded tensors are views of the safetensors buffer at 8-byte (not 64-byte) offsets, where a one-row matmul
        # (an expert that received a single token) may round the last bit differently: within 1e-6 as loaded, and
        # bit-identical once the same values sit in freshly allocated memory.
        for parameter in loaded.parameters():
            parameter.data = parameter.data.clone()
        rehomed = loaded(ids, attention_mask=mask)
    torch.testing.assert_close(theirs.logits, ours.logits, atol=1e-6, rtol=0)
    for key in ("logits", "aux_loss", "z_loss"):
        assert torch.equal(getattr(ours, key), getattr(rehomed, key)), key
    config = json.loads((tmp_path / "mlm" / "config.json").read_text())
    assert config["num_experts"] == 4 and config["num_experts_per_tok"] == 2 and config["mlp_type"] == "gated"
    assert config["output_router_logits"] is True
    assert "moe.py" in os.listdir(tmp_path / "mlm")


@pytest.mark.parametrize("kind", ["standard", "gated"])
def test_per_expert_tensors_on_disk_keep_their_meaning(tmp_path, kind):
    """The files hold one tensor per expert and projection (``experts.N.w1/w2/w3`` with biases), the names hfgen
    wrote before the 3D layout and Mixtral's: the loaded layer equals the per-token loop run on the tensors read
    straight from the file, so folders written either way load."""
    model = build_encoder(**(GATED if kind == "gated" else {}))
    model.save_pretrained(tmp_path)
    prefix = "bert.encoder.layer.1.block_sparse_moe."
    projections = ("w1", "w2", "w3") if kind == "gated" else ("w1", "w2")
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        expected = {f"experts.{e}.{w}.{kind_}" for e in range(4) for w in projections for kind_ in ("weight", "bias")}
        assert {k.removeprefix(prefix) for k in f.keys() if k.startswith(prefix)} == expected | {"gate.weight"}
        tensors = [{**dict(w3=None, b3=None),
                    **{f"w{w[1]}": f.get_tensor(f"{prefix}experts.{e}.{w}.weight") for w in projections},
                    **{f"b{w[1]}": f.get_tensor(f"{prefix}experts.{e}.{w}.bias") for w in projections}}
                   for e in range(4)]
        gate = f.get_tensor(prefix + "gate.weight")
    loaded = HfGenEncoderForMaskedLM.from_pretrained(tmp_path).eval()
    block = loaded.bert.encoder.layer[1].block_sparse_moe
    assert torch.equal(block.gate.weight, gate)
    x = torch.randn(2, 6, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(block(x), per_token_loop(block, x, F.silu if kind == "gated" else F.gelu, tensors),
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.slow  # a fresh interpreter importing torch and transformers: about 10 s on an idle machine
def test_loads_with_trust_remote_code_where_hfgen_is_not_importable(tmp_path):
    _, loaded = save_and_load(tmp_path)
    _, ids, mask = rows_and_batch()
    with torch.no_grad():
        local = loaded.bert(ids, attention_mask=mask).last_hidden_state
    torch.save({"input_ids": ids, "attention_mask": mask}, tmp_path / "inputs.pt")
    jobs = [dict(name="base", path=str(tmp_path / "mlm"), auto="AutoModel", inputs=str(tmp_path / "inputs.pt"))]
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    (tmp_path / "cwd").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "HF_", "TRANSFORMERS"))}
    env.update(PYTHONPATH=isolated_pythonpath(tmp_path), HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-S", "-c", CHILD, str(tmp_path / "jobs.json"), str(tmp_path / "out.pt")],
                            cwd=tmp_path / "cwd", env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"isolated load failed:\n{result.stdout}\n{result.stderr[-6000:]}"
    remote = torch.load(tmp_path / "out.pt")["base"]
    assert remote["class"] == "HfGenEncoderModel" and remote["module"].startswith("transformers_modules")
    assert torch.equal(remote["output"], local)  # the same files, loaded the same way: bit-identical


@pytest.mark.parametrize("overrides, pattern", [
    (dict(num_experts=4, num_experts_per_tok=5), r"num_experts_per_tok must be an integer between 1 and "
                                                 r"num_experts \(4\).*got 5"),
    (dict(num_experts=2, num_experts_per_tok=0), r"num_experts_per_tok .* between 1 and num_experts \(2\).*got 0"),
    (dict(num_experts=-2), r"num_experts must be 0 .* or a positive integer, got -2"),
    (dict(num_experts=4, router_z_loss_coef=-0.5), r"router_z_loss_coef must be a number >= 0, got -0.5"),
])
def test_bad_moe_keys_on_the_encoder(overrides, pattern):
    with pytest.raises(ValueError, match=pattern):
        HfGenEncoderConfig(**{**TINY_ENCODER, **overrides})


def test_bad_moe_key_through_from_pretrained_builds_nothing(tmp_path):
    build_encoder().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"num_experts_per_tok .* between 1 and num_experts \(4\).*got 6"):
        HfGenEncoderForMaskedLM.from_pretrained(tmp_path, num_experts_per_tok=6)
    config = tiny_encoder_config(**MOE)
    config.num_experts_per_tok = 9  # set after the config's own checks: the model refuses before any weight
    with pytest.raises(ValueError, match=r"num_experts_per_tok .* got 9"):
        HfGenEncoderForMaskedLM(config)
