"""Sparse mixture of experts (seed 004, "Mixture of Experts"), a feed-forward block any hfgen family can use.

Each token's hidden state goes to the ``num_experts_per_tok`` experts its router scores highest (Shazeer et al. 2017;
Mixtral: Jiang et al. 2024): ``y = sum_{e in topk(p)} p_e / (sum_{topk} p) * E_e(x)`` with ``p = softmax(W_g x)``.
An expert has the form of the family's MLP: with ``mlp_type="gated"`` (Mixtral) ``E_e(x) = w2(act(w1 x) * w3 x)``,
with ``mlp_type="standard"`` (BERT's GELU MLP, the encoder's default) ``E_e(x) = w2(act(w1 x))``; biases with
``mlp_bias``.

Parameter names are those of Mixtral checkpoints as they lie on disk and on the Hub
(``block_sparse_moe.gate.weight``, ``block_sparse_moe.experts.N.w1.weight`` ...), so a Mixtral checkpoint folder loads
into ``HfGenDecoderForCausalLM`` (its ``num_local_experts`` read as ``num_experts``) and gives Mixtral's logits. A
Mixtral config with ``sliding_window`` set is refused: hfgen has no sliding-window attention.

Capacity: none, by design. Every token is processed by all of its top-k experts however unbalanced the routing is
("dropless", as in Mixtral and MegaBlocks): no token is ever dropped, silently or otherwise, and the cost of an
unbalanced router is time, not quality. Balance is encouraged by the losses below and can be watched through
``expert_utilization``.

Dispatch: the ``tokens x k`` assignments are sorted by expert once, so each expert runs one dense matmul over the
contiguous slice of tokens routed to it; experts that receive no token cost nothing. (Not a dense loop that runs
every expert on every token.) A single token (decoding one sequence) goes straight to its k experts. The losses and
statistics of all layers are computed together in a few batched operations, since they run at every decoding step.

Losses, both computed over real tokens only (``attention_mask``):

* load balancing (Switch Transformer, Fedus et al. 2022, as Mixtral computes it):
  ``L_aux = E * sum_e f_e * P_e``, ``f_e`` the fraction of the top-k assignments that go to expert e (averaged over
  the k slots), ``P_e`` the mean router probability of expert e; 1.0 when perfectly balanced.
* router z-loss (ST-MoE, Zoph et al. 2022): ``L_z = mean_tokens (logsumexp_e z_e)^2``, keeps router logits small.

Every head with a loss (causal LM; the encoder's masked LM, pre-training, sequence and token classification) adds
``router_aux_loss_coef * L_aux + router_z_loss_coef * L_z`` to its own loss and reports both, the router logits and
the per-layer expert utilisation in its output (:func:`moe_output`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    CausalLMOutputWithPast,
    MaskedLMOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from transformers.utils import ModelOutput

# Keys a config gains with MoE, and their defaults (0 experts: the plain MLP, exactly as before).
MOE_DEFAULTS = dict(
    num_experts=0,
    num_experts_per_tok=2,
    router_aux_loss_coef=0.001,  # Mixtral's default
    router_z_loss_coef=0.001,  # ST-MoE's default
    router_jitter_noise=0.0,
)


# Output fields a mixture of experts adds. Trainer leaves them out of the predictions (``keys_to_ignore_at_inference``
# of the family configs), so ``compute_metrics`` still receives the logits alone.
MOE_OUTPUT_KEYS = ("aux_loss", "z_loss", "router_logits", "expert_utilization")

# mlp_type -> expert form: "gated" w2(act(w1 x) * w3 x) (Mixtral), "standard" w2(act(w1 x)) (BERT's MLP).
EXPERT_TYPES = ("gated", "standard")


def init_moe_config(config, kwargs: dict) -> None:
    """Pop the MoE keys from a config ``__init__``'s ``kwargs`` (defaults from :data:`MOE_DEFAULTS`), set and check
    them. Mixtral's ``num_local_experts`` is read as ``num_experts`` so a Mixtral ``config.json`` loads."""
    local = kwargs.pop("num_local_experts", None)
    for key, default in MOE_DEFAULTS.items():
        setattr(config, key, kwargs.pop(key, default))
    if local is not None and not config.num_experts:
        config.num_experts = local
    kwargs.pop("output_router_logits", None)  # Mixtral key: hfgen always reports the router outputs
    if kwargs.get("sliding_window") is not None:  # Mixtral/Mistral key; left set, transformers' caches would slide
        raise ValueError(f"sliding_window={kwargs['sliding_window']} (sliding-window attention) is not supported by "
                         f"hfgen: every token attends to the whole context. Load with sliding_window=None only if "
                         f"the model never sees more than that many tokens.")
    kwargs.pop("sliding_window", None)
    validate_moe_config(config)


