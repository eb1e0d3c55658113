"""The vision-language family (``hfgen_vlm``): an hfgen decoder that reads images, by early fusion, by a projection
into its token space (LLaVA/LENS-like) or by gated cross-attention (Flamingo-like). See
:mod:`configuration_hfgen_vlm` for the three designs.

Images arrive as ``pixel_values`` ``[num_images, C, H, W]``, in the order of their placeholders in the text (row by
row). The processor (:mod:`processing_hfgen_vlm`) writes the placeholders: ``num_image_tokens`` image tokens per
image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast, ModelOutput
from transformers.utils import can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.output_capturing import OutputRecorder, capture_outputs
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs

from .attention import HfGenAttention
from .configuration_hfgen_vlm import HfGenVlmConfig
from .input_checks import HfGenGenerationMixin, check_head_inputs, mark_checked
from .layers import HfGenMLP, build_norm
from .modeling_common import HfGenPreTrainedModel, causal_lm_logits_and_loss, check_inputs
from .modeling_hfgen_decoder import HfGenDecoderLayer, HfGenDecoderModel
from .modeling_hfgen_vit import HfGenViTModel, HfGenViTPatchEmbedding, check_pixel_values
from .position_inputs import position_inputs


@dataclass
class HfGenVlmModelOutputWithPast(BaseModelOutputWithPast):
    """The decoder's output, plus ``image_hidden_states``: the image vectors the decoder saw (``[num_images,
    patches, hidden_size]``), ``None`` when no image was given."""

    image_hidden_states: torch.FloatTensor | None = None


@dataclass
class HfGenVlmCausalLMOutputWithPast(ModelOutput):
    """Language-modelling output of a vision-language model: ``loss``, ``logits``, ``cache``, ``hidden_states``,
    ``attentions`` and ``image_hidden_states``."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    image_hidden_states: torch.FloatTensor | None = None


class HfGenVlmProjector(nn.Module):
    """LLaVA-1.5's bridge: ``Linear -> act -> Linear`` from the encoder's width to the decoder's token space."""

    def __init__(self, config: HfGenVlmConfig):
        super().__init__()
        self.linear_1 = nn.Linear(config.vision_config.hidden_size, config.text_config.hidden_size)
        self.act = ACT2FN[config.projector_hidden_act]
        self.linear_2 = nn.Linear(config.text_config.hidden_size, config.text_config.hidden_size)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(image_features)))


class HfGenEarlyFusionEmbedding(nn.Module):
    """Early fusion's image "tokenizer": each flattened patch mapped by one linear layer into the decoder's token
    space, plus a learned vector per patch position (the decoder's own positions count sequence slots, not where
    a patch sits in the image)."""

    def __init__(self, config: HfGenVlmConfig):
        super().__init__()
        self.patch_embedding = HfGenViTPatchEmbedding(config.vision_config, config.text_config.hidden_size)
        self.position_embedding = nn.Embedding(config.vision_config.num_patches, config.text_config.hidden_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.patch_embedding(pixel_values) + self.position_embedding.weight


class HfGenGatedCrossAttentionLayer(nn.Module):
    """Flamingo's gated cross-attention dense block (Alayrac et al. 2022, eq. in Fig. 4):

        y = x + tanh(alpha) * attn(norm(x), image)
        y = y + tanh(beta) * mlp(norm(y))

    with ``alpha = beta = 0`` at initialisation (``config.cross_attention_gate_init``), so the frozen language
    model's output is unchanged until the gates learn to open. The attention is hfgen's shared layer (every variant of the text config), keys and values
    from the image vectors, no causal mask (every text token may look at its row's images)."""

    def __init__(self, config: HfGenVlmConfig, layer_idx: int):
        super().__init__()
        text = config.text_config
        self.cross_attn = HfGenAttention(text, layer_idx, is_causal=False, is_cross_attention=True)
        self.mlp = HfGenMLP(text)
        self.input_layernorm = build_norm(text)
        self.post_attention_layernorm = build_norm(text)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.mlp_gate = nn.Parameter(torch.zeros(1))

    def forward(self, hidden_states: torch.Tensor, image_states: torch.Tensor,
                **kwargs: Unpack[TransformersKwargs]) -> torch.Tensor:
        attended, _ = self.cross_attn(self.input_layernorm(hidden_states), key_value_states=image_states,
                                      attention_mask=None)
        hidden_states = hidden_states + torch.tanh(self.attn_gate) * attended
        return hidden_states + torch.tanh(self.mlp_gate) * self.mlp(self.post_attention_layernorm(hidden_states))


class HfGenVlmPreTrainedModel(HfGenPreTrainedModel):
    config_class = HfGenVlmConfig
    config: HfGenVlmConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    _no_split_modules = ["HfGenDecoderLayer", "HfGenViTLayer", "HfGenGatedCrossAttentionLayer"]
    # (the language model records its own layers; "self_attn" keeps the gated cross-attention blocks out)
    _can_record_outputs = {"hidden_states": HfGenDecoderLayer,
                           "attentions": OutputRecorder(HfGenAttention, index=1, layer_name="self_attn")}

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, HfGenGatedCrossAttentionLayer):
            # Flamingo: closed gates (0), the language model unchanged at the start; see cross_attention_gate_init
            gate = getattr(self.config, "cross_attention_gate_init", 0.0)
            init.constant_(module.attn_gate, gate)
            init.constant_(module.mlp_gate, gate)


