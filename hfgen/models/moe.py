"""Sparse mixture of experts (seed 004, "Mixture of Experts"), a feed-forward block any hfgen family can use.

Each token's hidden state goes to the ``num_experts_per_tok`` experts its router scores highest (Shazeer et al. 2017;
Mixtral: Jiang et al. 2024): ``y = sum_{e in topk(p)} p_e / (sum_{topk} p) * E_e(x)`` with ``p = softmax(W_g x)``
and ``E_e(x) = w2(silu(w1 x) * w3 x)``.

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
every expert on every token.)

Losses, both computed over real tokens only (``attention_mask``):

* load balancing (Switch Transformer, Fedus et al. 2022, as Mixtral computes it):
  ``L_aux = E * sum_e f_e * P_e``, ``f_e`` the fraction of the top-k assignments that go to expert e (averaged over
  the k slots), ``P_e`` the mean router probability of expert e; 1.0 when perfectly balanced.
* router z-loss (ST-MoE, Zoph et al. 2022): ``L_z = mean_tokens (logsumexp_e z_e)^2``, keeps router logits small.

The causal-LM heads add ``router_aux_loss_coef * L_aux + router_z_loss_coef * L_z`` to the language-modelling loss
and report both, the router logits and the per-layer expert utilisation in their output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN
from transformers.modeling_outputs import CausalLMOutputWithPast

# Keys a config gains with MoE, and their defaults (0 experts: the plain MLP, exactly as before).
MOE_DEFAULTS = dict(
    num_experts=0,
    num_experts_per_tok=2,
    router_aux_loss_coef=0.001,  # Mixtral's default
    router_z_loss_coef=0.001,  # ST-MoE's default
    router_jitter_noise=0.0,
)


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
    """``ValueError`` naming the key and its valid range, before any weight is created."""
    experts = getattr(config, "num_experts", 0) or 0
    top_k = getattr(config, "num_experts_per_tok", 2)
    if isinstance(experts, bool) or not isinstance(experts, int) or experts < 0:
        raise ValueError(f"num_experts must be 0 (no mixture of experts: a plain MLP) or a positive integer, "
                         f"got {experts!r}.")
    if experts == 0:
        return
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= experts:
        raise ValueError(f"num_experts_per_tok must be an integer between 1 and num_experts ({experts}): each token "
                         f"goes to that many distinct experts; got {top_k!r}.")
    for key in ("router_aux_loss_coef", "router_z_loss_coef", "router_jitter_noise"):
        value = getattr(config, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"{key} must be a number >= 0, got {value!r}.")
    if getattr(config, "mlp_type", "gated") != "gated":
        raise ValueError(f"Mixture-of-experts layers use gated experts (Mixtral's w2(act(w1 x) * w3 x)); got "
                         f"mlp_type={config.mlp_type!r}, valid choice with num_experts > 0: 'gated'.")


class HfGenExpert(nn.Module):
    """One expert: a gated MLP with Mixtral's names (``w1`` gate, ``w3`` up, ``w2`` down)."""

    def __init__(self, config, intermediate_size: int | None = None):
        super().__init__()
        intermediate_size = intermediate_size or config.intermediate_size
        self.w1 = nn.Linear(config.hidden_size, intermediate_size, bias=False)
        self.w2 = nn.Linear(intermediate_size, config.hidden_size, bias=False)
        self.w3 = nn.Linear(config.hidden_size, intermediate_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(self.act_fn(self.w1(x)) * self.w3(x))


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

        # Group the T*k (token, expert) assignments by expert: one sort, then contiguous slices.
        flat_experts = experts.reshape(-1)
        order = torch.argsort(flat_experts, stable=True)
        token_index = order // self.top_k
        counts = torch.bincount(flat_experts, minlength=self.num_experts).tolist()  # one device sync
        grouped = x[token_index]
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
                        token_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Switch-Transformer auxiliary loss over the routing decisions of every layer together, as Mixtral computes
    it: ``E * sum_e f_e * P_e`` with ``f_e`` = (top-k assignments to e) / tokens and ``P_e`` the mean router
    probability of e, both over all layers' real tokens."""
    num_experts = router_logits[0].shape[-1]
    counts = torch.zeros(num_experts, device=router_logits[0].device)
    prob_sum = torch.zeros(num_experts, device=router_logits[0].device)
    rows = 0.0
    for logits in router_logits:
        probs = F.softmax(logits.float(), dim=-1)
        selected = torch.topk(probs, top_k, dim=-1).indices
        weights = torch.ones(probs.shape[0], device=probs.device) if token_weights is None else token_weights
        counts = counts + (F.one_hot(selected, num_experts).float() * weights[:, None, None]).sum((0, 1))
        prob_sum = prob_sum + (probs * weights[:, None]).sum(0)
        rows = rows + weights.sum()
    return num_experts * (counts / rows * prob_sum / rows).sum()


def router_z_loss(router_logits: list[torch.Tensor], token_weights: torch.Tensor | None = None) -> torch.Tensor:
    """ST-MoE router z-loss: the mean over every layer's real tokens of ``(logsumexp_e z_e)^2``."""
    squared = torch.stack([torch.logsumexp(logits.float(), dim=-1) ** 2 for logits in router_logits])  # [L, T]
    if token_weights is None:
        return squared.mean()
    return (squared * token_weights).sum() / (token_weights.sum() * len(router_logits)).clamp(min=1)


@dataclass
class MoeStats:
    aux_loss: torch.Tensor
    z_loss: torch.Tensor
    router_logits: tuple[torch.Tensor, ...]
    expert_utilization: torch.Tensor


def collect_moe_outputs(model: nn.Module, attention_mask: torch.Tensor | None = None) -> MoeStats | None:
    """Losses and statistics of the last forward of every ``HfGenSparseMoeBlock`` in ``model`` (in layer order), or
    ``None`` when the model has none."""
    blocks = [m for m in model.modules() if isinstance(m, HfGenSparseMoeBlock) and m.router_logits is not None]
    if not blocks:
        return None
    logits = [block.router_logits for block in blocks]
    weights = _token_weights(attention_mask, logits[0].shape[0], logits[0].device)
    usage = []
    for block in blocks:
        counts = F.one_hot(block.selected_experts, block.num_experts).float().sum(1)  # [T, E]
        if weights is not None:
            counts = counts * weights[:, None]
        usage.append(counts.sum(0) / counts.sum().clamp(min=1))
    return MoeStats(aux_loss=load_balancing_loss(logits, blocks[0].top_k, weights),
                    z_loss=router_z_loss(logits, weights), router_logits=tuple(logits),
                    expert_utilization=torch.stack(usage).detach())


def moe_causal_lm_output(config, model: nn.Module, attention_mask, loss, **fields) -> CausalLMOutputWithPast:
    """The head's output: plain ``CausalLMOutputWithPast`` without MoE; with MoE, ``HfGenMoeCausalLMOutputWithPast``
    whose ``loss`` (when labels were given) includes the weighted router losses."""
    stats = collect_moe_outputs(model, attention_mask) if getattr(config, "num_experts", 0) else None
    if stats is None:
        return CausalLMOutputWithPast(loss=loss, **fields)
    if loss is not None:
        loss = (loss + config.router_aux_loss_coef * stats.aux_loss.to(loss.device)
                + config.router_z_loss_coef * stats.z_loss.to(loss.device))
    return HfGenMoeCausalLMOutputWithPast(loss=loss, aux_loss=stats.aux_loss, z_loss=stats.z_loss,
                                          router_logits=stats.router_logits,
                                          expert_utilization=stats.expert_utilization, **fields)
