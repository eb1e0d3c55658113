"""The decoder-only family (``hfgen_decoder``): GPT-style next-token prediction (seed 003: "Decoder-only models
... are pre-trained using Causal Language Modeling") with every hfgen attention variant.

With default keys this is Llama, parameter for parameter (``model.layers.N.self_attn.q_proj``, ...), so Llama
checkpoints load into it and can then run with any variant switched on.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    SequenceClassifierOutputWithPast,
)
from transformers.utils import can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs

from .attention import HfGenAttention
from .configuration_hfgen_decoder import HfGenDecoderConfig
from .input_checks import HfGenGenerationMixin, check_classification_labels, check_head_inputs
from .kv_cache import PreallocatedCacheMixin
from .layers import HfGenMLP, build_norm, residual
from .modeling_common import HfGenPreTrainedModel, causal_lm_logits_and_loss, check_inputs, last_token_indices
# (transformers offers experts_implementation only if this file names `@use_experts_implementation`: moe.py's)
from .moe import (
    ROUTER_LOGITS_RECORDER,
    HfGenSparseMoeBlock,
    base_output_class,
    build_feed_forward,
    check_router_request,
    moe_output,
)
from .position_inputs import add_position_modules, position_inputs


class HfGenDecoderLayer(GradientCheckpointingLayer):
    """Self-attention then MLP, each in a residual connection, normalised before (``pre``) or after (``post``)."""

    def __init__(self, config: HfGenDecoderConfig, layer_idx: int):
        super().__init__()
        self.pre_norm = config.norm_position == "pre"
        self.self_attn = HfGenAttention(config, layer_idx, is_causal=True)
        feed_forward = build_feed_forward(config, lambda: HfGenMLP(config))  # num_experts > 0: moe.py
        self.is_moe = isinstance(feed_forward, HfGenSparseMoeBlock)
        if self.is_moe:
            self.block_sparse_moe = feed_forward  # Mixtral's name: Mixtral checkpoints load
        else:
            self.mlp = feed_forward
        self.input_layernorm = build_norm(config)
        self.post_attention_layernorm = build_norm(config)

    def forward(self, hidden_states: torch.Tensor, position_bias=None, attention_mask=None, position_embeddings=None,
                cache: Cache | None = None, **kwargs: Unpack[TransformersKwargs]) -> torch.Tensor:
        """``position_bias`` (the additive bias tensor, or a function of the lengths with a cache) comes second and
        is passed positionally: reentrant gradient checkpointing carries gradients only out of positional tensors
        (``GradientCheckpointingLayer``), and a relative-position bias is trained."""
        def attend(states: torch.Tensor) -> torch.Tensor:
            return self.self_attn(states, attention_mask=attention_mask, position_embeddings=position_embeddings,
                                  position_bias=position_bias, cache=cache, **kwargs)[0]

        hidden_states = residual(hidden_states, self.input_layernorm, self.pre_norm, attend)
        # (a flag, not hasattr: a missing nn.Module attribute costs a raised exception on every token)
        feed_forward = self.block_sparse_moe if self.is_moe else self.mlp
        return residual(hidden_states, self.post_attention_layernorm, self.pre_norm, feed_forward)


class HfGenDecoderPreTrainedModel(HfGenPreTrainedModel):
    config_class = HfGenDecoderConfig
    config: HfGenDecoderConfig
    _no_split_modules = ["HfGenDecoderLayer"]
    _can_record_outputs = {"hidden_states": HfGenDecoderLayer, "attentions": HfGenAttention,
                           "router_logits": ROUTER_LOGITS_RECORDER}


class HfGenDecoderModel(HfGenDecoderPreTrainedModel):
    """The bare decoder: embeddings, layers, final norm. Returns ``BaseModelOutputWithPast``."""

    def __init__(self, config: HfGenDecoderConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        add_position_modules(self, config, bidirectional=False)
        self.layers = nn.ModuleList([HfGenDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        # Post-norm layers end normalised already; a final norm is the pre-norm design's counterpart.
        self.norm = build_norm(config) if config.norm_position == "pre" else nn.Identity()
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")  # transformers >= 5.24 calls it cache
    @merge_with_config_defaults
    @capture_outputs
    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, cache: Cache | None = None,
                inputs_embeds: torch.Tensor | None = None, use_cache: bool | None = None,
                **kwargs: Unpack[TransformersKwargs]) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        check_router_request(self.config, kwargs.get("output_router_logits"))
        # Continuous batching's PagedAttentionCache (not a Cache) has no length: its calls pass position_ids and
        # a 4D mask, so nothing below needs one.
        past_length = cache.get_seq_length() if isinstance(cache, Cache) else 0
        check_inputs(self.config, input_ids, inputs_embeds, attention_mask, past_length, position_ids)
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        if position_ids is None:
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_length
            position_ids = position_ids.unsqueeze(0)

        mask = create_causal_mask(config=self.config, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                  cache=cache, position_ids=position_ids)
        hidden_states, position_embeddings, position_bias = position_inputs(self, self.config, inputs_embeds,
                                                                            position_ids, past_length,
                                                                            cached=cache is not None)
        for layer in self.layers:
            hidden_states = layer(hidden_states, position_bias, attention_mask=mask,
                                  position_embeddings=position_embeddings, cache=cache, **kwargs)
        hidden_states = self.norm(hidden_states)
        # With num_experts: MoeModelOutputWithPast, whose router_logits output_router_logits fills (moe.py).
        return base_output_class(self.config, BaseModelOutputWithPast)(last_hidden_state=hidden_states,
                                                                       cache=cache if use_cache else None)


class HfGenDecoderForCausalLM(PreallocatedCacheMixin, HfGenDecoderPreTrainedModel, HfGenGenerationMixin):
    """Decoder with a language-modelling head. Works with ``generate`` (DynamicCache and static cache, left-padded
    batches, every decoding strategy), ``pipeline("text-generation")`` and the TRL trainers. ``generate``'s default
    cache writes keys and values in place (``kv_cache.PreallocatedLayer``) instead of concatenating at every step."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}  # (Llama's)
    _pp_plan = {"lm_head": (["hidden_states"], ["logits"])}

    def __init__(self, config: HfGenDecoderConfig):
        super().__init__(config)
        self.model = HfGenDecoderModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")  # transformers >= 5.24 calls it cache
    @can_return_tuple
    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, cache: Cache | None = None,
                inputs_embeds: torch.Tensor | None = None, labels: torch.LongTensor | None = None,
                use_cache: bool | None = None, logits_to_keep: int | torch.Tensor = 0,
                output_router_logits: bool | None = None,
                **kwargs: Unpack[TransformersKwargs]) -> CausalLMOutputWithPast:
        """``labels`` are the input ids (shifted inside the loss); -100 marks positions to ignore.
        ``output_router_logits`` (mixture of experts; default ``config.output_router_logits``): return the router
        logits, the load-balancing and z losses, and add the weighted losses to the loss."""
        check_head_inputs(self.config, input_ids, inputs_embeds, labels, logits_to_keep)
        if output_router_logits is not None:
            kwargs["output_router_logits"] = output_router_logits
        outputs: BaseModelOutputWithPast = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            cache=cache, inputs_embeds=inputs_embeds, use_cache=use_cache, **kwargs)
        hidden_states = outputs.last_hidden_state
        logits, loss = causal_lm_logits_and_loss(self, hidden_states, logits_to_keep, labels, self.config.vocab_size,
                                                 **kwargs)
        # With router logits: HfGenMoeCausalLMOutputWithPast, router losses added to the loss (moe.py).
        return moe_output(self.config, outputs, attention_mask, CausalLMOutputWithPast, loss=loss, logits=logits,
                          cache=outputs.cache, hidden_states=outputs.hidden_states, attentions=outputs.attentions)


