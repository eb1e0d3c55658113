"""hfgen's vision encoder (``hfgen_vit``): ViT (Dosovitskiy et al. 2021) built from hfgen's shared attention layer.

An image is cut into ``patch_size`` squares, each flattened and mapped to a vector by one linear layer (the same
map as ViT's stride-``patch_size`` convolution), given a position, and encoded by bidirectional transformer layers.
The output is one vector per patch -- what the late-fusion vision-language models (``hfgen_vlm``) feed to a decoder.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils.output_capturing import capture_outputs
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs

from .attention import HfGenAttention
from .configuration_hfgen_vit import HfGenViTConfig
from .input_checks import check_finite
from .layers import HfGenMLP, build_norm, residual
from .modeling_common import HfGenPreTrainedModel
from .position_inputs import add_position_modules, position_inputs


def patchify(pixel_values: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``[N, C, H, W]`` -> ``[N, (H/p)(W/p), C p p]``: patches in row-major order, each flattened channel-first
    (the order of a ``Conv2d(C, D, p, stride=p)`` weight, so a ViT convolution's weight loads as ``W.flatten(1)``)."""
    n, c, h, w = pixel_values.shape
    p = patch_size
    patches = pixel_values.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(n, (h // p) * (w // p), c * p * p)


def check_pixel_values(config: HfGenViTConfig, pixel_values: torch.Tensor) -> None:
    """A clear error for images of the wrong shape or dtype, or holding NaN or inf, before any weight is used."""
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 4:
        shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
        raise ValueError(f"pixel_values must be a 4D tensor [images, channels, height, width]; got {shape}.")
    _, c, h, w = pixel_values.shape
    p = config.patch_size
    if h % p or w % p:
        raise ValueError(f"Image size {h}x{w} is not divisible by the patch size {p}: resize the images to "
                         f"{config.image_size}x{config.image_size} (the processor does this).")
    if (c, h, w) != (config.num_channels, config.image_size, config.image_size):
        raise ValueError(f"pixel_values have shape [.., {c}, {h}, {w}]; this model takes "
                         f"[.., {config.num_channels}, {config.image_size}, {config.image_size}] "
                         f"(num_channels, image_size, image_size).")
    if not pixel_values.is_floating_point():
        raise ValueError(f"pixel_values must be floating point (scaled images), got dtype {pixel_values.dtype}.")
    if pixel_values.shape[0] == 0:
        raise ValueError(f"pixel_values hold no image (shape {tuple(pixel_values.shape)}): pass None instead.")
    check_finite("pixel_values", pixel_values)


class HfGenViTPatchEmbedding(nn.Module):
    """Flattened patches -> vectors of ``hidden_size`` (ViT's patch embedding, as a linear layer)."""

    def __init__(self, config: HfGenViTConfig, hidden_size: int | None = None):
        super().__init__()
        self.patch_size = config.patch_size
        self.proj = nn.Linear(config.patch_dim, hidden_size or config.hidden_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.proj(patchify(pixel_values.to(self.proj.weight.dtype), self.patch_size))


class HfGenViTLayer(GradientCheckpointingLayer):
    """Bidirectional self-attention then MLP, each in a residual connection (pre-norm in ViT)."""

    def __init__(self, config: HfGenViTConfig, layer_idx: int):
        super().__init__()
        self.pre_norm = config.norm_position == "pre"
        self.self_attn = HfGenAttention(config, layer_idx, is_causal=False)
        self.mlp = HfGenMLP(config)
        self.input_layernorm = build_norm(config)
        self.post_attention_layernorm = build_norm(config)

    def forward(self, hidden_states: torch.Tensor, position_bias=None, position_embeddings=None,
                **kwargs: Unpack[TransformersKwargs]) -> torch.Tensor:
        """``position_bias`` second and positional: reentrant gradient checkpointing carries gradients only out of
        positional tensors, and a relative-position bias is trained."""
        def attend(states: torch.Tensor) -> torch.Tensor:
            return self.self_attn(states, attention_mask=None, position_embeddings=position_embeddings,
                                  position_bias=position_bias, **kwargs)[0]

        hidden_states = residual(hidden_states, self.input_layernorm, self.pre_norm, attend)
        return residual(hidden_states, self.post_attention_layernorm, self.pre_norm, self.mlp)


class HfGenViTPreTrainedModel(HfGenPreTrainedModel):
    config_class = HfGenViTConfig
    config: HfGenViTConfig
    base_model_prefix = "vision_model"
    main_input_name = "pixel_values"
    _no_split_modules = ["HfGenViTLayer"]
    _can_record_outputs = {"hidden_states": HfGenViTLayer, "attentions": HfGenAttention}


class HfGenViTModel(HfGenViTPreTrainedModel):
    """Patch embedding, positions, bidirectional layers, final norm. ``last_hidden_state``: ``[N, patches,
    hidden_size]``; ``pooler_output``: the mean over patches."""

    def __init__(self, config: HfGenViTConfig):
        super().__init__(config)
        self.patch_embedding = HfGenViTPatchEmbedding(config)
        add_position_modules(self, config, bidirectional=True)
        self.layers = nn.ModuleList([HfGenViTLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = build_norm(config) if config.norm_position == "pre" else nn.Identity()
        self.gradient_checkpointing = False
        self.post_init()

    @capture_outputs
    def forward(self, pixel_values: torch.Tensor, **kwargs: Unpack[TransformersKwargs]) -> BaseModelOutputWithPooling:
        check_pixel_values(self.config, pixel_values)
        embeddings = self.patch_embedding(pixel_values)
        position_ids = torch.arange(embeddings.shape[1], device=embeddings.device).unsqueeze(0)
        hidden_states, rotary, bias = position_inputs(self, self.config, embeddings, position_ids, 0)
        for layer in self.layers:
            hidden_states = layer(hidden_states, bias, position_embeddings=rotary, **kwargs)
        hidden_states = self.norm(hidden_states)
        return BaseModelOutputWithPooling(last_hidden_state=hidden_states, pooler_output=hidden_states.mean(1))
