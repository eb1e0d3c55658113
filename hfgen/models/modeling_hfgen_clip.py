"""hfgen's contrastive image-text model (``hfgen_clip``): CLIP (Radford et al. 2021) with an hfgen encoder as the
text tower and an hfgen ViT as the image tower, with transformers' ``CLIPModel`` interface: ``get_text_features``,
``get_image_features``, and a forward returning ``CLIPOutput`` (``logits_per_image``, ``logits_per_text``,
``text_embeds``, ``image_embeds`` and, with ``return_loss=True``, the symmetric contrastive loss).

Layout, CLIP's names::

    text_model.*      an HfGenEncoderModel without BERT's pooler (its own parameter names: bert-like embeddings, ...)
    vision_model.*    an HfGenViTModel
    text_projection, visual_projection   bias-free linear maps into the shared space
    logit_scale       the learned log inverse temperature
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.clip.modeling_clip import CLIPOutput
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, can_return_tuple

from .configuration_hfgen_clip import HfGenClipConfig
from .modeling_common import HfGenPreTrainedModel
from .modeling_hfgen_encoder import HfGenEncoderModel
from .modeling_hfgen_vit import HfGenViTModel


def contrastive_loss(logits_per_text: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric loss on a batch of matching pairs (row i of the texts belongs to column i of the images):
    the mean of the cross-entropy of each text over the images and of each image over the texts, both with the
    diagonal as the target."""
    targets = torch.arange(logits_per_text.shape[0], device=logits_per_text.device)
    return (F.cross_entropy(logits_per_text, targets) + F.cross_entropy(logits_per_text.t(), targets)) / 2


def masked_mean(hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """The mean of ``hidden_states`` ``[B, S, D]`` over the real tokens (``attention_mask`` 1), so that padding
    never changes a text's embedding."""
    if attention_mask is None:
        return hidden_states.mean(1)
    weights = attention_mask.to(hidden_states.dtype).unsqueeze(-1)
    return (hidden_states * weights).sum(1) / weights.sum(1).clamp(min=1)


class HfGenClipPreTrainedModel(HfGenPreTrainedModel):
    config_class = HfGenClipConfig
    config: HfGenClipConfig
    base_model_prefix = "clip"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    _no_split_modules = ["HfGenEncoderLayer", "HfGenViTLayer"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, HfGenClipModel):
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)
            # CLIP's: projections with std = width ** -0.5, so the embeddings start with unit-order norms
            init.normal_(module.text_projection.weight, std=self.config.text_config.hidden_size ** -0.5)
            init.normal_(module.visual_projection.weight, std=self.config.vision_config.hidden_size ** -0.5)


class HfGenClipModel(HfGenClipPreTrainedModel):
    """Text tower + image tower + projections into one space. ``forward(input_ids, pixel_values)`` scores every
    text against every image: ``logits_per_image[i, j] = exp(logit_scale) * cos(image_i, text_j)``. Works with
    ``pipeline("zero-shot-image-classification")`` (with :class:`HfGenClipProcessor`'s parts saved beside it)."""

    def __init__(self, config: HfGenClipConfig):
        super().__init__(config)
        self.text_model = HfGenEncoderModel(config.text_config, add_pooling_layer=False)
        self.vision_model = HfGenViTModel(config.vision_config)
        self.text_projection = nn.Linear(config.text_config.hidden_size, config.projection_dim, bias=False)
        self.visual_projection = nn.Linear(config.vision_config.hidden_size, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.text_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.text_model.set_input_embeddings(value)

    @can_return_tuple
    def get_text_features(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None,
                          token_type_ids: torch.LongTensor | None = None, position_ids: torch.LongTensor | None = None,
                          **kwargs: Unpack[TransformersKwargs]) -> BaseModelOutputWithPooling:
        """The text tower's output with ``pooler_output`` = the projected (unnormalised) text features
        ``[texts, projection_dim]``, as ``CLIPModel.get_text_features`` in transformers 5."""
        if input_ids is None:
            raise ValueError("get_text_features needs input_ids (the tokenized texts), got None.")
        outputs = self.text_model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                                  position_ids=position_ids, return_dict=True, **kwargs)
        outputs.pooler_output = self.text_projection(masked_mean(outputs.last_hidden_state, attention_mask))
        return outputs

    @can_return_tuple
    def get_image_features(self, pixel_values: torch.FloatTensor,
                           **kwargs: Unpack[TransformersKwargs]) -> BaseModelOutputWithPooling:
        """The image tower's output with ``pooler_output`` = the projected (unnormalised) image features
        ``[images, projection_dim]``."""
        if pixel_values is None:
            raise ValueError("get_image_features needs pixel_values (the processed images), got None.")
        outputs = self.vision_model(pixel_values, return_dict=True, **kwargs)
        outputs.pooler_output = self.visual_projection(outputs.pooler_output)
        return outputs

    def logit_scale_value(self) -> torch.Tensor:
        """``exp(logit_scale)``, at most ``config.max_logit_scale`` (CLIP's clipping)."""
        return self.logit_scale.exp().clamp(max=self.config.max_logit_scale)

    @can_return_tuple
    def forward(self, input_ids: torch.LongTensor | None = None, pixel_values: torch.FloatTensor | None = None,
                attention_mask: torch.Tensor | None = None, token_type_ids: torch.LongTensor | None = None,
                position_ids: torch.LongTensor | None = None, return_loss: bool | None = None,
                **kwargs: Unpack[TransformersKwargs]) -> CLIPOutput:
        """``return_loss``: the contrastive loss, which needs as many texts as images (text i describes image i)."""
        missing = [name for name, value in (("input_ids", input_ids), ("pixel_values", pixel_values)) if value is None]
        if missing:
            raise ValueError(f"HfGenClipModel.forward scores texts against images and needs both input_ids and "
                             f"pixel_values; {' and '.join(missing)} missing. For one tower alone call "
                             f"get_text_features or get_image_features.")
        if return_loss and input_ids.shape[0] != pixel_values.shape[0]:
            raise ValueError(f"return_loss=True needs one text per image (pair i = text i, image i); got "
                             f"{input_ids.shape[0]} texts and {pixel_values.shape[0]} images.")
        vision_outputs = self.get_image_features(pixel_values, **kwargs)
        text_outputs = self.get_text_features(input_ids, attention_mask, token_type_ids, position_ids, **kwargs)
        image_embeds = F.normalize(vision_outputs.pooler_output, dim=-1)
        text_embeds = F.normalize(text_outputs.pooler_output, dim=-1)
        logits_per_text = self.logit_scale_value() * text_embeds @ image_embeds.t()
        return CLIPOutput(loss=contrastive_loss(logits_per_text) if return_loss else None,
                          logits_per_image=logits_per_text.t(), logits_per_text=logits_per_text,
                          text_embeds=text_embeds, image_embeds=image_embeds, text_model_output=text_outputs,
                          vision_model_output=vision_outputs)