def validate_moe_config(config) -> None:
    """``ValueError`` naming the keys and their valid range, before any weight is created: how the MoE keys fit the
    rest of the config (each value of its own -- ``num_experts`` an integer >= 0, the coefficients finite and >= 0 --
    is checked where it is set: ``variants.VALUE_CHECKS``)."""
    experts = getattr(config, "num_experts", 0) or 0
    top_k = getattr(config, "num_experts_per_tok", 2)
    if experts == 0:
        return
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= experts:
        raise ValueError(f"num_experts_per_tok must be an integer between 1 and num_experts ({experts}): each token "
                         f"goes to that many distinct experts; got {top_k!r}.")
    if getattr(config, "mlp_type", "gated") not in EXPERT_TYPES:
        raise ValueError(f"Experts take the form of the family's MLP; mlp_type={config.mlp_type!r} has none. Valid "
                         f"choices with num_experts > 0: {', '.join(map(repr, EXPERT_TYPES))}.")


class HfGenExpert(nn.Module):
    """One expert, an MLP with Mixtral's names: ``w2(act(w1 x) * w3 x)`` (``mlp_type="gated"``: ``w1`` gate, ``w3``
    up, ``w2`` down) or ``w2(act(w1 x))`` (``"standard"``: no ``w3``); biases when ``config.mlp_bias``."""

    def __init__(self, config, intermediate_size: int | None = None):
        super().__init__()
        intermediate_size = intermediate_size or config.intermediate_size
        bias = bool(getattr(config, "mlp_bias", False))
        self.gated = getattr(config, "mlp_type", "gated") == "gated"
        self.w1 = nn.Linear(config.hidden_size, intermediate_size, bias=bias)
        self.w2 = nn.Linear(intermediate_size, config.hidden_size, bias=bias)
        if self.gated:
            self.w3 = nn.Linear(config.hidden_size, intermediate_size, bias=bias)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            return self.w2(self.act_fn(self.w1(x)) * self.w3(x))
        return self.w2(self.act_fn(self.w1(x)))