class HfGenDecoderForSequenceClassification(HfGenDecoderPreTrainedModel):
    """Decoder with a classification / regression head on the last non-padding token (a reward model for RLHF).

    The last real token is found from ``attention_mask`` when given (right or left padding alike), else as the
    last token that is not ``pad_token_id``.
    """

    # Its loss is a per-batch mean (num_items_in_batch unused): without this, Trainer sees **kwargs in forward,
    # scales the loss by the number of processes for a token-sum loss it is not, and N processes train apart.
    accepts_loss_kwargs = False

    def __init__(self, config: HfGenDecoderConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = HfGenDecoderModel(config)
        self.score = nn.Linear(config.hidden_size, self.num_labels, bias=False)
        self.post_init()

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")  # transformers >= 5.24 calls it cache
    @can_return_tuple
    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, cache: Cache | None = None,
                inputs_embeds: torch.Tensor | None = None, labels: torch.LongTensor | None = None,
                use_cache: bool | None = None,
                **kwargs: Unpack[TransformersKwargs]) -> SequenceClassifierOutputWithPast:
        check_classification_labels(self.config, labels, input_ids, inputs_embeds)
        outputs: BaseModelOutputWithPast = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            cache=cache, inputs_embeds=inputs_embeds, use_cache=use_cache, **kwargs)
        logits = self.score(outputs.last_hidden_state)
        rows = torch.arange(logits.shape[0], device=logits.device)
        pooled_logits = logits[rows, last_token_indices(self.config, input_ids, attention_mask, logits)]
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, pooled_logits=pooled_logits, config=self.config)
        return SequenceClassifierOutputWithPast(loss=loss, logits=pooled_logits,
                                                cache=outputs.cache,
                                                hidden_states=outputs.hidden_states, attentions=outputs.attentions)
