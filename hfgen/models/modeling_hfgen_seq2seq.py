"""The encoder-decoder family (``hfgen_seq2seq``): T5/BART-style sequence-to-sequence models (seed 003: "The
encoder-decoder variants of Transformers are also called sequence-to-sequence models ... FLAN-T5 is trained using
span corruption") with every hfgen attention variant, in the encoder's and decoder's self-attention and in the
decoder's cross-attention (one shared attention layer, one set of kernels).

Layout (BART's containers, Llama's leaf names)::

    model.shared                                   token embedding, shared by encoder, decoder (and the LM head
                                                   when ``tie_word_embeddings``)
    model.encoder.layers.N.{self_attn, mlp, input_layernorm, post_attention_layernorm}, model.encoder.norm
    model.decoder.layers.N.{self_attn, cross_attn, mlp, input_layernorm, cross_attention_layernorm,
                            post_attention_layernorm}, model.decoder.norm
    lm_head

With ``T5_LIKE_KEYS`` the logits are T5's; ``t5_conversion.py`` maps T5 checkpoints in and out.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.loss.loss_utils import ForMaskedLMLoss
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutput,
    BaseModelOutputWithPastAndCrossAttentions,
    Seq2SeqLMOutput,
    Seq2SeqModelOutput,
    Seq2SeqSequenceClassifierOutput,
)
from transformers.utils import can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import OutputRecorder, capture_outputs
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs

from .attention import HfGenAttention
from .configuration_hfgen_seq2seq import HfGenSeq2SeqConfig
from .layers import HfGenMLP, build_norm
from .input_checks import (HfGenGenerationMixin, check_classification_labels, check_encoder_output,
                           check_lm_labels, check_logits_to_keep)
from .modeling_common import HfGenPreTrainedModel, check_inputs
from .position_inputs import add_position_modules, position_inputs, positions_from_mask


def shift_tokens_right(labels: torch.Tensor, decoder_start_token_id: int | None,
                       pad_token_id: int | None) -> torch.Tensor:
    """Teacher forcing: the decoder reads ``[start, y_0, ..., y_{n-2}]`` and predicts ``[y_0, ..., y_{n-1}]``.
    Ignored label positions (-100) become ``pad_token_id`` in the decoder input."""
    if decoder_start_token_id is None:
        raise ValueError(
            "config.decoder_start_token_id is None, so labels cannot be shifted right into decoder_input_ids: set it "
            "(T5 uses the pad token; it defaults to pad_token_id) or pass decoder_input_ids yourself."
        )
    shifted = labels.new_zeros(labels.shape)
    shifted[..., 1:] = labels[..., :-1]
    shifted[..., 0] = decoder_start_token_id
    ignored = shifted == -100
    if ignored.any():
        if pad_token_id is None:
            raise ValueError("labels hold -100 (ignored positions) but config.pad_token_id is None: set it, so that "
                             "the decoder input has a token at those positions.")
        shifted = shifted.masked_fill(ignored, pad_token_id)
    return shifted


def check_labels(config, labels: torch.Tensor, decoder_input_ids: torch.Tensor | None = None,
                 decoder_inputs_embeds: torch.Tensor | None = None) -> None:
    """Target ids or -100, one per decoder position (the decoder input's shape when it is given)."""
    reference = decoder_input_ids if decoder_input_ids is not None else decoder_inputs_embeds
    shape = reference.shape[:2] if isinstance(reference, torch.Tensor) and reference.dim() >= 2 else None
    check_lm_labels(labels, config.vocab_size, shape if shape is not None else getattr(labels, "shape", ()))


class HfGenSeq2SeqLayer(GradientCheckpointingLayer):
    """Self-attention, then (decoder only) cross-attention over the encoder output, then the MLP; each sub-block in
    a residual connection, normalised before (``pre``, T5) or after (``post``, the original Transformer)."""

    def __init__(self, config: HfGenSeq2SeqConfig, layer_idx: int, is_decoder: bool):
        super().__init__()
        self.pre_norm = config.norm_position == "pre"
        self.is_decoder = is_decoder
        self.self_attn = HfGenAttention(config, layer_idx, is_causal=is_decoder)
        self.input_layernorm = build_norm(config)
        if is_decoder:
            self.cross_attn = HfGenAttention(config, layer_idx, is_causal=False, is_cross_attention=True)
            self.cross_attention_layernorm = build_norm(config)
        self.mlp = HfGenMLP(config)
        self.post_attention_layernorm = build_norm(config)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def _residual(self, norm: nn.Module, hidden_states: torch.Tensor, block) -> torch.Tensor:
        out = block(norm(hidden_states) if self.pre_norm else hidden_states)
        if self.training and self.dropout.p:  # (not even a no-op call in inference: generation is launch-bound)
            out = self.dropout(out)
        hidden_states = hidden_states + out
        return hidden_states if self.pre_norm else norm(hidden_states)

    def forward(self, hidden_states: torch.Tensor, position_bias=None,
                encoder_hidden_states: torch.Tensor | None = None, attention_mask=None, position_embeddings=None,
                encoder_attention_mask=None, cache: Cache | None = None,
                **kwargs: Unpack[TransformersKwargs]) -> torch.Tensor:
        """The tensors that gradients flow through come first and are passed positionally (``position_bias``: the
        additive bias tensor, or a function of the lengths with a cache; ``encoder_hidden_states``): reentrant
        gradient checkpointing carries gradients only out of positional tensors (``GradientCheckpointingLayer``)."""
        def self_attention(x):
            return self.self_attn(x, attention_mask=attention_mask, position_embeddings=position_embeddings,
                                  position_bias=position_bias, cache=cache, **kwargs)[0]

        def cross_attention(x):  # no positions across sequences: T5 adds no bias there, rotary is skipped
            return self.cross_attn(x, attention_mask=encoder_attention_mask, key_value_states=encoder_hidden_states,
                                   cache=cache, **kwargs)[0]

        hidden_states = self._residual(self.input_layernorm, hidden_states, self_attention)
        if self.is_decoder:
            hidden_states = self._residual(self.cross_attention_layernorm, hidden_states, cross_attention)
        return self._residual(self.post_attention_layernorm, hidden_states, self.mlp)


class HfGenSeq2SeqPreTrainedModel(HfGenPreTrainedModel):
    config_class = HfGenSeq2SeqConfig
    config: HfGenSeq2SeqConfig
    _no_split_modules = ["HfGenSeq2SeqLayer"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """hfgen's N(0, initializer_range) everywhere, or with ``initializer_scheme="t5"`` T5's scales (see
        :class:`HfGenSeq2SeqConfig`): each projection's std is ``fan_in**-0.5`` so that its outputs have unit
        variance, and token embeddings have std 1. Weights of the classification head keep the normal scheme."""
        super()._init_weights(module)
        config = self.config
        if getattr(config, "initializer_scheme", "normal") != "t5":
            return
        width = config.hidden_size
        if isinstance(module, nn.Embedding) and tuple(module.weight.shape) == (config.vocab_size, width):
            init.normal_(module.weight, mean=0.0, std=1.0)  # the shared token embedding (relative biases differ)
        elif isinstance(module, (nn.Linear, nn.Embedding)):
            # transformers calls this per module that holds parameters: the projections, never the attention / MLP
            # blocks around them, so a projection's role comes from a map of this model's blocks.
            std = _t5_init_stds(self).get(id(module))
            if std is not None:
                init.normal_(module.weight, mean=0.0, std=std)

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Used by ``DataCollatorForSeq2Seq`` (and by ``forward`` when only ``labels`` are given)."""
        return shift_tokens_right(labels, self.config.decoder_start_token_id, self.config.pad_token_id)


def _t5_init_stds(model: nn.Module) -> dict[int, float]:
    """``id(module) -> std`` of T5's initialisation for every projection of ``model`` and the relative position bias
    table (see ``initializer_scheme``)."""
    config = model.config
    width = config.hidden_size
    stds: dict[int, float] = {}
    lm_head = getattr(model, "lm_head", None)
    if isinstance(lm_head, nn.Linear):
        stds[id(lm_head)] = 1.0  # untied (tied: it is the embedding, which the embedding branch draws)
    for block in model.modules():
        bias = getattr(block, "relative_attention_bias", None)
        if isinstance(bias, nn.Embedding):  # T5's relative position bias table
            stds[id(bias)] = width**-0.5
        if isinstance(block, HfGenAttention):
            # T5 folds 1/sqrt(head_dim) into the query weights because it does not scale QK^T.
            stds[id(block.q_proj)] = width**-0.5 * (block.head_dim**-0.5 if config.attention_scoring == "dot_product"
                                                    else 1.0)
            stds[id(block.k_proj)] = stds[id(block.v_proj)] = width**-0.5
            stds[id(block.o_proj)] = block.o_proj.in_features**-0.5
        elif isinstance(block, HfGenMLP):
            for name in ("gate_proj", "up_proj"):
                if hasattr(block, name):
                    stds[id(getattr(block, name))] = width**-0.5
            stds[id(block.down_proj)] = block.down_proj.in_features**-0.5
    return stds


class _HfGenSeq2SeqStack(HfGenSeq2SeqPreTrainedModel):
    """What the encoder and the decoder share: token embedding (the model's shared one), positions, layers, final
    norm. A ``PreTrainedModel`` of its own so that ``generate`` can run the encoder alone (``get_encoder()``) and
    each stack records its own hidden states and attentions."""

    is_decoder = False

    def __init__(self, config: HfGenSeq2SeqConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        add_position_modules(self, config, bidirectional=not self.is_decoder)
        count = config.num_decoder_layers if self.is_decoder else config.num_hidden_layers
        self.layers = nn.ModuleList([HfGenSeq2SeqLayer(config, i, self.is_decoder) for i in range(count)])
        # Post-norm layers end normalised already; a final norm is the pre-norm design's counterpart.
        self.norm = build_norm(config) if config.norm_position == "pre" else nn.Identity()
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.gradient_checkpointing = False
        self.post_init()
        # post_init gave this stack the config's plans, which name modules of the whole model ("encoder.layers.*"):
        # keep this stack's part, relative to it, so that the model's merged plan names each module once, correctly.
        prefix = "decoder." if self.is_decoder else "encoder."
        self._tp_plan = {name[len(prefix):]: style for name, style in (config.base_model_tp_plan or {}).items()
                         if name.startswith(prefix)}
        self._pp_plan = {}

    def _shape_reference(self, input_ids, inputs_embeds) -> torch.Tensor:
        """What transformers' mask builders read (batch, length, dtype, device), before any embedding is computed."""
        if (input_ids is None) == (inputs_embeds is None):
            side = "decoder_" if self.is_decoder else ""
            raise ValueError(f"Pass exactly one of {side}input_ids or {side}inputs_embeds.")
        if inputs_embeds is not None:
            return inputs_embeds
        return torch.empty((*input_ids.shape[:2], 0), dtype=self.embed_tokens.weight.dtype, device=input_ids.device)

    def _run(self, input_ids, inputs_embeds, attention_mask, position_ids, past_length: int, layer_kwargs: dict):
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if position_ids is None:
            position_ids = positions_from_mask(attention_mask, inputs_embeds.shape[1], past_length,
                                               inputs_embeds.device)
        hidden_states, rotary, bias = position_inputs(self, self.config, inputs_embeds, position_ids, past_length,
                                                      cached=layer_kwargs.get("cache") is not None)
        hidden_states = self.dropout(hidden_states)
        encoder_states = layer_kwargs.pop("encoder_hidden_states", None)
        for layer in self.layers:
            hidden_states = layer(hidden_states, bias, encoder_states, position_embeddings=rotary, **layer_kwargs)
        return self.dropout(self.norm(hidden_states))


class HfGenSeq2SeqEncoder(_HfGenSeq2SeqStack):
    """Bidirectional self-attention over the input. Returns ``BaseModelOutput``."""

    _can_record_outputs = {"hidden_states": HfGenSeq2SeqLayer, "attentions": HfGenAttention}

    @merge_with_config_defaults
    @capture_outputs
    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, position_ids: torch.LongTensor | None = None,
                **kwargs: Unpack[TransformersKwargs]) -> BaseModelOutput:
        reference = self._shape_reference(input_ids, inputs_embeds)
        check_inputs(self.config, input_ids, inputs_embeds, attention_mask, 0, position_ids)
        mask = create_bidirectional_mask(config=self.config, inputs_embeds=reference, attention_mask=attention_mask)
        hidden_states = self._run(input_ids, inputs_embeds, attention_mask, position_ids, 0,
                                  dict(attention_mask=mask, **kwargs))
        return BaseModelOutput(last_hidden_state=hidden_states)


class HfGenSeq2SeqDecoder(_HfGenSeq2SeqStack):
    """Causal self-attention over the target so far, cross-attention over the encoder output. With ``use_cache``
    it keeps an ``EncoderDecoderCache``: the self-attention keys/values grow by a token a step, the
    cross-attention ones are projected from the encoder output once and reused."""

    is_decoder = True
    _can_record_outputs = {
        "hidden_states": OutputRecorder(HfGenSeq2SeqLayer, index=0, num_hidden_layers_key="num_decoder_layers"),
        "attentions": OutputRecorder(HfGenAttention, index=1, layer_name="self_attn"),
        "cross_attentions": OutputRecorder(HfGenAttention, index=1, layer_name="cross_attn"),
    }

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")  # transformers >= 5.24 calls it cache
    @merge_with_config_defaults
    @capture_outputs
    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                encoder_hidden_states: torch.Tensor | None = None, encoder_attention_mask: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, position_ids: torch.LongTensor | None = None,
                cache: Cache | None = None, use_cache: bool | None = None,
                **kwargs: Unpack[TransformersKwargs]) -> BaseModelOutputWithPastAndCrossAttentions:
        reference = self._shape_reference(input_ids, inputs_embeds)
        if encoder_hidden_states is None:
            raise ValueError("The decoder cross-attends to the encoder output: pass encoder_hidden_states.")
        check_encoder_output(encoder_hidden_states, self.config.hidden_size,
                             "encoder_hidden_states (encoder_outputs.last_hidden_state)")
        if use_cache and cache is None:
            cache = EncoderDecoderCache(DynamicCache(config=self.config), DynamicCache(config=self.config))
        elif isinstance(cache, Cache) and not isinstance(cache, EncoderDecoderCache):
            # A bare cache holds self-attention only: give cross-attention a cache of its own.
            cache = EncoderDecoderCache(cache, DynamicCache(config=self.config))
        self_cache = cache.self_attention_cache if cache is not None else None
        past_length = self_cache.get_seq_length() if self_cache is not None else 0
        check_inputs(self.config, input_ids, inputs_embeds, attention_mask, past_length, position_ids, "decoder_")
        if reference.shape[0] != encoder_hidden_states.shape[0]:
            raise ValueError(f"The decoder inputs hold {reference.shape[0]} rows but the encoder output "
                             f"{encoder_hidden_states.shape[0]}: one target per source.")
        check_encoder_mask(encoder_attention_mask, encoder_hidden_states)
        if position_ids is None:
            position_ids = torch.arange(reference.shape[1], device=reference.device).unsqueeze(0) + past_length
        mask = create_causal_mask(config=self.config, inputs_embeds=reference, attention_mask=attention_mask,
                                  cache=self_cache, position_ids=position_ids)
        cross_mask = create_bidirectional_mask(config=self.config, inputs_embeds=reference,
                                               attention_mask=encoder_attention_mask,
                                               encoder_hidden_states=encoder_hidden_states)
        layer_kwargs = dict(attention_mask=mask, encoder_hidden_states=encoder_hidden_states,
                            encoder_attention_mask=cross_mask, cache=cache, **kwargs)
        hidden_states = self._run(input_ids, inputs_embeds, attention_mask, position_ids, past_length, layer_kwargs)
        return BaseModelOutputWithPastAndCrossAttentions(last_hidden_state=hidden_states,
                                                         cache=cache if use_cache else None)


def check_encoder_mask(mask: torch.Tensor | None, encoder_hidden_states: torch.Tensor) -> None:
    if mask is not None and mask.dim() == 2 and tuple(mask.shape) != tuple(encoder_hidden_states.shape[:2]):
        raise ValueError(f"attention_mask (of the encoder input) has shape {tuple(mask.shape)}, expected "
                         f"{tuple(encoder_hidden_states.shape[:2])}: one column per encoder token.")


def resolve_cross_attention_mask(attention_mask: torch.Tensor | None,
                                 cross_attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """The 2D mask of the encoder tokens the decoder may read: ``cross_attention_mask``, else a 2D
    ``attention_mask``. A 4D ``attention_mask`` (the encoder's own, e.g. a gist mask) needs the 2D one beside it."""
    if cross_attention_mask is None:
        if attention_mask is not None and attention_mask.dim() == 4:
            raise ValueError("A 4D attention_mask masks the encoder's self-attention only: pass cross_attention_mask "
                             "[batch, source length] (1 = the decoder may read that encoder token) beside it.")
        return attention_mask
    if cross_attention_mask.dim() != 2:
        raise ValueError(f"cross_attention_mask must be 2D [batch, source length]; got shape "
                         f"{tuple(cross_attention_mask.shape)}.")
    return cross_attention_mask


class HfGenSeq2SeqModel(HfGenSeq2SeqPreTrainedModel):
    """Encoder and decoder sharing one token embedding. Returns ``Seq2SeqModelOutput``."""

    # Always tied, whatever tie_word_embeddings says (that key is about the LM head): see get_expanded_tied_weights_keys.
    _tied_weights_keys = {"encoder.embed_tokens.weight": "shared.weight", "decoder.embed_tokens.weight": "shared.weight"}

    def __init__(self, config: HfGenSeq2SeqConfig):
        super().__init__(config)
        self.shared = nn.Embedding(config.vocab_size, config.hidden_size)
        self.encoder = HfGenSeq2SeqEncoder(config)
        self.decoder = HfGenSeq2SeqDecoder(config)
        self.post_init()

    def get_expanded_tied_weights_keys(self, all_submodels: bool = False) -> dict:
        if all_submodels:
            return super().get_expanded_tied_weights_keys(all_submodels=True)
        return dict(self._tied_weights_keys)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.shared

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.shared = value
        self.encoder.embed_tokens = value
        self.decoder.embed_tokens = value

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")  # transformers >= 5.24 calls it cache
    @can_return_tuple
    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                decoder_input_ids: torch.LongTensor | None = None, decoder_attention_mask: torch.Tensor | None = None,
                encoder_outputs: BaseModelOutput | tuple | None = None, cache: Cache | None = None,
                inputs_embeds: torch.Tensor | None = None, decoder_inputs_embeds: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, decoder_position_ids: torch.LongTensor | None = None,
                use_cache: bool | None = None, cross_attention_mask: torch.Tensor | None = None,
                **kwargs: Unpack[TransformersKwargs]) -> Seq2SeqModelOutput:
        """``cross_attention_mask`` (``[batch, source length]``, 1 = readable): the encoder tokens the decoder may
        read; by default ``attention_mask``. It is needed when ``attention_mask`` is a 4D mask of the encoder's
        self-attention (a gist mask, ``gist_seq2seq.py``), which does not say what the decoder may read."""
        cross_attention_mask = resolve_cross_attention_mask(attention_mask, cross_attention_mask)
        if decoder_input_ids is None and decoder_inputs_embeds is None:
            raise ValueError(
                "The decoder has no input: pass decoder_input_ids or decoder_inputs_embeds, or labels to "
                "HfGenSeq2SeqForConditionalGeneration (it shifts them right behind decoder_start_token_id="
                f"{self.config.decoder_start_token_id})."
            )
        if encoder_outputs is None:
            encoder_outputs = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                                           inputs_embeds=inputs_embeds, position_ids=position_ids, **kwargs)
        elif not isinstance(encoder_outputs, BaseModelOutput):
            encoder_outputs = BaseModelOutput(*encoder_outputs)
        decoder_outputs = self.decoder(
            input_ids=decoder_input_ids, attention_mask=decoder_attention_mask, inputs_embeds=decoder_inputs_embeds,
            position_ids=decoder_position_ids, encoder_hidden_states=encoder_outputs.last_hidden_state,
            encoder_attention_mask=cross_attention_mask, cache=cache, use_cache=use_cache, **kwargs)
        return Seq2SeqModelOutput(
            last_hidden_state=decoder_outputs.last_hidden_state,
            cache=decoder_outputs.cache,
            decoder_hidden_states=decoder_outputs.hidden_states,
            decoder_attentions=decoder_outputs.attentions,
            cross_attentions=decoder_outputs.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
        )