class HfGenSparseMoeBlock(nn.Module):
    """Top-k routed experts replacing the MLP of a layer (Mixtral's ``block_sparse_moe``).

    After each forward, ``router_logits`` ``[tokens, num_experts]`` and ``selected_experts`` ``[tokens, k]`` of that
    call are kept on the module for the losses and statistics (:func:`collect_moe_outputs`); the layer's return
    value stays a plain hidden-state tensor so the layer plugs in where an MLP was.
    """

    def __init__(self, config, intermediate_size: int | None = None):
        super().__init__()
        self.num_experts = config.num_experts
        self.top_k = config.num_experts_per_tok
        self.jitter_noise = config.router_jitter_noise
        self.gate = nn.Linear(config.hidden_size, self.num_experts, bias=False)
        self.experts = nn.ModuleList([HfGenExpert(config, intermediate_size) for _ in range(self.num_experts)])
        self.router_logits: torch.Tensor | None = None
        self.selected_experts: torch.Tensor | None = None

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(logits [T, E], weights [T, k], experts [T, k])``: softmax in fp32, top-k, renormalised over the k."""
        logits = self.gate(x)
        probs = F.softmax(logits.float(), dim=-1)
        weights, experts = torch.topk(probs, self.top_k, dim=-1)
        return logits, weights / weights.sum(dim=-1, keepdim=True), experts

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        shape = hidden_states.shape
        x = hidden_states.reshape(-1, shape[-1])
        if self.training and self.jitter_noise > 0:
            x = x * torch.empty_like(x).uniform_(1.0 - self.jitter_noise, 1.0 + self.jitter_noise)
        logits, weights, experts = self.route(x)
        self.router_logits, self.selected_experts = logits, experts
        if x.shape[0] == 1:  # one token (decoding a single sequence): its k experts directly, nothing to group
            out = sum(self.experts[e](x) * weights[:, i:i + 1] for i, e in enumerate(experts[0].tolist()))
            return out.to(hidden_states.dtype).reshape(shape)

        # Group the T*k (token, expert) assignments by expert: one sort, then contiguous slices.
        flat_experts = experts.reshape(-1)
        order = torch.argsort(flat_experts, stable=True)
        token_index = order // self.top_k
        counts = torch.bincount(flat_experts, minlength=self.num_experts).tolist()  # one device sync
        grouped = x.index_select(0, token_index)  # (index_select: its backward is an index_add, not an index_put)
        outputs, start = [], 0
        for expert, count in zip(self.experts, counts):
            if count:
                outputs.append(expert(grouped[start:start + count]))
                start += count
        routed = torch.cat(outputs) * weights.reshape(-1)[order, None]
        out = torch.zeros(x.shape, dtype=routed.dtype, device=x.device).index_add_(0, token_index, routed)
        return out.to(hidden_states.dtype).reshape(shape)


def build_feed_forward(config, dense_factory) -> nn.Module:
    """The feed-forward block of a layer: ``HfGenSparseMoeBlock`` when ``config.num_experts > 0``, otherwise
    ``dense_factory()`` (the family's own MLP, untouched). Checks the MoE keys again first: ``from_pretrained(path,
    num_experts_per_tok=...)`` sets them after the config's own checks ran."""
    validate_moe_config(config)
    if getattr(config, "num_experts", 0):
        return HfGenSparseMoeBlock(config)
    return dense_factory()


@dataclass
class HfGenMoeCausalLMOutputWithPast(CausalLMOutputWithPast):
    """``CausalLMOutputWithPast`` plus the router outputs.

    aux_loss: load-balancing loss ``E * sum_e f_e P_e`` over all MoE layers' routing together (Mixtral's
        definition, so it equals ``MixtralForCausalLM``'s ``aux_loss``).
    z_loss: router z-loss ``mean (logsumexp z)^2`` over all MoE layers' real tokens.
    router_logits: one ``[tokens, num_experts]`` tensor per MoE layer.
    expert_utilization: ``[moe_layers, num_experts]``, the fraction of each layer's top-k assignments (real tokens
        only) that went to each expert; rows sum to 1, ``1 / num_experts`` everywhere when perfectly balanced.
    """

    aux_loss: torch.FloatTensor | None = None
    z_loss: torch.FloatTensor | None = None
    router_logits: tuple[torch.FloatTensor, ...] | None = None
    expert_utilization: torch.FloatTensor | None = None


def _token_weights(attention_mask: torch.Tensor | None, tokens: int, device) -> torch.Tensor | None:
    """Per routed token, 1 for real tokens and 0 for padding (the last ``length`` mask columns: the new tokens)."""
    if attention_mask is None or attention_mask.dim() != 2:
        return None
    batch = attention_mask.shape[0]
    length = tokens // batch
    return attention_mask[:, -length:].reshape(-1).to(device=device, dtype=torch.float32)


