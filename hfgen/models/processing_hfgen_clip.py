"""Texts and images -> inputs of ``hfgen_clip``, as transformers' ``CLIPProcessor``: the tokenizer for the texts,
hfgen's image processor (:class:`HfGenVlmImageProcessor`: any image -> ``pixel_values`` of the tower's size and
channels, in [-1, 1]) for the images. Both parts save beside the model, so ``AutoProcessor``,
``AutoImageProcessor``, ``AutoTokenizer`` and ``pipeline("zero-shot-image-classification")`` load them from the
folder.
"""

from __future__ import annotations

from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

from .model_card import HfGenHubCardMixin
from .processing_hfgen_vlm import HfGenVlmImageProcessor


def clip_image_processor(config) -> HfGenVlmImageProcessor:
    """The image processor matching an :class:`HfGenClipConfig`'s image tower (size and channels)."""
    vision = config.vision_config
    return HfGenVlmImageProcessor(image_size=vision.image_size, num_channels=vision.num_channels)


class HfGenClipProcessor(HfGenHubCardMixin, ProcessorMixin):  # mixin: push_to_hub writes hfgen's card
    """``processor(text=..., images=...)`` -> ``input_ids``, ``attention_mask`` (and the tokenizer's other outputs)
    for the texts, ``pixel_values`` for the images; either may be left out."""

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        super().__init__(image_processor, tokenizer)

    def __call__(self, text=None, images=None, padding: bool | str = True, return_tensors: str | None = "pt",
                 **kwargs) -> BatchFeature:
        if text is None and images is None:
            raise ValueError("HfGenClipProcessor needs text, images or both; got neither.")
        data = {}
        if text is not None:
            data.update(self.tokenizer(text, padding=padding, return_tensors=return_tensors, **kwargs))
        if images is not None:
            data["pixel_values"] = self.image_processor(images, return_tensors=return_tensors)["pixel_values"]
        return BatchFeature(data, tensor_type=return_tensors)
