"""Image + text -> model inputs for ``hfgen_vlm``: an image processor (any image -> ``pixel_values``) and a
processor that joins it with the tokenizer and writes the image placeholders. Both save beside the model
(``preprocessor_config.json``, ``processor_config.json``) and load with ``AutoProcessor``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor
from transformers.processing_utils import ProcessorMixin

from .model_card import HfGenHubCardMixin

IMAGE_PLACEHOLDER = "<image>"


def _to_tensor(image) -> torch.Tensor:
    """One image (PIL, numpy ``[H, W]`` / ``[H, W, C]``, torch ``[C, H, W]`` / ``[H, W]``) -> float ``[C, H, W]`` in
    [0, 1]. Integer images are read as 0..255; float images as already in [0, 1], or in [-1, 1] when negative."""
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL
        image = np.asarray(image)
    if isinstance(image, np.ndarray):
        tensor = torch.from_numpy(np.array(image))  # a copy: PIL arrays are read-only
        if tensor.dim() == 3:
            tensor = tensor.permute(2, 0, 1)
    elif isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
    else:
        raise ValueError(f"Unsupported image type {type(image).__name__}; valid: PIL.Image, numpy array, torch tensor.")
    if tensor.dim() == 2:
        tensor = tensor.unsqueeze(0)
    if tensor.dim() != 3:
        raise ValueError(f"An image must have 2 or 3 dimensions, got shape {tuple(tensor.shape)}.")
    if not tensor.is_floating_point():
        return tensor.float() / 255.0
    tensor = tensor.float()
    return (tensor + 1) / 2 if tensor.min() < 0 else tensor


class HfGenVlmImageProcessor(BaseImageProcessor):
    """Images -> ``pixel_values`` ``[N, num_channels, image_size, image_size]`` in [-1, 1]: channels converted
    (RGB -> grey by mean, grey -> RGB by repetition), resized (bilinear, antialiased), then
    ``(x - image_mean) / image_std``. Defaults: the digit images' range used by ``hfgen.data.images``."""

    model_input_names = ["pixel_values"]

    def __init__(self, image_size: int = 16, num_channels: int = 1, image_mean: float = 0.5, image_std: float = 0.5,
                 **kwargs):
        super().__init__(**kwargs)
        self.image_size = image_size
        self.num_channels = num_channels
        self.image_mean = image_mean
        self.image_std = image_std

    def __call__(self, images, return_tensors: str | None = "pt", **kwargs) -> BatchFeature:
        return self.preprocess(images, return_tensors=return_tensors, **kwargs)

    def preprocess(self, images, return_tensors: str | None = "pt", **kwargs) -> BatchFeature:
        if isinstance(images, torch.Tensor) and images.dim() == 4:
            images = list(images)
        elif isinstance(images, np.ndarray) and images.ndim == 4:
            images = list(images)
        elif not isinstance(images, (list, tuple)):
            images = [images]
        out = []
        for image in images:
            tensor = _to_tensor(image)
            if tensor.shape[0] != self.num_channels:
                if self.num_channels == 1:
                    tensor = tensor.mean(0, keepdim=True)
                elif tensor.shape[0] == 1:
                    tensor = tensor.expand(self.num_channels, -1, -1)
                else:
                    raise ValueError(f"Cannot convert an image with {tensor.shape[0]} channels to "
                                     f"{self.num_channels}.")
            if tuple(tensor.shape[1:]) != (self.image_size, self.image_size):
                tensor = F.interpolate(tensor[None], size=(self.image_size, self.image_size), mode="bilinear",
                                       antialias=True, align_corners=False)[0].clamp(0, 1)
            out.append((tensor - self.image_mean) / self.image_std)
        pixel_values = torch.stack(out) if out else torch.zeros(0, self.num_channels, self.image_size, self.image_size)
        return BatchFeature({"pixel_values": pixel_values}, tensor_type=return_tensors)


class HfGenVlmProcessor(HfGenHubCardMixin, ProcessorMixin):  # mixin: push_to_hub writes hfgen's card
    """Text with ``<image>`` placeholders + images -> ``input_ids``, ``attention_mask``, ``pixel_values``.

    Each ``<image>`` becomes ``num_image_tokens`` copies of the image token (one per patch for early fusion and
    projection, one marker for cross-attention). The number of images must equal the number of placeholders.
    Text without any placeholder but with one image per row gets the placeholder prepended (what
    ``pipeline("image-text-to-text")`` sends for a plain prompt).
    """

    def __init__(self, image_processor=None, tokenizer=None, image_token: str = IMAGE_PLACEHOLDER,
                 num_image_tokens: int = 1, chat_template: str | None = None, **kwargs):
        self.image_token = image_token
        self.num_image_tokens = num_image_tokens
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    @property
    def image_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.image_token)

    def __call__(self, images=None, text=None, padding: bool | str = True, return_tensors: str | None = "pt",
                 **kwargs) -> BatchFeature:
        if text is None:
            raise ValueError("HfGenVlmProcessor needs text (with one <image> placeholder per image).")
        texts = [text] if isinstance(text, str) else list(text)
        if images is not None and not isinstance(images, (list, tuple)):
            images = list(images) if isinstance(images, torch.Tensor) and images.dim() == 4 else [images]
        images = [] if images is None else [i for row in images for i in (row if isinstance(row, (list, tuple))
                                                                           else [row])]
        counts = [t.count(self.image_token) for t in texts]
        if sum(counts) == 0 and len(images) == len(texts) and images:
            texts, counts = [self.image_token + t for t in texts], [1] * len(texts)
        if sum(counts) != len(images):
            more = " (more images than image placeholders)" if len(images) > sum(counts) else ""
            raise ValueError(f"Got {len(images)} image(s) but {sum(counts)} {self.image_token} placeholder(s) in the "
                             f"text{more}; write one {self.image_token} per image.")
        expanded = [t.replace(self.image_token, self.image_token * self.num_image_tokens) for t in texts]
        kwargs.pop("add_special_tokens", None)
        encoded = self.tokenizer(expanded, padding=padding, return_tensors=return_tensors, add_special_tokens=False,
                                 **{k: v for k, v in kwargs.items() if k in ("truncation", "max_length",
                                                                             "padding_side")})
        data = dict(encoded)
        if images:
            data["pixel_values"] = self.image_processor(images, return_tensors=return_tensors)["pixel_values"]
        return BatchFeature(data, tensor_type=return_tensors)

    def batch_decode(self, *args, **kwargs) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs) -> str:
        return self.tokenizer.decode(*args, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values"]