class HfGenSeq2SeqForConditionalGeneration(HfGenSeq2SeqPreTrainedModel, HfGenGenerationMixin):
    """Encoder-decoder with a language-modelling head: ``generate`` (the encoder runs once; self- and
    cross-attention caches, dynamic or static; greedy, sampling, beam search), ``Seq2SeqTrainer``, PEFT's
    ``SEQ_2_SEQ_LM`` task. ``labels`` alone give the decoder inputs (shifted right) and the loss."""

    _tied_weights_keys = {"lm_head.weight": "model.shared.weight"}

    def __init__(self, config: HfGenSeq2SeqConfig):
        super().__init__(config)
        self.model = HfGenSeq2SeqModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @classmethod
    def from_t5(cls, t5, **config_overrides) -> HfGenSeq2SeqForConditionalGeneration:
        """A ``T5ForConditionalGeneration`` (object, folder or Hub name) as this class, with the same logits.
        The weight mapping is ``t5_conversion.T5_NAME_PAIRS``."""
        from .t5_conversion import t5_to_hfgen

        return t5_to_hfgen(t5, cls, **config_overrides)

    def to_t5(self):
        """This model as ``transformers.T5ForConditionalGeneration`` (needs T5-like keys)."""
        from .t5_conversion import hfgen_to_t5

        return hfgen_to_t5(self)

    def create_masks_for_generate(self, config, inputs_embeds, attention_mask, cache, position_ids=None,
                                  **kwargs):
        """The decoder's mask for compiled (static-cache) generation: plain causal over the self-attention cache
        (built from the self-attention half of the ``EncoderDecoderCache``)."""
        if isinstance(cache, EncoderDecoderCache):
            cache = cache.self_attention_cache
        return create_causal_mask(config=config, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                  cache=cache, position_ids=position_ids)

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")  # transformers >= 5.24 calls it cache
    @can_return_tuple
    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                decoder_input_ids: torch.LongTensor | None = None, decoder_attention_mask: torch.Tensor | None = None,
                encoder_outputs: BaseModelOutput | tuple | None = None, cache: Cache | None = None,
                inputs_embeds: torch.Tensor | None = None, decoder_inputs_embeds: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, decoder_position_ids: torch.LongTensor | None = None,
                labels: torch.LongTensor | None = None, use_cache: bool | None = None,
                logits_to_keep: int | torch.Tensor = 0, cross_attention_mask: torch.Tensor | None = None,
                **kwargs: Unpack[TransformersKwargs]) -> Seq2SeqLMOutput:
        """``labels``: the target ids, -100 where ignored. Without decoder inputs they are shifted right into
        ``decoder_input_ids``; the loss compares position i's logits with ``labels[:, i]`` (no further shift).
        ``cross_attention_mask``: see :meth:`HfGenSeq2SeqModel.forward` (gist training)."""
        check_logits_to_keep(logits_to_keep)
        if labels is not None:
            check_labels(self.config, labels, decoder_input_ids, decoder_inputs_embeds)
            if decoder_input_ids is None and decoder_inputs_embeds is None:
                decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
        outputs: Seq2SeqModelOutput = self.model(
            input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask, encoder_outputs=encoder_outputs,
            cache=cache, inputs_embeds=inputs_embeds, decoder_inputs_embeds=decoder_inputs_embeds,
            position_ids=position_ids, decoder_position_ids=decoder_position_ids, use_cache=use_cache,
            cross_attention_mask=cross_attention_mask, **kwargs)
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        hidden_states = hidden_states[:, keep, :]
        if self.config.scale_decoder_outputs:  # T5: the tied embedding as output projection, rescaled
            hidden_states = hidden_states * self.config.hidden_size**-0.5
        logits = self.lm_head(hidden_states)
        loss = None
        if labels is not None:
            loss = ForMaskedLMLoss(logits, labels, self.config.vocab_size,
                                   num_items_in_batch=kwargs.get("num_items_in_batch"))
        # Every other field (caches, encoder output, hidden states, attentions) has the same name in both outputs.
        return Seq2SeqLMOutput(loss=loss, logits=logits,
                               **{k: v for k, v in outputs.items() if k != "last_hidden_state"})


