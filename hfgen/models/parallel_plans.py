"""Tensor- and pipeline-parallel plans of the hfgen families, in transformers' format (``base_model_tp_plan``,
``base_model_pp_plan`` of a config, as ``LlamaConfig`` declares them): module name patterns relative to the base
model, each with a parallel style of ``transformers.integrations.tensor_parallel.ALL_PARALLEL_STYLES``.

Heads are split the Llama way: query/key/value projections column-wise (each device holds whole heads), the output
projection row-wise; the MLP's input projections column-wise, its output projection row-wise. That split is exact
only where attention needs nothing per head beyond these projections. Variants with per-head parameters or biases
that would have to be split with the heads (general and additive scoring, the attention gate, relative-bias, ALiBi
and disentangled positions) and mixtures of experts get no plan (``None``): ``from_pretrained(tp_plan="auto")``
then refuses them instead of sharding them wrongly.
"""

from __future__ import annotations

from .positions import POSITION_TABLE
from .scoring import SCORING_TABLE, no_parameters

# Pipeline stages of a decoder-only base model (Llama's plan, same module names).
DECODER_PP_PLAN = {
    "embed_tokens": (["input_ids"], ["inputs_embeds"]),
    "layers": (["hidden_states", "attention_mask"], ["hidden_states"]),
    "norm": (["hidden_states"], ["hidden_states"]),
}
ENCODER_PP_PLAN = {
    "embeddings": (["input_ids"], ["hidden_states"]),
    "encoder": (["hidden_states", "attention_mask"], ["hidden_states"]),
}
SEQ2SEQ_PP_PLAN = {
    "shared": (["input_ids"], ["inputs_embeds"]),
    "encoder": (["input_ids", "attention_mask"], ["last_hidden_state"]),
    "decoder": (["input_ids", "encoder_hidden_states"], ["last_hidden_state"]),
}


def supports_tensor_parallel(config) -> bool:
    """Whether the Llama-style head split computes this variant exactly (see the module docstring)."""
    # A scoring with parameters of its own (general, additive) and a position kind with a score bias (relative
    # bias, ALiBi, disentangled) hold something per head that the split would have to shard with the heads.
    return (SCORING_TABLE[config.attention_scoring].add_parameters is no_parameters and not config.attention_gate
            and POSITION_TABLE[config.position_embedding].bias is None and not getattr(config, "num_experts", 0))


def _block_plan(config, prefix: str, attention: dict[str, str], mlp: dict[str, str]) -> dict[str, str]:
    plan = {f"{prefix}.{name}": style for name, style in attention.items()}
    plan.update({f"{prefix}.{name}": style for name, style in mlp.items()
                 if config.mlp_type == "gated" or "gate" not in name})
    return plan


LLAMA_ATTENTION = {"q_proj": "colwise", "k_proj": "colwise", "v_proj": "colwise", "o_proj": "rowwise"}
LLAMA_MLP = {"mlp.gate_proj": "colwise", "mlp.up_proj": "colwise", "mlp.down_proj": "rowwise"}


def decoder_tp_plan(config) -> dict[str, str] | None:
    """Llama's plan, name for name (``layers.*.self_attn.q_proj``, ...)."""
    if not supports_tensor_parallel(config):
        return None
    attention = {f"self_attn.{k}": v for k, v in LLAMA_ATTENTION.items()}
    return _block_plan(config, "layers.*", attention, LLAMA_MLP)


def encoder_tp_plan(config) -> dict[str, str] | None:
    """BERT's names: ``encoder.layer.*.attention.self.query``, ..."""
    if not supports_tensor_parallel(config):
        return None
    attention = {"attention.self.query": "colwise", "attention.self.key": "colwise",
                 "attention.self.value": "colwise", "attention.output.dense": "rowwise"}
    mlp = {"intermediate.gate_dense": "colwise", "intermediate.dense": "colwise", "output.dense": "rowwise"}
    return _block_plan(config, "encoder.layer.*", attention, mlp)


def seq2seq_tp_plan(config) -> dict[str, str] | None:
    """Self-attention of both stacks and the decoder's cross-attention, split like Llama's."""
    if not supports_tensor_parallel(config):
        return None
    plan = {}
    for stack, blocks in (("encoder", ("self_attn",)), ("decoder", ("self_attn", "cross_attn"))):
        attention = {f"{block}.{k}": v for block in blocks for k, v in LLAMA_ATTENTION.items()}
        plan.update(_block_plan(config, f"{stack}.layers.*", attention, LLAMA_MLP))
    return plan
