"""The Gato-like multi-domain decoder (``hfgen_gato``; Reed et al. 2022, "A Generalist Agent").

One hfgen decoder reads a stream of tokens from every domain (configuration_hfgen_gato describes the token space).
Each token's embedding is its token embedding (or, for an image placeholder, the linear embedding of one image
patch plus a learned patch-position vector) plus a learned *modality* embedding (text, image, continuous value,
action), so that a value bin and the action with the same integer are told apart. Positions within the sequence
are the decoder's own (rotary by default).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers.cache_utils import Cache
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.utils import can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs

from .configuration_hfgen_gato import MODALITIES, HfGenGatoConfig
from .input_checks import HfGenGenerationMixin, check_finite, check_head_inputs, mark_checked
from .modeling_common import causal_lm_logits_and_loss, check_inputs
from .modeling_hfgen_decoder import HfGenDecoderModel, HfGenDecoderPreTrainedModel
from .modeling_hfgen_vit import patchify


def mu_law_encode(values: torch.Tensor, mu: float = 100.0, max_value: float = 256.0) -> torch.Tensor:
    """Gato's companding: ``F(x) = sgn(x) * log(|x| * mu + 1) / log(M * mu + 1)``; ``[-M, M]`` -> ``[-1, 1]``."""
    return torch.sign(values) * torch.log1p(values.abs() * mu) / math.log(max_value * mu + 1.0)


def mu_law_decode(encoded: torch.Tensor, mu: float = 100.0, max_value: float = 256.0) -> torch.Tensor:
    """The inverse of :func:`mu_law_encode`: ``sgn(y) * ((M mu + 1)^|y| - 1) / mu``."""
    return torch.sign(encoded) * torch.expm1(encoded.abs() * math.log(max_value * mu + 1.0)) / mu


def discretize(values: torch.Tensor, num_bins: int = 1024, mu: float = 100.0, max_value: float = 256.0) -> torch.Tensor:
    """Continuous values -> bin indices ``[0, num_bins)``: mu-law companding, then ``num_bins`` uniform bins over
    [-1, 1] (Gato: 1024). Values outside the declared range ``[-max_value, max_value]`` are an error, not silently
    clipped."""
    values = torch.as_tensor(values, dtype=torch.float64)
    if not torch.isfinite(values).all():
        raise ValueError("Continuous values must be finite (no NaN or inf) to be discretised.")
    if values.numel() and values.abs().max() > max_value:
        raise ValueError(f"Continuous values must lie in the declared range [-{max_value:g}, {max_value:g}] "
                         f"(mu_law_max) to be discretised; got values from {values.min().item():g} to "
                         f"{values.max().item():g}. Rescale them or raise mu_law_max.")
    encoded = mu_law_encode(values, mu, max_value)
    return ((encoded + 1) / 2 * num_bins).floor().clamp(0, num_bins - 1).long()


def undiscretize(bins: torch.Tensor, num_bins: int = 1024, mu: float = 100.0, max_value: float = 256.0) -> torch.Tensor:
    """Bin indices -> the value at each bin's centre (in companded space), decoded back through the mu-law."""
    centres = (bins.double() + 0.5) / num_bins * 2 - 1
    return mu_law_decode(centres, mu, max_value)