class HfGenSeq2SeqForSequenceClassification(HfGenSeq2SeqPreTrainedModel):
    """Classification / regression of the whole input as transformers' ``T5ForSequenceClassification`` and
    ``BartForSequenceClassification`` do it: the decoder reads the input shifted right behind
    ``decoder_start_token_id`` (when no decoder input is given), and the decoder's state at the input's last
    non-padded token (the eos) goes through a head ``dense -> tanh -> out_proj`` (T5's ``T5ClassificationHead``;
    dropout ``hidden_dropout``). ``problem_type`` as in transformers. A span-corruption checkpoint loads into it
    (the head is new). Works with ``pipeline("text-classification")``."""

    # Its loss is a per-batch mean (num_items_in_batch unused): without this, Trainer sees **kwargs in forward,
    # scales the loss by the number of processes for a token-sum loss it is not, and N processes train apart.
    accepts_loss_kwargs = False

    def __init__(self, config: HfGenSeq2SeqConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = HfGenSeq2SeqModel(config)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                decoder_input_ids: torch.LongTensor | None = None, decoder_attention_mask: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, decoder_inputs_embeds: torch.Tensor | None = None,
                labels: torch.LongTensor | None = None,
                **kwargs: Unpack[TransformersKwargs]) -> Seq2SeqSequenceClassifierOutput:
        """``attention_mask`` (1 = token) also says where each row's last token is; without decoder inputs the
        decoder reads ``input_ids`` shifted right (``input_ids`` needed then)."""
        check_classification_labels(self.config, labels, input_ids, inputs_embeds)
        if decoder_input_ids is None and decoder_inputs_embeds is None:
            if input_ids is None:
                raise ValueError("HfGenSeq2SeqForSequenceClassification needs input_ids (the decoder reads them "
                                 "shifted right) unless decoder_input_ids or decoder_inputs_embeds are given.")
            decoder_input_ids = shift_tokens_right(input_ids, self.config.decoder_start_token_id,
                                                   self.config.pad_token_id)
        outputs: Seq2SeqModelOutput = self.model(
            input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask, inputs_embeds=inputs_embeds,
            decoder_inputs_embeds=decoder_inputs_embeds, **kwargs)
        hidden_states = outputs.last_hidden_state
        length = hidden_states.shape[1]
        if attention_mask is None or attention_mask.dim() != 2:
            last = torch.full(hidden_states.shape[:1], length - 1, device=hidden_states.device)
        else:  # the last position holding a token (right or left padding)
            positions = torch.arange(length, device=hidden_states.device)
            last = (attention_mask.to(hidden_states.device).bool() * (positions + 1)).argmax(-1)
        pooled = hidden_states[torch.arange(hidden_states.shape[0], device=hidden_states.device), last]
        pooled = torch.tanh(self.dense(self.dropout(pooled)))
        logits = self.out_proj(self.dropout(pooled))
        loss = None
        if labels is not None:
            loss = self.loss_function(labels=labels, pooled_logits=logits, config=self.config)
        return Seq2SeqSequenceClassifierOutput(
            loss=loss, logits=logits, **{k: v for k, v in outputs.items() if k != "last_hidden_state"})
