"""Sparse mixture of experts (seed 004, "Mixture of Experts"), a feed-forward block any hfgen family can use, built
the way transformers' own MoE models are (Mixtral, Qwen2-MoE, OLMoE).

Each token's hidden state goes to the ``num_experts_per_tok`` experts its router scores highest (Shazeer et al. 2017;
Mixtral: Jiang et al. 2024): ``y = sum_{e in topk(p)} p_e / (sum_{topk} p) * E_e(x)`` with ``p = softmax(W_g x)``.
An expert has the form of the family's MLP: with ``mlp_type="gated"`` (Mixtral) ``E_e(x) = W2 (act(W1 x) * W3 x)``,
with ``mlp_type="standard"`` (BERT's GELU MLP, the encoder's default) ``E_e(x) = W2 act(W1 x)``; biases with
``mlp_bias``.

The pieces are transformers':

* the router is a module (:class:`HfGenTopKRouter`, Mixtral's ``MixtralTopKRouter``) returning ``(logits, weights,
  experts)``; its logits are recorded by transformers' ``OutputRecorder`` (``ROUTER_LOGITS_RECORDER`` in each
  family's ``_can_record_outputs``) when ``output_router_logits`` is on (config key or forward argument), never kept
  on the module;
* the experts (:class:`HfGenExperts`) hold their weights as 3D tensors in transformers' experts layout
  (``gate_up_proj [E, 2I, H]`` -- ``[E, I, H]`` for standard experts, whose first projection has no gate --
  ``down_proj [E, H, I]``, ``*_bias``) and run through transformers' experts interface
  (``@use_experts_implementation``): ``from_pretrained(..., experts_implementation="grouped_mm" | "batched_mm" |
  "eager")`` or ``model.set_experts_implementation(...)``;
* the load-balancing loss is Mixtral's ``load_balancing_loss_func`` (Switch Transformer, Fedus et al. 2022):
  ``L_aux = E * sum_e f_e * P_e`` over every MoE layer's real tokens, ``f_e`` the fraction of top-k assignments to
  expert e, ``P_e`` its mean router probability; 1.0 when perfectly balanced;
* the router z-loss is Switch Transformers' ``router_z_loss_func`` (ST-MoE, Zoph et al. 2022):
  ``L_z = mean_tokens (logsumexp_e z_e)^2`` over every MoE layer's real tokens.

With router logits on, every head with a loss (causal LM; the encoder's masked LM, pre-training, sequence and token
classification) returns ``aux_loss``, ``z_loss`` and ``router_logits``, and when labels are given adds
``router_aux_loss_coef * L_aux + router_z_loss_coef * L_z`` to its loss (:func:`moe_output`). How evenly the
experts are used -- a statistic of a whole batch, not of an example -- comes from :func:`expert_utilization`.

Checkpoints: on disk the experts keep the per-expert names of Mixtral checkpoints and of hfgen before the 3D layout
(``block_sparse_moe.gate.weight``, ``block_sparse_moe.experts.N.w1.weight`` / ``w2`` / ``w3`` and their biases).
transformers' checkpoint conversion (registered below for hfgen's model types) merges them into the 3D tensors when
loading and splits them again when saving, so Mixtral checkpoint folders load into ``HfGenDecoderForCausalLM`` and
give Mixtral's logits, and older hfgen folders load unchanged. A Mixtral config with ``sliding_window`` set is
refused: hfgen has no sliding-window attention.

Capacity: none, by design. Every token is processed by all of its top-k experts however unbalanced the routing is
("dropless", as in Mixtral and MegaBlocks); the cost of an unbalanced router is time, not quality.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import ConversionOps, MergeModulelist, WeightConverter
from transformers.integrations import use_experts_implementation
from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    MoeCausalLMOutputWithPast,
    MoeModelOutputWithPast,
)
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func
from transformers.models.switch_transformers.modeling_switch_transformers import router_z_loss_func
from transformers.utils import ModelOutput, is_torchdynamo_compiling, logging
from transformers.utils.output_capturing import OutputRecorder

logger = logging.get_logger(__name__)

# Keys a config gains with MoE, and their defaults (0 experts: the plain MLP, exactly as before).
# None means "decided by num_experts at construction" (ROUTER_DEFAULTS): output_router_logits is on when there are
# experts (the router losses join the training loss), off otherwise; a Mixtral config.json carries its own value.
MOE_DEFAULTS = dict(
    num_experts=0,
    num_experts_per_tok=2,
    router_aux_loss_coef=None,
    router_z_loss_coef=None,
    router_jitter_noise=0.0,
    output_router_logits=None,
)
# (value with experts, value without). The coefficients are 0 without experts because TRL's SFTTrainer reads a
# non-zero router_aux_loss_coef as "a mixture of experts" and then asks the model for router logits it cannot have.
ROUTER_DEFAULTS = dict(
    router_aux_loss_coef=(0.001, 0.0),  # Mixtral's default
    router_z_loss_coef=(0.001, 0.0),  # ST-MoE's default
    output_router_logits=(True, False),
)

# Output fields a mixture of experts adds. Trainer leaves them out of the predictions (``keys_to_ignore_at_inference``
# of the family configs), so ``compute_metrics`` still receives the logits alone.
MOE_OUTPUT_KEYS = ("aux_loss", "z_loss", "router_logits")

# mlp_type -> expert form: "gated" W2 (act(W1 x) * W3 x) (Mixtral), "standard" W2 act(W1 x) (BERT's MLP).
EXPERT_TYPES = ("gated", "standard")


def init_moe_config(config, kwargs: dict) -> None:
    """Pop the MoE keys from a config ``__init__``'s ``kwargs`` (defaults from :data:`MOE_DEFAULTS`) and set them
    (each value checked where it is set; how they fit the rest: :func:`validate_moe_config`, part of each family's
    ``validate_architecture``). Mixtral's ``num_local_experts`` is read as ``num_experts`` so a Mixtral
    ``config.json`` loads."""
    local = kwargs.pop("num_local_experts", None)
    values = {key: kwargs.pop(key, default) for key, default in MOE_DEFAULTS.items()}
    if local is not None and not values["num_experts"]:
        values["num_experts"] = local
    for key, (with_experts, without) in ROUTER_DEFAULTS.items():
        if values[key] is None:
            values[key] = with_experts if values["num_experts"] else without
    for key, value in values.items():
        setattr(config, key, value)
    if kwargs.get("sliding_window") is not None:  # Mixtral/Mistral key; left set, transformers' caches would slide
        raise ValueError(f"sliding_window={kwargs['sliding_window']} (sliding-window attention) is not supported by "
                         f"hfgen: every token attends to the whole context. Load with sliding_window=None only if "
                         f"the model never sees more than that many tokens.")
    kwargs.pop("sliding_window", None)


def validate_moe_config(config) -> None:
    """``ValueError`` naming the keys and their valid range, before any weight is created: how the MoE keys fit the
    rest of the config (each value of its own -- ``num_experts`` an integer >= 0, the coefficients finite and >= 0 --
    is checked where it is set: ``variants.VALUE_CHECKS``)."""
    experts = getattr(config, "num_experts", 0) or 0
    top_k = getattr(config, "num_experts_per_tok", 2)
    check_router_request(config, getattr(config, "output_router_logits", False), "output_router_logits")
    if experts == 0:
        return
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= experts:
        raise ValueError(f"num_experts_per_tok must be an integer between 1 and num_experts ({experts}): each token "
                         f"goes to that many distinct experts; got {top_k!r}.")
    if getattr(config, "mlp_type", "gated") not in EXPERT_TYPES:
        raise ValueError(f"Experts take the form of the family's MLP; mlp_type={config.mlp_type!r} has none. Valid "
                         f"choices with num_experts > 0: {', '.join(map(repr, EXPERT_TYPES))}.")


def check_router_request(config, value, name: str = "output_router_logits") -> None:
    """``output_router_logits`` (config key or forward argument): a bool (or None: the config's), True only with
    experts -- a model without them has no router whose logits it could return."""
    if value is None:
        return
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}.")
    if value and not (getattr(config, "num_experts", 0) or 0):
        raise ValueError(f"{name}=True needs a mixture of experts (num_experts > 0); this model has none "
                         f"(num_experts=0), so it has no router logits to return.")


class HfGenTopKRouter(nn.Module):
    """Mixtral's router: ``logits = W_g x``; softmax, top-k, weights renormalised over the k. Returns
    ``(logits [T, E], weights [T, k], experts [T, k])``; the logits are what ``output_router_logits`` records.

    Computed in fp32 whatever the model's dtype, with ``W_g`` kept in fp32 when loading in half precision
    (:data:`KEEP_IN_FP32`, as transformers' DeepSeek-style MoE models do; Mixtral routes in the model's dtype): the
    top-k choice is discontinuous, and bf16-rounded logits send near-tied tokens to other experts."""

    def __init__(self, config):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.num_experts = config.num_experts
        self.weight = nn.Parameter(torch.empty(config.num_experts, config.hidden_size))

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = F.linear(hidden_states.float(), self.weight.float())
        probs = F.softmax(logits, dim=-1)
        weights, experts = torch.topk(probs, self.top_k, dim=-1)
        return logits, weights / weights.sum(dim=-1, keepdim=True), experts


class _ExpertWeights(nn.Module):
    """Every expert of a layer as 3D tensors, in transformers' experts layout: ``gate_up_proj`` ``[E, 2I, H]``
    (gate rows then up rows) for gated experts, ``[E, I, H]`` (the up projection alone) for standard ones;
    ``down_proj`` ``[E, H, I]``; ``gate_up_proj_bias`` / ``down_proj_bias`` with ``mlp_bias``. The experts interface
    calls :meth:`_apply_gate` between the two projections: ``act(gate) * up``, or ``act(up)`` without a gate."""

    def __init__(self, config, intermediate_size: int | None = None):
        super().__init__()
        intermediate_size = intermediate_size or config.intermediate_size
        self.num_experts = config.num_experts
        self.gated = getattr(config, "mlp_type", "gated") == "gated"
        first = 2 * intermediate_size if self.gated else intermediate_size
        self.gate_up_proj = nn.Parameter(torch.empty(config.num_experts, first, config.hidden_size))
        self.down_proj = nn.Parameter(torch.empty(config.num_experts, config.hidden_size, intermediate_size))
        if getattr(config, "mlp_bias", False):
            self.gate_up_proj_bias = nn.Parameter(torch.empty(config.num_experts, first))
            self.down_proj_bias = nn.Parameter(torch.empty(config.num_experts, config.hidden_size))
        self.act_fn = ACT2FN[config.hidden_act]

    def _apply_gate(self, gate_up_out: torch.Tensor) -> torch.Tensor:
        if not self.gated:
            return self.act_fn(gate_up_out)
        gate, up = gate_up_out.chunk(2, dim=-1)
        return self.act_fn(gate) * up

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        """The ``"eager"`` implementation: the ``T x k`` assignments sorted by expert once, then one dense matmul
        per expert over its contiguous slice of tokens (experts that receive none cost nothing).

        Under ``torch.compile`` the slices' sizes (a ``bincount`` read back to Python) would depend on the data and
        break the graph (``fullgraph=True`` raises), as transformers' own eager experts (Mixtral's ``nonzero``) do;
        while dynamo traces, the step goes through transformers' ``"grouped_mm"`` experts implementation instead,
        whose CPU fallback is a custom op the graph keeps whole. Same routing formula, same numbers."""
        if is_torchdynamo_compiling():
            return ALL_EXPERTS_FUNCTIONS["grouped_mm"](self, hidden_states, top_k_index, top_k_weights)
        top_k = top_k_index.shape[-1]
        flat_experts = top_k_index.reshape(-1)
        order = torch.argsort(flat_experts, stable=True)
        token_index = order // top_k
        counts = torch.bincount(flat_experts, minlength=self.num_experts).tolist()  # one device sync
        grouped = hidden_states.index_select(0, token_index)  # (backward: an index_add, not an index_put)
        bias = getattr(self, "gate_up_proj_bias", None)
        outputs, start = [], 0
        for expert, count in enumerate(counts):
            if count:
                rows = grouped[start:start + count]
                up = F.linear(rows, self.gate_up_proj[expert], None if bias is None else bias[expert])
                down_bias = None if bias is None else self.down_proj_bias[expert]
                outputs.append(F.linear(self._apply_gate(up), self.down_proj[expert], down_bias))
                start += count
        routed = torch.cat(outputs) * top_k_weights.reshape(-1)[order, None].to(hidden_states.dtype)
        return torch.zeros_like(hidden_states).index_add_(0, token_index, routed.to(hidden_states.dtype))


# use_experts_implementation fixes has_bias per class: one class per bias setting, the same module otherwise.
@use_experts_implementation
class HfGenExperts(_ExpertWeights):
    """The experts of a layer without biases (:class:`_ExpertWeights`), dispatched by ``experts_implementation``."""


@use_experts_implementation(has_bias=True)
class HfGenExpertsWithBias(_ExpertWeights):
    """The experts of a layer with biases (``mlp_bias=True``), dispatched by ``experts_implementation``."""


class HfGenSparseMoeBlock(nn.Module):
    """Top-k routed experts in place of a layer's MLP (Mixtral's ``block_sparse_moe``): ``gate``
    (:class:`HfGenTopKRouter`) then ``experts`` (:class:`HfGenExperts`). Returns the hidden states alone, so the
    layer plugs it in where an MLP was; the router's logits are recorded from the router itself."""

    def __init__(self, config, intermediate_size: int | None = None):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.jitter_noise = config.router_jitter_noise
        self.gate = HfGenTopKRouter(config)
        experts_class = HfGenExpertsWithBias if getattr(config, "mlp_bias", False) else HfGenExperts
        self.experts = experts_class(config, intermediate_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        shape = hidden_states.shape
        x = hidden_states.reshape(-1, shape[-1])
        if self.training and self.jitter_noise > 0:
            x = x * torch.empty_like(x).uniform_(1.0 - self.jitter_noise, 1.0 + self.jitter_noise)
        _, weights, experts = self.gate(x)
        return self.experts(x, experts, weights).reshape(shape)


# For each family's _can_record_outputs: the router's first output, its logits.
ROUTER_LOGITS_RECORDER = OutputRecorder(HfGenTopKRouter, index=0)
# For each family's _keep_in_fp32_modules_strict: the routers' weights stay fp32 under dtype=bf16 / fp16.
KEEP_IN_FP32 = ["block_sparse_moe.gate"]


def build_feed_forward(config, dense_factory) -> nn.Module:
    """The feed-forward block of a layer: ``HfGenSparseMoeBlock`` when ``config.num_experts > 0``, otherwise
    ``dense_factory()`` (the family's own MLP, untouched). The MoE keys were checked with the others before the model
    built its layers (its config's ``validate_architecture``, also after ``from_pretrained(path, key=value)``)."""
    if getattr(config, "num_experts", 0):
        return HfGenSparseMoeBlock(config)
    return dense_factory()


def init_moe_weights(module: nn.Module, std: float) -> None:
    """``_init_weights`` for the MoE modules (nn.Linear's own init does not reach 3D parameters): weights
    ``N(0, std)``, biases 0, as the experts' ``nn.Linear`` layers were initialised before the 3D layout."""
    if isinstance(module, HfGenTopKRouter):
        init.normal_(module.weight, mean=0.0, std=std)
    elif isinstance(module, _ExpertWeights):
        init.normal_(module.gate_up_proj, mean=0.0, std=std)
        init.normal_(module.down_proj, mean=0.0, std=std)
        if hasattr(module, "gate_up_proj_bias"):
            init.zeros_(module.gate_up_proj_bias)
            init.zeros_(module.down_proj_bias)


# ------------------------------------------------------------------------------------------- checkpoint layout


class MergeExpertProjections(ConversionOps):
    """Loading: the per-expert ``w1`` (and, for gated experts, ``w3``) tensors of a checkpoint stacked over experts
    and concatenated (gate rows, then up rows) into ``gate_up_proj`` / ``gate_up_proj_bias``. Unlike transformers'
    ``MergeModulelist`` + ``Concatenate`` (Mixtral's), it accepts standard experts, which have no ``w3``."""

    @torch.no_grad()
    def convert(self, input_dict: dict, source_patterns: list[str], target_patterns: list[str],
                **kwargs) -> dict[str, torch.Tensor]:
        parts = []
        for pattern in source_patterns:  # w1 before w3: the gate rows come first
            if pattern in input_dict:
                tensors = input_dict.pop(pattern)
                parts.append(torch.stack(tensors) if isinstance(tensors, list) else tensors)
        return {target_patterns[0]: torch.cat(parts, dim=1)}

    @property
    def reverse_op(self) -> ConversionOps:
        return SplitExpertProjections()


class SplitExpertProjections(ConversionOps):
    """Saving: ``gate_up_proj`` split back into per-expert ``w1`` and ``w3`` (gated experts) or ``w1`` alone."""

    @torch.no_grad()
    def convert(self, input_dict: dict, source_patterns: list[str], target_patterns: list[str],
                config=None, **kwargs) -> dict[str, torch.Tensor]:
        tensor = next(iter(input_dict.values()))
        tensor = tensor[0] if isinstance(tensor, list) else tensor
        gated = getattr(config.get_text_config(), "mlp_type", "gated") == "gated"
        halves = tensor.chunk(2, dim=1) if gated else (tensor,)
        return {pattern.replace("*", str(expert)): half[expert].contiguous()
                for pattern, half in zip(target_patterns, halves) for expert in range(tensor.shape[0])}

    @property
    def reverse_op(self) -> ConversionOps:
        return MergeExpertProjections()


def checkpoint_conversions() -> list[WeightConverter]:
    """Per-expert checkpoint tensors <-> the 3D experts layout (transformers' checkpoint conversion; loading
    applies them, ``save_pretrained`` reverses them). Biases last: in reverse (saving) their converters then come
    first, so ``...gate_up_proj_bias`` is not taken for ``...gate_up_proj``."""
    return [
        WeightConverter([".experts.*.w1.weight", ".experts.*.w3.weight"], ".experts.gate_up_proj",
                        [MergeExpertProjections()]),
        WeightConverter(".experts.*.w2.weight", ".experts.down_proj", [MergeModulelist(dim=0)]),
        WeightConverter([".experts.*.w1.bias", ".experts.*.w3.bias"], ".experts.gate_up_proj_bias",
                        [MergeExpertProjections()]),
        WeightConverter(".experts.*.w2.bias", ".experts.down_proj_bias", [MergeModulelist(dim=0)]),
    ]


# The hfgen model types whose layers can hold a mixture of experts. (transformers applies a registered conversion
# to code outside its package only when registered like this; the patterns need ".experts.", which no dense
# parameter name contains.)
MOE_MODEL_TYPES = ("hfgen_decoder", "hfgen_encoder", "hfgen_retnet", "hfgen_vlm", "hfgen_gato")
for _model_type in MOE_MODEL_TYPES:
    # overwrite: the same entry again when this file is imported a second time (as remote code, say)
    register_checkpoint_conversion_mapping(_model_type, checkpoint_conversions(), overwrite=True)


# ----------------------------------------------------------------------------------------------------- outputs


@dataclass
class HfGenMoeCausalLMOutputWithPast(MoeCausalLMOutputWithPast):
    """transformers' ``MoeCausalLMOutputWithPast`` (``aux_loss``: Mixtral's load-balancing loss; ``router_logits``:
    one ``[tokens, num_experts]`` tensor per MoE layer) plus ``z_loss``, the router z-loss of all MoE layers."""

    z_loss: torch.FloatTensor | None = None


_ROUTER_FIELDS = [("aux_loss", torch.FloatTensor | None, None), ("z_loss", torch.FloatTensor | None, None),
                  ("router_logits", tuple[torch.FloatTensor, ...] | None, None)]
_BASE_OUTPUTS = {BaseModelOutputWithPast: MoeModelOutputWithPast}
_HEAD_OUTPUTS: dict[type, type] = {CausalLMOutputWithPast: HfGenMoeCausalLMOutputWithPast}


def _with_fields(plain: type[ModelOutput], fields: list) -> type[ModelOutput]:
    """``plain`` with ``fields`` appended, named ``HfGenMoe<plain>`` (a ModelOutput dataclass like ``plain``)."""
    output_class = dataclasses.make_dataclass(f"HfGenMoe{plain.__name__}", fields, bases=(plain,))
    output_class.__module__ = __name__
    return output_class


def base_output_class(config, plain: type[ModelOutput]) -> type[ModelOutput]:
    """A base model's output class: ``plain`` without experts; with them, one with a ``router_logits`` field (where
    ``output_router_logits`` puts the recorded logits): transformers' ``MoeModelOutputWithPast`` for
    ``BaseModelOutputWithPast``, else ``plain`` plus that field."""
    if not getattr(config, "num_experts", 0):
        return plain
    if plain not in _BASE_OUTPUTS:
        _BASE_OUTPUTS[plain] = _with_fields(plain, _ROUTER_FIELDS[2:])
    return _BASE_OUTPUTS[plain]


def head_output_class(plain: type[ModelOutput]) -> type[ModelOutput]:
    """``plain`` (a head's output class) with ``aux_loss``, ``z_loss`` and ``router_logits`` after its own fields,
    so ``output[0]`` and ``to_tuple()`` start as without experts; for ``CausalLMOutputWithPast``
    :class:`HfGenMoeCausalLMOutputWithPast` (Mixtral's field order)."""
    if plain not in _HEAD_OUTPUTS:
        _HEAD_OUTPUTS[plain] = _with_fields(plain, _ROUTER_FIELDS)
    return _HEAD_OUTPUTS[plain]


def _new_token_mask(attention_mask: torch.Tensor | None, router_logits: tuple[torch.Tensor, ...]):
    """The 2D mask's columns of the tokens the routers saw (with a cache, the last ones), or None."""
    if attention_mask is None or attention_mask.dim() != 2:
        return None
    length = router_logits[0].shape[0] // attention_mask.shape[0]
    return attention_mask[:, -length:]


def router_z_loss(router_logits: tuple[torch.Tensor, ...], attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Switch Transformers' ``router_z_loss_func`` over every layer's real tokens: ``mean (logsumexp_e z_e)^2``."""
    mask = _new_token_mask(attention_mask, router_logits)
    device = router_logits[0].device
    logits = torch.cat([layer.to(device) for layer in router_logits]).float()
    if mask is not None:
        logits = logits[mask.reshape(-1).bool().to(device).repeat(len(router_logits))]
    return router_z_loss_func(logits[None])


def moe_output(config, outputs: ModelOutput, attention_mask: torch.Tensor | None, plain: type[ModelOutput],
               **fields) -> ModelOutput:
    """A head's output. Without router logits in the base model's ``outputs`` (no experts, or
    ``output_router_logits`` off): ``plain(**fields)``. With them, :func:`head_output_class` of ``plain`` with
    ``aux_loss`` (Mixtral's ``load_balancing_loss_func``), ``z_loss`` (:func:`router_z_loss`), both over real
    tokens only (``attention_mask``), and ``router_logits``; a given ``loss`` gains
    ``router_aux_loss_coef * aux_loss + router_z_loss_coef * z_loss``."""
    router_logits = getattr(outputs, "router_logits", None)
    if not router_logits:
        return plain(**fields)
    mask = _new_token_mask(attention_mask, router_logits)
    aux_loss = load_balancing_loss_func(router_logits, config.num_experts, config.num_experts_per_tok, mask)
    z_loss = router_z_loss(router_logits, attention_mask)
    if fields.get("loss") is not None:
        loss = fields["loss"]
        if loss.requires_grad and not aux_loss.requires_grad:
            # Reentrant checkpointing runs the layers without autograd; only their hidden states get gradients.
            logger.warning_once("The router losses carry no gradient: the router logits were recorded inside "
                                "layers run under reentrant gradient checkpointing. Train the router with "
                                "gradient_checkpointing_kwargs={'use_reentrant': False}.")
        fields["loss"] = (loss + config.router_aux_loss_coef * aux_loss.to(loss.device)
                          + config.router_z_loss_coef * z_loss.to(loss.device))
    return head_output_class(plain)(aux_loss=aux_loss, z_loss=z_loss, router_logits=router_logits, **fields)


def expert_utilization(router_logits: tuple[torch.Tensor, ...], top_k: int,
                       attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``[layers, num_experts]``: the share of each layer's top-k assignments (real tokens only) that went to each
    expert -- rows sum to 1, ``1 / num_experts`` everywhere when perfectly balanced. A statistic of the whole batch
    for logging (``output.router_logits`` with ``output_router_logits=True``), so it is not a model output."""
    mask = _new_token_mask(attention_mask, router_logits)
    rows = []
    for logits in router_logits:
        chosen = torch.topk(logits.float(), top_k, dim=-1).indices  # softmax keeps the order: top-k of the logits
        counts = F.one_hot(chosen, logits.shape[-1]).sum(1).float()  # [T, E]
        if mask is not None:
            counts = counts * mask.reshape(-1, 1).to(counts)
        counts = counts.sum(0)
        rows.append(counts / counts.sum().clamp(min=1))
    return torch.stack(rows)