class HfGenVlmModel(HfGenVlmPreTrainedModel):
    """The decoder with its image pathway: ``language_model`` (an :class:`HfGenDecoderModel`) and, by fusion,
    ``early_embedding``, or ``vision_model`` + ``multi_modal_projector``, or ``vision_model`` +
    ``vision_projection`` + ``cross_attention_layers``."""

    def __init__(self, config: HfGenVlmConfig):
        super().__init__(config)
        self.language_model = HfGenDecoderModel(config.text_config)
        if config.fusion == "early":
            self.early_embedding = HfGenEarlyFusionEmbedding(config)
        else:
            self.vision_model = HfGenViTModel(config.vision_config)
        if config.fusion == "projection":
            self.multi_modal_projector = HfGenVlmProjector(config)
        if config.fusion == "cross_attention":
            self.vision_projection = nn.Linear(config.vision_config.hidden_size, config.text_config.hidden_size)
            self.cross_attention_layer_indices = list(range(0, config.text_config.num_hidden_layers,
                                                            config.cross_attention_interval))
            self.cross_attention_layers = nn.ModuleList(
                [HfGenGatedCrossAttentionLayer(config, i) for i in self.cross_attention_layer_indices])
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.language_model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.language_model.embed_tokens = value

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[num_images, C, H, W]`` -> ``[num_images, patches, text hidden_size]``: the vectors the decoder sees."""
        check_pixel_values(self.config.vision_config, pixel_values)
        if self.config.fusion == "early":
            return self.early_embedding(pixel_values)
        features = self.vision_model(pixel_values).last_hidden_state
        if self.config.fusion == "projection":
            return self.multi_modal_projector(features)
        return self.vision_projection(features)

    def _check_images(self, input_ids: torch.Tensor | None, pixel_values: torch.Tensor | None, batch: int,
                      past_length: int) -> None:
        """Images and placeholders must match one to one (ValueError before any state changes)."""
        config = self.config
        if torch.compiler.is_compiling():  # counting placeholders syncs; generate runs its first step eagerly
            return
        if input_ids is None:
            if pixel_values is not None and config.fusion != "cross_attention":
                raise ValueError("pixel_values need input_ids: the images replace the image tokens of the text.")
            return
        images = 0 if pixel_values is None else pixel_values.shape[0]
        if past_length and not images:  # a decoding step: the images are in the cache already
            return
        markers = int((input_ids == config.image_token_id).sum())
        per_image = config.num_image_tokens
        if config.fusion == "cross_attention":
            if pixel_values is not None and images % batch:
                raise ValueError(f"Cross-attention fusion needs the same number of images in every row: got "
                                 f"{images} images for {batch} rows.")
            if past_length:  # generation steps after the first see only new tokens; the images come again
                return
        if markers != images * per_image:
            found = markers / per_image
            raise ValueError(
                f"The text holds {markers} image tokens (id {config.image_token_id}), room for "
                f"{found:g} image(s) of {per_image} token(s) each, but {images} image(s) were given"
                f"{' (more images than image placeholders)' if images > found else ''}. Write one image "
                f"placeholder per image; the processor expands each to {per_image} token(s).")

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")  # transformers >= 5.24 calls it cache
    def forward(self, input_ids: torch.LongTensor | None = None, pixel_values: torch.FloatTensor | None = None,
                attention_mask: torch.Tensor | None = None, position_ids: torch.LongTensor | None = None,
                cache: Cache | None = None, inputs_embeds: torch.Tensor | None = None, use_cache: bool | None = None,
                **kwargs: Unpack[TransformersKwargs]) -> HfGenVlmModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        for flag in ("output_hidden_states", "output_attentions"):
            # The language model records what its own config asks for: pass on what this model's config asks for.
            if kwargs.get(flag) is None and getattr(self.config, flag, False):
                kwargs[flag] = True
        text_config = self.config.text_config
        past_length = cache.get_seq_length() if cache is not None else 0
        check_inputs(text_config, input_ids, inputs_embeds, attention_mask, past_length, position_ids)
        batch = (input_ids if input_ids is not None else inputs_embeds).shape[0]
        self._check_images(input_ids, pixel_values, batch, past_length)
        use_cache = use_cache if use_cache is not None else text_config.use_cache
        if inputs_embeds is None:
            inputs_embeds = self.language_model.embed_tokens(input_ids)
        image_features = None if pixel_values is None else self.get_image_features(pixel_values)

        if self.config.fusion != "cross_attention":
            if image_features is not None:
                slots = (input_ids == self.config.image_token_id).unsqueeze(-1).expand_as(inputs_embeds)
                inputs_embeds = inputs_embeds.masked_scatter(slots, image_features.to(inputs_embeds.dtype))
            if input_ids is not None:  # (embeddings of checked ids and images)
                mark_checked(inputs_embeds)
            outputs = self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                          position_ids=position_ids, cache=cache, use_cache=use_cache, **kwargs)
            return HfGenVlmModelOutputWithPast(last_hidden_state=outputs.last_hidden_state, cache=outputs.cache,
                                               hidden_states=outputs.hidden_states, attentions=outputs.attentions,
                                               image_hidden_states=image_features)

        image_states = None
        if image_features is not None:
            image_states = image_features.reshape(batch, -1, image_features.shape[-1])
        outputs = self._cross_attention_forward(inputs_embeds, image_states, attention_mask, position_ids, cache,
                                                use_cache, past_length, **kwargs)
        outputs.image_hidden_states = image_features
        return outputs

    @capture_outputs
    def _cross_attention_forward(self, inputs_embeds: torch.Tensor, image_states: torch.Tensor | None,
                                 attention_mask: torch.Tensor | None, position_ids: torch.LongTensor | None,
                                 cache: Cache | None, use_cache: bool, past_length: int,
                                 **kwargs: Unpack[TransformersKwargs]) -> HfGenVlmModelOutputWithPast:
        """The decoder's own loop (HfGenDecoderModel.forward) with the gated blocks in between; hidden states and
        attentions recorded as the decoder records them (the vision model runs before, outside the recording)."""
        text_config = self.config.text_config
        lm = self.language_model
        if use_cache and cache is None:
            cache = DynamicCache(config=text_config)
        if position_ids is None:
            position_ids = (torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_length)[None]
        mask = create_causal_mask(config=text_config, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                  cache=cache, position_ids=position_ids)
        hidden_states, rotary, bias = position_inputs(lm, text_config, inputs_embeds, position_ids, past_length)
        gated = dict(zip(self.cross_attention_layer_indices, self.cross_attention_layers))
        for index, layer in enumerate(lm.layers):
            if image_states is not None and index in gated:
                hidden_states = gated[index](hidden_states, image_states)
            hidden_states = layer(hidden_states, bias, attention_mask=mask, position_embeddings=rotary,
                                  cache=cache, **kwargs)
        hidden_states = lm.norm(hidden_states)
        return HfGenVlmModelOutputWithPast(last_hidden_state=hidden_states, cache=cache if use_cache else None)


class HfGenVlmForConditionalGeneration(HfGenVlmPreTrainedModel, HfGenGenerationMixin):
    """Vision-language model with a language-modelling head: captions, answers, any text about the images.
    Works with ``generate`` (cache, left padding, every decoding strategy) and
    ``pipeline("image-text-to-text")`` (with :class:`HfGenVlmProcessor`)."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}

    def __init__(self, config: HfGenVlmConfig):
        super().__init__(config)
        self.model = HfGenVlmModel(config)
        self.vocab_size = config.text_config.vocab_size
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()
        # The image placeholder is an input-only token: generate() never writes it (a generated placeholder would
        # ask for an image that is not there).
        if self.generation_config is not None:
            self.generation_config.suppress_tokens = [config.image_token_id]

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.set_input_embeddings(value)

    def language_model_parameters(self) -> list[nn.Parameter]:
        """The decoder's own parameters (embeddings, layers, norm, head): what a late fusion keeps frozen."""
        return [*self.model.language_model.parameters(), *self.lm_head.parameters()]

    def freeze_language_model(self, freeze: bool = True) -> None:
        """Stop (or restart) gradients to the language model, so only the bridge trains: the encoder and projector,
        or the encoder and the gated cross-attention blocks (or the patch embedding, for early fusion)."""
        for parameter in self.language_model_parameters():
            parameter.requires_grad_(not freeze)

    def load_language_model(self, causal_lm: nn.Module) -> None:
        """Copy a trained :class:`HfGenDecoderForCausalLM` of the same shape into the decoder and the head."""
        self.model.language_model.load_state_dict(causal_lm.model.state_dict())
        self.lm_head.load_state_dict(causal_lm.lm_head.state_dict())

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")  # transformers >= 5.24 calls it cache
    @can_return_tuple
    def forward(self, input_ids: torch.LongTensor | None = None, pixel_values: torch.FloatTensor | None = None,
                attention_mask: torch.Tensor | None = None, position_ids: torch.LongTensor | None = None,
                cache: Cache | None = None, inputs_embeds: torch.Tensor | None = None,
                labels: torch.LongTensor | None = None, use_cache: bool | None = None,
                logits_to_keep: int | torch.Tensor = 0,
                **kwargs: Unpack[TransformersKwargs]) -> HfGenVlmCausalLMOutputWithPast:
        """``labels``: the input ids (shifted inside the loss), -100 where no loss is wanted (image tokens, the
        prompt)."""
        check_head_inputs(self.config, input_ids, inputs_embeds, labels, logits_to_keep,
                          vocab_size=self.config.text_config.vocab_size)
        outputs = self.model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask,
                             position_ids=position_ids, cache=cache, inputs_embeds=inputs_embeds,
                             use_cache=use_cache, **kwargs)
        hidden_states = outputs.last_hidden_state
        logits, loss = causal_lm_logits_and_loss(self, hidden_states, logits_to_keep, labels, self.config.text_config.vocab_size,
                                                 **kwargs)
        return HfGenVlmCausalLMOutputWithPast(loss=loss, logits=logits, cache=outputs.cache,
                                              hidden_states=outputs.hidden_states, attentions=outputs.attentions,
                                              image_hidden_states=outputs.image_hidden_states)

    def prepare_inputs_for_generation(self, *args, pixel_values: torch.Tensor | None = None,
                                      inputs_embeds: torch.Tensor | None = None, **kwargs) -> dict:
        """generate() passes ``pixel_values`` at the first step only -- right for early fusion and projection,
        whose image vectors then live in the KV cache. Cross-attention reads the images at every step, so they are
        passed again (the encoder runs once per step; cheap at this size, and exact). ``inputs_embeds`` is named
        here because generate() looks for it in this signature before it accepts ``generate(inputs_embeds=...)``."""
        inputs = super().prepare_inputs_for_generation(*args, pixel_values=pixel_values, inputs_embeds=inputs_embeds,
                                                       **kwargs)
        if self.config.fusion == "cross_attention":
            inputs["pixel_values"] = pixel_values
        return inputs