def load_balancing_loss(router_logits: list[torch.Tensor], top_k: int,
                        token_weights: torch.Tensor | None = None,
                        selected_experts: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Switch-Transformer auxiliary loss over the routing decisions of every layer together, as Mixtral computes
    it: ``E * sum_e f_e * P_e`` with ``f_e`` = (top-k assignments to e) / tokens and ``P_e`` the mean router
    probability of e, both over all layers' real tokens. ``selected_experts``: the blocks' own top-k choices (the
    top-k of ``router_logits`` when absent)."""
    return _routing_statistics(router_logits, top_k, token_weights, selected_experts)[0]


def router_z_loss(router_logits: list[torch.Tensor], token_weights: torch.Tensor | None = None) -> torch.Tensor:
    """ST-MoE router z-loss: the mean over every layer's real tokens of ``(logsumexp_e z_e)^2``."""
    return _routing_statistics(router_logits, 1, token_weights)[1]


def _routing_statistics(router_logits: list[torch.Tensor], top_k: int, token_weights: torch.Tensor | None,
                        selected_experts: list[torch.Tensor] | None = None):
    """``(aux_loss, z_loss, utilisation [L, E])`` of every layer at once: a handful of batched operations per
    forward rather than a dozen per layer (they run at every decoding step)."""
    device = router_logits[0].device
    logits = torch.stack([z.to(device) for z in router_logits]).float()  # [L, T, E]
    layers, tokens, num_experts = logits.shape
    probs = F.softmax(logits, dim=-1)
    if selected_experts is None:
        chosen = torch.topk(probs, top_k, dim=-1).indices
    else:
        chosen = torch.stack([e.to(device) for e in selected_experts])  # [L, T, k]
    assigned = F.one_hot(chosen, num_experts).sum(2)  # [L, T, E]: top-k slots of each token per expert
    squared = torch.logsumexp(logits, dim=-1) ** 2  # [L, T]
    if token_weights is None:
        counts = assigned.sum(1).float()  # [L, E]
        total = float(layers * tokens)
        prob_sum = probs.sum((0, 1))
        z_loss = squared.mean()
    else:
        weights = token_weights.to(device)
        counts = (assigned * weights[None, :, None]).sum(1)
        total = (weights.sum() * layers).clamp(min=1)
        prob_sum = (probs * weights[None, :, None]).sum((0, 1))
        z_loss = (squared * weights).sum() / total
    aux_loss = num_experts * (counts.sum(0) / total * prob_sum / total).sum()
    utilization = counts / counts.sum(-1, keepdim=True).clamp(min=1)
    return aux_loss, z_loss, utilization


@dataclass
class MoeStats:
    aux_loss: torch.Tensor
    z_loss: torch.Tensor
    router_logits: tuple[torch.Tensor, ...]
    expert_utilization: torch.Tensor


def moe_blocks(model: nn.Module) -> list[HfGenSparseMoeBlock]:
    """The ``HfGenSparseMoeBlock`` modules of ``model`` in layer order. Found once and kept on the model (a walk over
    every module costs about a millisecond, at every decoding step); found again when one of them did not run."""
    blocks = model.__dict__.get("_hfgen_moe_blocks")
    if blocks is None or any(block.router_logits is None for block in blocks):
        blocks = [m for m in model.modules() if isinstance(m, HfGenSparseMoeBlock)]
        model.__dict__["_hfgen_moe_blocks"] = blocks
    return blocks


def collect_moe_outputs(model: nn.Module, attention_mask: torch.Tensor | None = None) -> MoeStats | None:
    """Losses and statistics of the last forward of every ``HfGenSparseMoeBlock`` in ``model`` (in layer order), or
    ``None`` when the model has none."""
    blocks = [block for block in moe_blocks(model) if block.router_logits is not None]
    if not blocks:
        return None
    logits = [block.router_logits for block in blocks]
    weights = _token_weights(attention_mask, logits[0].shape[0], logits[0].device)
    aux_loss, z_loss, utilization = _routing_statistics(logits, blocks[0].top_k, weights,
                                                        [block.selected_experts for block in blocks])
    return MoeStats(aux_loss=aux_loss, z_loss=z_loss, router_logits=tuple(logits),
                    expert_utilization=utilization.detach())


def add_router_losses(config, loss: torch.Tensor, stats: MoeStats) -> torch.Tensor:
    """``loss + router_aux_loss_coef * L_aux + router_z_loss_coef * L_z``."""
    return (loss + config.router_aux_loss_coef * stats.aux_loss.to(loss.device)
            + config.router_z_loss_coef * stats.z_loss.to(loss.device))


def moe_output(config, source: nn.Module | ModelOutput, attention_mask, output_class: type[ModelOutput],
               moe_output_class: type[ModelOutput], **fields) -> ModelOutput:
    """A head's output: ``output_class(**fields)`` without MoE; with MoE (``config.num_experts > 0``)
    ``moe_output_class`` -- the same fields plus ``aux_loss``, ``z_loss``, ``router_logits`` and
    ``expert_utilization`` -- whose ``loss`` (when there is one) includes the weighted router losses.

    ``source``: the module whose MoE blocks ran the last forward (statistics collected from them), or the output
    of an inner model that already carries them (a head reuses its base model's, computed once)."""
    if not getattr(config, "num_experts", 0):
        return output_class(**fields)
    if isinstance(source, nn.Module):
        stats = collect_moe_outputs(source, attention_mask)
    else:
        stats = MoeStats(source.aux_loss, source.z_loss, source.router_logits, source.expert_utilization) \
            if getattr(source, "aux_loss", None) is not None else None
    if stats is None:
        return output_class(**fields)
    if fields.get("loss") is not None:
        fields["loss"] = add_router_losses(config, fields["loss"], stats)
    return moe_output_class(aux_loss=stats.aux_loss, z_loss=stats.z_loss, router_logits=stats.router_logits,
                            expert_utilization=stats.expert_utilization, **fields)


def moe_causal_lm_output(config, model: nn.Module, attention_mask, loss, **fields) -> CausalLMOutputWithPast:
    """The head's output: plain ``CausalLMOutputWithPast`` without MoE; with MoE, ``HfGenMoeCausalLMOutputWithPast``
    whose ``loss`` (when labels were given) includes the weighted router losses."""
    return moe_output(config, model, attention_mask, CausalLMOutputWithPast, HfGenMoeCausalLMOutputWithPast,
                      loss=loss, **fields)


# The encoder's outputs with the router fields (meaning: HfGenMoeCausalLMOutputWithPast). The fields come after the
# plain class's own, so ``output[0]`` and ``to_tuple()`` start as they do without experts.
@dataclass
class HfGenMoeModelOutputWithPooling(BaseModelOutputWithPooling):
    """``BaseModelOutputWithPooling`` plus the router outputs (no loss: ``aux_loss`` and ``z_loss`` unweighted)."""

    aux_loss: torch.FloatTensor | None = None
    z_loss: torch.FloatTensor | None = None
    router_logits: tuple[torch.FloatTensor, ...] | None = None
    expert_utilization: torch.FloatTensor | None = None


@dataclass
class HfGenMoeMaskedLMOutput(MaskedLMOutput):
    """``MaskedLMOutput`` plus the router outputs; ``loss`` = MLM loss + the weighted router losses."""

    aux_loss: torch.FloatTensor | None = None
    z_loss: torch.FloatTensor | None = None
    router_logits: tuple[torch.FloatTensor, ...] | None = None
    expert_utilization: torch.FloatTensor | None = None


@dataclass
class HfGenMoeSequenceClassifierOutput(SequenceClassifierOutput):
    """``SequenceClassifierOutput`` plus the router outputs; ``loss`` includes the weighted router losses."""

    aux_loss: torch.FloatTensor | None = None
    z_loss: torch.FloatTensor | None = None
    router_logits: tuple[torch.FloatTensor, ...] | None = None
    expert_utilization: torch.FloatTensor | None = None


@dataclass
class HfGenMoeTokenClassifierOutput(TokenClassifierOutput):
    """``TokenClassifierOutput`` plus the router outputs; ``loss`` includes the weighted router losses."""

    aux_loss: torch.FloatTensor | None = None
    z_loss: torch.FloatTensor | None = None
    router_logits: tuple[torch.FloatTensor, ...] | None = None
    expert_utilization: torch.FloatTensor | None = None
