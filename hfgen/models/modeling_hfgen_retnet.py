"""The retentive network (``hfgen_retnet``; Sun et al. 2023, arXiv 2307.08621, named by seed 004: "may help it to
be more scaleable than O(N^2) memory and O(N) inference complexity").

Retention of one head with decay ``gamma`` (the paper's eqs. 5-8), ``Q = (X W_Q) * Theta``,
``K = (X W_K) * conj(Theta)``
(xPos-style rotation ``Theta_n = e^{i n theta}``, here in the rotate-half layout), ``V = X W_V``:

* parallel:  ``Retention(X) = (Q K^T * D) V``,  ``D_nm = gamma^(n-m)`` for ``n >= m``, else 0
* recurrent: ``S_n = gamma S_(n-1) + K_n^T V_n``,  ``Retention(X_n) = Q_n S_n``
* chunkwise: ``R_i = K_[i]^T (V_[i] * zeta) + gamma^B R_(i-1)``, ``zeta_j = gamma^(B-j-1)``;
  ``Retention(X_[i]) = (Q_[i] K_[i]^T * D) V_[i] + (Q_[i] R_(i-1)) * xi``, ``xi_j = gamma^(j+1)``

Multi-scale retention (eq. 8): ``gamma_h = 1 - 2^(-5-h)`` per head,
``Y = GroupNorm_h(Concat(head_1..head_H))``, ``MSR(X) = (swish(X W_G) * Y) W_O``.

Queries are scaled by ``1/sqrt(d_k)``. The paper's further per-row normalisations of ``QK^T * D`` only rescale each
(token, head) row by a positive number, which the group norm cancels; they are left out so that the three forms
are the same arithmetic, not just the same function.

Padding: keys of masked tokens are zeroed, so they add nothing to any state; decay and rotation are relative, so a
left-padded row computes exactly what the row computes alone.

Cache: :class:`HfGenRetNetCache` holds one ``[B, H, d_k, d_v]`` state per layer, whatever the context length (the
recurrent form's O(1) memory per token). ``generate`` receives it from the first forward and passes it back.

Decoding: one new token per row without gradients takes ``RetNetDecodingPlan`` (``retnet_decoding``), the same
arithmetic with every look-up done once per model instead of once per token (a step is ~20 small operations per
layer, so the Python around them costs as much as they do): the four input projections as one matmul against an
input-major copy of their weights, the rotation as a roll and a signed sine, the state updated in place when no
autograd graph holds it, the residual additions inside ``addmm``, rotation tables made per block of positions, and
from ``HfGenRetNetForCausalLM`` no ``nn.Module`` calls or output-capturing decorators below the head. The plan is
remade when a module or weight changes; anything it cannot take (hooks, PEFT adapters, a mixture of experts,
``output_hidden_states``) goes through the modules, as do gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.cache_utils import Cache, LinearAttentionCacheLayerMixin
from transformers.generation import GenerationMode
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.utils import can_return_tuple
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs

from .configuration_hfgen_retnet import HfGenRetNetConfig
from .input_checks import HfGenGenerationMixin, check_head_inputs
from .layers import HfGenMLP, build_norm
from .model_card import HfGenHubCardMixin
from .modeling_common import causal_lm_logits_and_loss, check_checkpoint_folder, check_inputs, check_pretrained_kwargs
# (transformers offers experts_implementation only if this file names `@use_experts_implementation`: moe.py's)
from .moe import (
    KEEP_IN_FP32,
    ROUTER_LOGITS_RECORDER,
    HfGenSparseMoeBlock,
    base_output_class,
    build_feed_forward,
    check_router_request,
    init_moe_weights,
    moe_output,
)
from .retention import (  # (the arithmetic, importable from here as before)
    retention_chunkwise,
    retention_log_decays,
    retention_parallel,
    retention_recurrent,
    retention_step,
    rotate,
    rotation_frequencies,
    rotation_tables,
)
from .retnet_decoding import RetNetDecodingPlan

# ---------------------------------------------------------------------------------------------------- the cache


class HfGenRetNetCacheLayer(LinearAttentionCacheLayerMixin):
    """One layer's retention state ``[B, H, d_k, d_v]`` (transformers' linear-attention layer protocol: beam
    reordering, reset, offloading come from the mixin)."""

    def lazy_initialization(self, conv_states=None, recurrent_states=None, state_idx: int = 0) -> None:
        if recurrent_states is not None:
            self.device, self.dtype = recurrent_states.device, recurrent_states.dtype
            self.is_recurrent_states_initialized[state_idx] = True

    def update_conv_state(self, conv_states, state_idx: int = 0, **kwargs):
        raise ValueError("Retention layers keep no convolution state.")

    def update_recurrent_state(self, recurrent_states: torch.Tensor, state_idx: int = 0, **kwargs) -> torch.Tensor:
        if not self.is_recurrent_states_initialized[state_idx]:
            self.lazy_initialization(recurrent_states=recurrent_states, state_idx=state_idx)
        self.recurrent_states[state_idx] = recurrent_states
        self.has_previous_state[state_idx] = True
        self.batch_size = recurrent_states.shape[0]
        return recurrent_states

    def batch_repeat_interleave(self, repeats: int) -> None:
        for i, state in self.recurrent_states.items():
            if state is not None:
                self.recurrent_states[i] = state.repeat_interleave(repeats, dim=0)
                self.batch_size = self.recurrent_states[i].shape[0]

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        for i, state in self.recurrent_states.items():
            if state is not None:
                self.recurrent_states[i] = state[indices]
                self.batch_size = self.recurrent_states[i].shape[0]


class HfGenRetNetCache(Cache):
    """The recurrent-state cache of :class:`HfGenRetNetForCausalLM`: one retention state per layer, of a size that
    does not grow with the context, and the number of tokens seen (``get_seq_length``), which positions continue
    from. It cannot be cropped (a recurrent state cannot forget tokens), so assisted generation is refused."""

    def __init__(self, config: HfGenRetNetConfig):
        super().__init__(layers=[HfGenRetNetCacheLayer() for _ in range(config.num_hidden_layers)])
        self.seen_tokens = 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def get_state(self, layer_idx: int) -> torch.Tensor | None:
        """Layer ``layer_idx``'s state ``[B, H, d_k, d_v]``, ``None`` before the first token (read directly: this
        runs once per layer per generated token)."""
        layer = self.layers[layer_idx]
        return layer.recurrent_states[0] if layer.has_previous_state[0] else None

    def update_state(self, state: torch.Tensor, layer_idx: int) -> torch.Tensor:
        layer = self.layers[layer_idx]
        if not layer.has_previous_state[0]:  # the first token (or after a reset): the full protocol
            return layer.update_recurrent_state(state)
        layer.recurrent_states[0] = state
        layer.batch_size = state.shape[0]
        return state

    def reset(self) -> None:
        super().reset()
        self.seen_tokens = 0

    def check_batch(self, batch: int) -> None:
        """``ValueError`` when the states hold another number of rows than the input (before any state changes:
        an in-place update would fail half-way, an out-of-place one would broadcast one row's state to all)."""
        state = self.get_state(0) if self.layers else None
        if state is not None and state.shape[0] != batch:
            raise ValueError(f"The cache holds retention states for a batch of {state.shape[0]} rows, but the input "
                             f"has {batch} rows. Pass the cache of this batch (or a new HfGenRetNetCache).")

    def crop(self, tokens_to_remove: int) -> None:
        raise ValueError("A retention state cannot forget tokens: HfGenRetNetCache cannot be cropped.")


# ---------------------------------------------------------------------------------------------------- the layers


class HfGenMultiScaleRetention(nn.Module):
    """Multi-scale retention: ``(swish(X W_G) * GroupNorm(heads)) W_O`` with one decay per head."""

    def __init__(self, config: HfGenRetNetConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim, self.value_head_dim = config.head_dim, config.value_head_dim
        self.rope_theta = config.rope_theta  # (read once: config attribute access is slow in a per-token path)
        value_width = self.num_heads * self.value_head_dim
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, value_width, bias=False)
        self.g_proj = nn.Linear(config.hidden_size, value_width, bias=False)
        self.o_proj = nn.Linear(value_width, config.hidden_size, bias=False)
        self.group_norm = nn.GroupNorm(self.num_heads, value_width, eps=config.rms_norm_eps)
        # Constants of the layer, made once per device on first use (not buffers: from_pretrained builds on the
        # meta device, and recomputing them per token is measurable Python overhead in decoding).
        self._constants: dict[torch.device, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def constants(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log_decay [H], gamma [1, H, 1, 1], rotation frequencies [d_k / 2])`` on ``device``, float32."""
        if device not in self._constants:
            log_decay = retention_log_decays(self.num_heads, device=device)
            self._constants[device] = (log_decay, torch.exp(log_decay)[None, :, None, None],
                                       rotation_frequencies(self.head_dim, self.rope_theta, device))
        return self._constants[device]

    def forward(self, hidden_states: torch.Tensor, position_ids: torch.Tensor, key_mask: torch.Tensor | None,
                cache: HfGenRetNetCache | None = None, mode: str | None = None,
                rotation: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """``rotation``: ``rotation_tables`` of ``position_ids`` when the caller computed them once for all layers."""
        batch, length, _ = hidden_states.shape
        heads = self.num_heads
        q = self.q_proj(hidden_states).view(batch, length, heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(hidden_states).view(batch, length, heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(hidden_states).view(batch, length, heads, self.value_head_dim).transpose(1, 2)
        log_decay, gamma, inv_freq = self.constants(q.device)
        if rotation is None:
            rotation = rotation_tables(position_ids, inv_freq)
        # queries and keys turned by one call (fewer operations in the per-token path)
        q, k = rotate(torch.cat((q, k), dim=1), position_ids, self.rope_theta, rotation).split(heads, dim=1)
        q = q * self.head_dim**-0.5
        if key_mask is not None:  # a masked token adds nothing to any state
            k = k * key_mask[:, None, :, None].to(k.dtype)
        state = cache.get_state(self.layer_idx) if cache is not None else None
        mode = "step" if length == 1 else (mode or self.config.retention_mode)
        if mode == "step":  # one token, whatever the configured form: the recurrent step
            out, state = retention_step(q, k, v, gamma if gamma.dtype == q.dtype else gamma.to(q.dtype), state)
        elif mode == "recurrent":
            out, state = retention_recurrent(q, k, v, log_decay, state)
        elif mode == "parallel":
            out, state = retention_parallel(q, k, v, log_decay, state)
        else:
            out, state = retention_chunkwise(q, k, v, log_decay, self.config.retention_chunk_size, state)
        if cache is not None:
            cache.update_state(state, self.layer_idx)
        out = out.transpose(1, 2).reshape(batch * length, heads * self.value_head_dim)
        out = self.group_norm(out).view(batch, length, -1)
        return self.o_proj(F.silu(self.g_proj(hidden_states)) * out)


class HfGenRetNetLayer(GradientCheckpointingLayer):
    """``Y = MSR(LN(X)) + X``; ``X' = FFN(LN(Y)) + Y`` (FFN: the MLP, or a mixture of experts)."""

    def __init__(self, config: HfGenRetNetConfig, layer_idx: int):
        super().__init__()
        self.retention = HfGenMultiScaleRetention(config, layer_idx)
        self.input_layernorm = build_norm(config)
        self.post_attention_layernorm = build_norm(config)
        feed_forward = build_feed_forward(config, lambda: HfGenMLP(config))
        self.is_moe = isinstance(feed_forward, HfGenSparseMoeBlock)
        if self.is_moe:
            self.block_sparse_moe = feed_forward
        else:
            self.mlp = feed_forward

    def forward(self, hidden_states: torch.Tensor, position_ids: torch.Tensor, key_mask: torch.Tensor | None,
                cache: HfGenRetNetCache | None = None, mode: str | None = None,
                rotation: tuple[torch.Tensor, torch.Tensor] | None = None,
                **kwargs: Unpack[TransformersKwargs]) -> torch.Tensor:
        hidden_states = hidden_states + self.retention(self.input_layernorm(hidden_states), position_ids, key_mask,
                                                       cache=cache, mode=mode, rotation=rotation)
        # (a flag, not hasattr: a missing nn.Module attribute costs a raised exception on every token)
        feed_forward = self.block_sparse_moe if self.is_moe else self.mlp
        return hidden_states + feed_forward(self.post_attention_layernorm(hidden_states))


# ---------------------------------------------------------------------------------------------------- the models


# HfGenHubCardMixin: push_to_hub uploads hfgen's model card.
class HfGenRetNetPreTrainedModel(HfGenHubCardMixin, PreTrainedModel):
    config_class = HfGenRetNetConfig
    config: HfGenRetNetConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["HfGenRetNetLayer"]
    _skip_keys_device_placement = ["past_key_values", "cache"]
    _is_stateful = True
    _can_record_outputs = {"hidden_states": HfGenRetNetLayer, "router_logits": ROUTER_LOGITS_RECORDER}
    _keep_in_fp32_modules_strict = KEEP_IN_FP32  # mixture-of-experts routers (moe.py)

    def __init__(self, config, *inputs, **kwargs):
        # from_pretrained(path, key=value) sets attributes after the config's own checks: check again.
        config.validate_architecture()
        super().__init__(config, *inputs, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        init_moe_weights(module, self.config.initializer_range)  # nn.Linear's init does not reach 3D weights

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        check_pretrained_kwargs(cls, kwargs)
        if pretrained_model_name_or_path is not None:
            check_checkpoint_folder(pretrained_model_name_or_path)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # generate must not make a DynamicCache (keys and values per token): the model makes its own state cache.
        return False


def resolve_cache(cache, past_key_values):
    """The cache under either name (transformers 5 calls it ``cache``; ``past_key_values`` is the older name)."""
    if cache is not None and past_key_values is not None and cache is not past_key_values:
        raise ValueError("Pass the state cache as `cache` or as `past_key_values`, not both.")
    cache = cache if cache is not None else past_key_values
    if cache is not None and not isinstance(cache, HfGenRetNetCache):
        raise ValueError(
            f"HfGenRetNet keeps a fixed-size recurrent state per layer, not keys and values per token: it can use "
            f"an HfGenRetNetCache (or None, and one is made), not a {type(cache).__name__}."
        )
    return cache


class HfGenRetNetModel(HfGenRetNetPreTrainedModel):
    """Embeddings, RetNet layers, final norm. Returns ``BaseModelOutputWithPast`` whose cache is the state cache."""

    def __init__(self, config: HfGenRetNetConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList([HfGenRetNetLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = build_norm(config)
        self.gradient_checkpointing = False
        # rotation tables of a block of positions, for decoding one token at a time: (device, first position, tables)
        self._rotation_block: tuple[torch.device, int, tuple[torch.Tensor, torch.Tensor]] | None = None
        self._decoding_plan: RetNetDecodingPlan | None = None  # see decoding_plan
        self.post_init()

    ROTATION_BLOCK = 256

    def __getstate__(self) -> dict:
        # (derived from the weights, remade on first use: not part of a pickled or deep-copied model)
        return {**super().__getstate__(), "_rotation_block": None, "_decoding_plan": None}

    def decoding_plan(self, head: nn.Linear | None = None) -> RetNetDecodingPlan | None:
        """The plan of the per-token decoding step (``retnet_decoding``), with ``head`` (the language-modelling head)
        when given; remade when a module or weight changed. ``None`` when ``config.decoding_weight_copies`` is off or
        the model has parts the plan cannot run: then the modules decode."""
        if not self.config.decoding_weight_copies:
            self._decoding_plan = None  # (its copies freed)
            return None
        plan = self._decoding_plan
        if plan is None or (head is not None and plan.head_module is not head) or not plan.is_current():
            self._decoding_plan = None  # (the old copies freed before new ones are made)
            plan = self._decoding_plan = RetNetDecodingPlan.build(self, HfGenRetNetLayer, HfGenMultiScaleRetention,
                                                                  head)
        return plan

    def reset_decoding_plan(self) -> None:
        """Drop the decoding plan and its weight copies (``config.decoding_weight_copies``); the next decoding step
        makes new ones. Needed after changing weights in a way PyTorch does not record (``p.data`` edits)."""
        self._decoding_plan = None

    def decode_token(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None,
                     cache: HfGenRetNetCache | None, head: nn.Linear) -> tuple[torch.Tensor, HfGenRetNetCache] | None:
        """``head(forward(...).last_hidden_state)`` for one new token per row (``input_ids [B, 1]``) without
        gradients, through the decoding plan and without the module call and its decorators: ``(logits [B, 1,
        vocab], cache)``, the numbers of the modules' path (up to float rounding). ``None``, before anything is
        computed or changed, when the plan cannot take this call (then call the model)."""
        if (torch.is_grad_enabled() or input_ids.dim() != 2 or input_ids.shape[1] != 1 or self.config.output_hidden_states
                or (attention_mask is not None and attention_mask.dim() != 2) or torch.compiler.is_compiling()):
            return None
        plan = self.decoding_plan(head)
        if plan is None:
            return None
        past_length = cache.get_seq_length() if cache is not None else 0
        check_inputs(self.config, input_ids, None, attention_mask, past_length)
        if cache is None:
            cache = HfGenRetNetCache(self.config)
        cache.check_batch(input_ids.shape[0])
        hidden = plan.embed(input_ids[:, 0])
        key_mask = attention_mask[:, -1:].to(hidden.dtype) if attention_mask is not None else None
        hidden = plan.step(hidden, key_mask, cache, self.step_rotation(past_length, hidden.device))
        cache.seen_tokens += 1
        return plan.logits(plan.final_norm(hidden))[:, None], cache

    def step_rotation(self, position: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``rotation_tables`` of the single position ``position`` (``[1, 1, 1, d_k]`` each), sliced from tables made
        for ``ROTATION_BLOCK`` positions at a time: the same numbers, two views per token instead of the table
        arithmetic, and memory that does not grow with the context."""
        block = self._rotation_block
        if block is None or block[0] != device or not block[1] <= position < block[1] + self.ROTATION_BLOCK:
            positions = torch.arange(position, position + self.ROTATION_BLOCK, device=device)[None]
            block = self._rotation_block = (device, position, rotation_tables(
                positions, self.layers[0].retention.constants(device)[2]))
        index = position - block[1]
        cos, signed_sin = block[2]
        return cos[:, :, index:index + 1], signed_sin[:, :, index:index + 1]

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    @merge_with_config_defaults
    @capture_outputs
    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, cache: HfGenRetNetCache | None = None,
                inputs_embeds: torch.Tensor | None = None, use_cache: bool | None = None,
                past_key_values: HfGenRetNetCache | None = None, retention_mode: str | None = None,
                **kwargs: Unpack[TransformersKwargs]) -> BaseModelOutputWithPast:
        """``attention_mask``: 2D ``[batch, seen + new]`` (1 = token, 0 = padding). ``retention_mode`` overrides
        ``config.retention_mode`` for this call (``parallel``, ``chunkwise``, ``recurrent``)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        check_router_request(self.config, kwargs.get("output_router_logits"))
        cache = resolve_cache(cache, past_key_values)
        if retention_mode is not None and retention_mode not in ("parallel", "chunkwise", "recurrent"):
            raise ValueError(f"Unknown retention_mode={retention_mode!r}; valid choices are: 'parallel', "
                             f"'chunkwise', 'recurrent'.")
        past_length = cache.get_seq_length() if cache is not None else 0
        if attention_mask is not None and attention_mask.dim() != 2:
            raise ValueError(f"HfGenRetNet takes a 2D attention_mask [batch, tokens] (1 = token, 0 = padding); "
                             f"got {attention_mask.dim()} dimensions. Retention has no attention matrix to mask.")
        check_inputs(self.config, input_ids, inputs_embeds, attention_mask, past_length, position_ids)
        if cache is not None:
            cache.check_batch((input_ids if input_ids is not None else inputs_embeds).shape[0])
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        length = inputs_embeds.shape[1]
        if use_cache and cache is None:
            cache = HfGenRetNetCache(self.config)
        # (cast once here, not in every layer)
        key_mask = attention_mask[:, -length:].to(inputs_embeds.dtype) if attention_mask is not None else None
        # Every layer rotates by the same angles (same head width and theta): compute them once, as Llama does.
        decoding = length == 1 and not torch.is_grad_enabled()
        if decoding and position_ids is None:  # (the layers need only the tables)
            rotation = self.step_rotation(past_length, inputs_embeds.device)
        else:
            if position_ids is None:
                position_ids = (torch.arange(length, device=inputs_embeds.device) + past_length)[None]
            rotation = rotation_tables(position_ids, self.layers[0].retention.constants(inputs_embeds.device)[2])

        layer_cache = cache if use_cache else None
        plan = self.decoding_plan() if decoding and not torch.compiler.is_compiling() else None
        if plan is not None and plan.dtype == inputs_embeds.dtype:  # the per-token path, in 2D
            hidden_states = plan.step(inputs_embeds[:, 0], key_mask, layer_cache, rotation)[:, None]
        else:
            hidden_states = inputs_embeds
            for layer in self.layers:
                hidden_states = layer(hidden_states, position_ids, key_mask, cache=layer_cache, mode=retention_mode,
                                      rotation=rotation)
        if use_cache:
            cache.seen_tokens += length
        # With num_experts: MoeModelOutputWithPast, whose router_logits output_router_logits fills (moe.py).
        return base_output_class(self.config, BaseModelOutputWithPast)(last_hidden_state=self.norm(hidden_states),
                                                                       cache=cache if use_cache else None)


class HfGenRetNetForCausalLM(HfGenRetNetPreTrainedModel, HfGenGenerationMixin):
    """RetNet with a language-modelling head. ``generate`` decodes with the recurrent form from the state cache
    (O(1) time and memory per token, whatever the context); left-padded batches give the rows' own tokens."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: HfGenRetNetConfig):
        super().__init__(config)
        self.model = HfGenRetNetModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, generation_mode, *args, **kwargs):
        if generation_mode == GenerationMode.ASSISTED_GENERATION:
            # Assisted decoding crops the cache after rejected drafts; a recurrent state cannot be un-updated.
            raise ValueError(
                "Assisted generation (assistant_model, prompt_lookup_num_tokens) cannot be used with HfGenRetNet: "
                "it rolls the cache back after rejected draft tokens, and a recurrent state cannot be rolled back. "
                "Use greedy search, sampling or beam search.")
        implementation = generation_config.cache_implementation
        if implementation not in (None, "dynamic"):
            raise ValueError(
                f"cache_implementation={implementation!r} cannot be used with HfGenRetNet: it keeps a fixed-size "
                f"recurrent state (HfGenRetNetCache, made by the model). Valid choices: None, 'dynamic'."
            )
        resolve_cache(model_kwargs.get("cache"), model_kwargs.get("past_key_values"))
        return super()._prepare_cache_for_generation(generation_config, model_kwargs, generation_mode, *args,
                                                     **kwargs)

    @can_return_tuple
    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, cache: HfGenRetNetCache | None = None,
                inputs_embeds: torch.Tensor | None = None, labels: torch.LongTensor | None = None,
                use_cache: bool | None = None, logits_to_keep: int | torch.Tensor = 0,
                past_key_values: HfGenRetNetCache | None = None, **kwargs: Unpack[TransformersKwargs]):
        """``labels`` are the input ids (shifted inside the loss); -100 marks positions to ignore. With
        router logits (``num_experts`` and ``output_router_logits``) the output is ``HfGenMoeCausalLMOutputWithPast``."""
        check_head_inputs(self.config, input_ids, inputs_embeds, labels, logits_to_keep)
        if (input_ids is not None and labels is None and inputs_embeds is None and position_ids is None
                and (use_cache if use_cache is not None else self.config.use_cache)
                and kwargs.keys() <= {"output_attentions", "output_hidden_states"}
                and not kwargs.get("output_hidden_states")):
            # One token per row while decoding: the model's plan, without its module call (see decode_token).
            decoded = self.model.decode_token(input_ids, attention_mask, resolve_cache(cache, past_key_values),
                                              self.lm_head)
            if decoded is not None:
                return CausalLMOutputWithPast(logits=decoded[0], cache=decoded[1])
        outputs: BaseModelOutputWithPast = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            cache=resolve_cache(cache, past_key_values), inputs_embeds=inputs_embeds, use_cache=use_cache, **kwargs)
        hidden_states = outputs.last_hidden_state
        logits, loss = causal_lm_logits_and_loss(self, hidden_states, logits_to_keep, labels, self.config.vocab_size,
                                                 **kwargs)
        return moe_output(self.config, outputs, attention_mask, CausalLMOutputWithPast, loss=loss, logits=logits,
                          cache=outputs.cache, hidden_states=outputs.hidden_states)