class HfGenGatoForCausalLM(HfGenDecoderPreTrainedModel, HfGenGenerationMixin):
    """Gato-like decoder with a head over the whole token space. ``forward(input_ids, pixel_values=None,
    modality_ids=None, labels=None, ...)``: ``modality_ids`` (``[B, S]``, indices into :data:`MODALITIES`) default to
    what the ids say (text below ``text_vocab_size``, image for the placeholder and image tokens, continuous for the
    bins); pass
    them to mark bins as actions. Gato trains on text and action targets only: give ``labels`` -100 elsewhere."""

    config_class = HfGenGatoConfig
    config: HfGenGatoConfig
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: HfGenGatoConfig):
        super().__init__(config)
        self.model = HfGenDecoderModel(config)
        self.patch_embedding = nn.Linear(config.num_channels * config.patch_size**2, config.hidden_size)
        self.patch_position_embedding = nn.Embedding(config.num_patches, config.hidden_size)
        self.modality_embedding = nn.Embedding(len(MODALITIES), config.hidden_size)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()
        # The image placeholder is an input-only token: a generated one would ask for an image that is not there.
        if self.generation_config is not None:
            self.generation_config.suppress_tokens = [config.image_token_id, *range(config.first_image_code_id,
                                                                                    config.vocab_size)]

    def default_modality_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        c = self.config
        modality = torch.zeros_like(input_ids)
        modality[input_ids >= c.first_bin_id] = MODALITIES.index("continuous")
        modality[input_ids == c.separator_token_id] = MODALITIES.index("text")
        modality[input_ids == c.image_token_id] = MODALITIES.index("image")
        modality[input_ids >= c.first_image_code_id] = MODALITIES.index("image")  # image tokens (VQ codes)
        return modality

    def check_modalities(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None,
                         modality_ids: torch.Tensor | None, id_range: tuple[int, int] | None) -> None:
        """``modality_ids`` (shape of ``input_ids``, indices into :data:`MODALITIES`) and image placeholders that have
        an image: a placeholder without ``pixel_values`` would be embedded as a word."""
        c = self.config
        if modality_ids is not None:
            if not isinstance(modality_ids, torch.Tensor) or modality_ids.shape != input_ids.shape:
                shape = tuple(modality_ids.shape) if isinstance(modality_ids, torch.Tensor) else type(modality_ids)
                raise ValueError(f"modality_ids must have the shape of input_ids {tuple(input_ids.shape)}, got "
                                 f"{shape}.")
            if modality_ids.is_floating_point() or modality_ids.dtype == torch.bool:
                raise ValueError(f"modality_ids must hold integer indices into {MODALITIES}, got dtype "
                                 f"{modality_ids.dtype}.")
            if not torch.compiler.is_compiling():
                low, high = torch.stack(torch.aminmax(modality_ids)).tolist()
                if low < 0 or high >= len(MODALITIES):
                    names = ", ".join(f"{i}: {m}" for i, m in enumerate(MODALITIES))
                    raise ValueError(f"modality_ids must lie in [0, {len(MODALITIES)}) ({names}); got values from "
                                     f"{low} to {high}.")
        # The placeholder is the largest id of the token space, so the id range already read says whether the
        # input holds one (no second device sync per decoding step).
        if pixel_values is None and id_range is not None and id_range[1] == c.image_token_id:
            raise ValueError(f"input_ids hold the image placeholder (id {c.image_token_id}) but no pixel_values were "
                             f"given: each placeholder is replaced by one patch of an image ({c.num_patches} per "
                             f"image). Pass the images, or remove the placeholders.")

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None,
              modality_ids: torch.Tensor | None) -> torch.Tensor:
        c = self.config
        if modality_ids is None:
            modality_ids = self.default_modality_ids(input_ids)
        embeds = self.model.embed_tokens(input_ids)
        slots = input_ids == c.image_token_id
        if pixel_values is not None:
            if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != (c.num_channels, c.image_size, c.image_size):
                raise ValueError(f"pixel_values must have shape [images, {c.num_channels}, {c.image_size}, "
                                 f"{c.image_size}], got {tuple(pixel_values.shape)}.")
            check_finite("pixel_values", pixel_values)
            if not torch.compiler.is_compiling() and int(slots.sum()) != pixel_values.shape[0] * c.num_patches:
                raise ValueError(f"{int(slots.sum())} image tokens in the input, but {pixel_values.shape[0]} image(s) "
                                 f"of {c.num_patches} patches each were given (more images than image placeholders "
                                 f"when that is larger).")
            patches = self.patch_embedding(patchify(pixel_values.to(embeds.dtype), c.patch_size))
            patches = patches + self.patch_position_embedding.weight
            embeds = embeds.masked_scatter(slots.unsqueeze(-1).expand_as(embeds), patches)
        return embeds + self.modality_embedding(modality_ids)

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @can_return_tuple
    def forward(self, input_ids: torch.LongTensor | None = None, pixel_values: torch.FloatTensor | None = None,
                modality_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, cache: Cache | None = None,
                labels: torch.LongTensor | None = None, use_cache: bool | None = None,
                logits_to_keep: int | torch.Tensor = 0, **kwargs: Unpack[TransformersKwargs]) -> CausalLMOutputWithPast:
        if input_ids is None:
            raise ValueError("HfGenGatoForCausalLM needs input_ids (the mixed token stream).")
        check_head_inputs(self.config, input_ids, None, labels, logits_to_keep)
        past_length = cache.get_seq_length() if cache is not None else 0
        id_range = check_inputs(self.config, input_ids, None, attention_mask, past_length, position_ids)
        self.check_modalities(input_ids, pixel_values, modality_ids, id_range)
        outputs = self.model(inputs_embeds=mark_checked(self.embed(input_ids, pixel_values, modality_ids)),
                             attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                             use_cache=use_cache, **kwargs)
        hidden_states = outputs.last_hidden_state
        logits, loss = causal_lm_logits_and_loss(self, hidden_states, logits_to_keep, labels, self.config.vocab_size,
                                                 **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=outputs.cache,
                                      hidden_states=outputs.hidden_states, attentions=outputs.attentions)
