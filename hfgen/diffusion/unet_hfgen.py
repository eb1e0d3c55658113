"""A UNet noise predictor as a native diffusers model: residual blocks conditioned on a sinusoidal timestep
embedding (+ an optional class label), attention blocks built from hfgen's shared attention layer (every scoring
and softmax variant), optional cross-attention to text-encoder states.

Seed 002: "During forward diffusion, the model introduces noise into the input data ... in the reverse diffusion
phase, the model learns to reconstruct the original data by systematically removing the added noise." This model
is the learned part of the reverse phase: given ``x_t`` and ``t`` it predicts the noise (or ``x_0`` / ``v``,
whatever the scheduler's ``prediction_type`` says); the schedulers of diffusers do the rest.

Layout (Ho et al. 2020, as diffusers' ``UNet2DModel``): ``conv_in`` -> down levels (``layers_per_block`` residual
blocks each, attention where ``attention_levels`` says, a stride-2 convolution between levels) -> middle
(residual, attention, residual) -> up levels (one more residual block per level, each fed a skip connection,
nearest-neighbour upsampling + convolution) -> GroupNorm, SiLU, ``conv_out``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from .export_hfgen import HubExportMixin
from .embeddings_hfgen import AttentionSettings, ConditionEmbedding, attention_settings, make_attention


@dataclass
class HfGenUNet2DOutput(BaseOutput):
    """``sample``: the denoiser's prediction, the shape of its input."""

    sample: torch.Tensor


class ResnetBlock(nn.Module):
    """GroupNorm-SiLU-conv, plus the projected conditioning vector, GroupNorm-SiLU-dropout-conv, plus the input."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        # The same arithmetic as written plainly (conv1(silu(norm1(x))) + proj(silu(emb)), ...), with fewer
        # temporaries: the adds go into the convolutions' fresh outputs (a convolution's backward does not need
        # its output), and without autograd SiLU overwrites the GroupNorm output it reads.
        inplace = not torch.is_grad_enabled()
        h = self.conv1(F.silu(self.norm1(x), inplace=inplace))
        h += self.emb_proj(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h), inplace=inplace)))
        h += self.skip(x)
        return h


class SpatialAttentionBlock(nn.Module):
    """Self-attention over the ``H*W`` positions (and, with a context, cross-attention to it), both residual.

    Without a context (``encoder_hidden_states=None``, or a sample whose text mask is all zeros) the
    cross-attention adds nothing: that is the unconditional branch classifier-free guidance trains (captions
    dropped at random) and samples with."""

    def __init__(self, channels: int, groups: int, settings: AttentionSettings, cross_attention_dim: int | None):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.attn = make_attention(settings)
        self.cross_attn = None
        if cross_attention_dim is not None:
            self.norm_cross = nn.LayerNorm(channels)
            self.context_proj = nn.Linear(cross_attention_dim, channels)
            self.cross_attn = make_attention(settings, cross=True)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        # [B, HW, C] tokens, laid out once for the q/k/v projections: a view of a channels-last input, one copy
        # of a channels-first one (a transposed view would be copied by each of the three projections)
        tokens = self.norm(x).permute(0, 2, 3, 1).reshape(b, h * w, c)
        if self.cross_attn is None or context is None:
            # The attention output [B, HW, C] seen as [B, C, H, W] without a copy (channels-last strides), plus
            # the input: as diffusers' attention processor. The result stays channels-last (no copy back), which
            # the following convolutions and nearest upsampling also run faster on than on channels-first.
            return self.attn(tokens)[0].transpose(1, 2).reshape(b, c, h, w) + x
        out = x.flatten(2).transpose(1, 2) + self.attn(tokens)[0]
        out = out + cross_attend(self.cross_attn, self.norm_cross(out), self.context_proj(context), context_mask)
        return out.transpose(1, 2).reshape(b, c, h, w)


class UNetLevel(nn.Module):
    def __init__(self):
        super().__init__()
        self.resnets = nn.ModuleList()
        self.attentions = nn.ModuleList()
        self.sampler: nn.Module | None = None


def check_denoiser_inputs(model, sample: torch.Tensor, encoder_hidden_states: torch.Tensor | None,
                          factor: int, encoder_attention_mask: torch.Tensor | None = None) -> None:
    """Shape checks shared by the denoisers: channels, spatial divisibility, text-context width and mask."""
    config = model.config
    if sample.ndim != 4 or sample.shape[1] != config.in_channels:
        raise ValueError(f"sample must be [batch, {config.in_channels}, height, width] (in_channels="
                         f"{config.in_channels}), got shape {tuple(sample.shape)}.")
    if sample.shape[-1] % factor or sample.shape[-2] % factor:
        raise ValueError(f"Image size {tuple(sample.shape[-2:])} is not divisible by the model's downsampling "
                         f"factor {factor}: use a height and width that are multiples of {factor}.")
    if encoder_hidden_states is not None:
        if config.cross_attention_dim is None:
            raise ValueError("encoder_hidden_states were given but this model has no cross-attention "
                             "(cross_attention_dim=None).")
        if encoder_hidden_states.ndim != 3 or encoder_hidden_states.shape[-1] != config.cross_attention_dim:
            raise ValueError(f"encoder_hidden_states must be [batch, tokens, {config.cross_attention_dim}], got "
                             f"shape {tuple(encoder_hidden_states.shape)}.")
    if encoder_attention_mask is not None:
        if encoder_hidden_states is None:
            raise ValueError("encoder_attention_mask was given without encoder_hidden_states.")
        if tuple(encoder_attention_mask.shape) != tuple(encoder_hidden_states.shape[:2]):
            raise ValueError(f"encoder_attention_mask must be [batch, tokens] = "
                             f"{list(encoder_hidden_states.shape[:2])} (1 = text token, 0 = padding), got shape "
                             f"{tuple(encoder_attention_mask.shape)}.")


# diffusers UNet2DModel parameter names -> ours (the architecture is the same, see from_unet2d)
_UNET2D_RENAMES = (
    (r"^time_embedding\.", "condition."),
    (r"\.time_emb_proj\.", ".emb_proj."),
    (r"\.conv_shortcut\.", ".skip."),
    (r"\.group_norm\.", ".norm."),
    (r"\.to_q\.", ".attn.q_proj."),
    (r"\.to_k\.", ".attn.k_proj."),
    (r"\.to_v\.", ".attn.v_proj."),
    (r"\.to_out\.0\.", ".attn.o_proj."),
    (r"\.(downsamplers|upsamplers)\.0\.conv\.", ".sampler."),
    (r"^mid_block\.resnets\.0\.", "mid_resnet_1."),
    (r"^mid_block\.resnets\.1\.", "mid_resnet_2."),
    (r"^mid_block\.attentions\.0\.", "mid_attention."),
    (r"^conv_norm_out\.", "norm_out."),
)


def cross_attend(attention: nn.Module, tokens: torch.Tensor, context: torch.Tensor,
                 mask: torch.Tensor | None) -> torch.Tensor:
    """Cross-attention of ``tokens`` ``[B, N, C]`` to ``context`` ``[B, K, C]`` under the boolean ``[B, 1, 1, K]``
    text mask. A sample with no text token at all (an all-zero mask row: a caption dropped for classifier-free
    guidance) gets exactly zero -- the same as no context -- instead of a softmax over nothing (NaN)."""
    if mask is None:
        return attention(tokens, key_value_states=context)[0]
    has_text = mask.flatten(1).any(1)  # [B]
    out = attention(tokens, attention_mask=mask | ~has_text[:, None, None, None], key_value_states=context)[0]
    return torch.where(has_text[:, None, None], out, torch.zeros((), dtype=out.dtype, device=out.device))


def cross_attention_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """A ``[B, K]`` 1/0 padding mask of the text tokens -> the boolean ``[B, 1, 1, K]`` HfGenAttention takes."""
    return None if mask is None else mask.bool()[:, None, None, :]


class HfGenUNet2DModel(HubExportMixin, ModelMixin, ConfigMixin):
    """UNet denoiser: unconditional, class-conditional (``num_class_embeds``) and/or text-conditional
    (``cross_attention_dim``). The attention keys (``attention_scoring``, ``softmax_variant``, ...) are those of
    every hfgen family.

    Args:
        sample_size: default height and width of the images (or latents) it denoises.
        in_channels / out_channels: image channels in and out (equal for noise prediction).
        block_out_channels: channels per resolution level; ``len - 1`` halvings, so height and width must be
            multiples of ``2 ** (len(block_out_channels) - 1)``.
        layers_per_block: residual blocks per down level (up levels get one more).
        attention_levels: per level, whether its blocks are followed by attention (the middle always has one).
        num_attention_heads / num_key_value_heads: heads of every attention block.
        norm_num_groups: GroupNorm groups (must divide every channel count).
        num_class_embeds: number of classes for class conditioning (one more row: "no label"), or ``None``.
        cross_attention_dim: width of the text-encoder states to cross-attend to, or ``None``.
    """

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(self, sample_size: int = 16, in_channels: int = 1, out_channels: int = 1,
                 block_out_channels: tuple[int, ...] = (32, 64), layers_per_block: int = 1,
                 attention_levels: tuple[bool, ...] = (False, True), num_attention_heads: int = 4,
                 num_key_value_heads: int | None = None, attention_scoring: str = "scaled_dot_product",
                 softmax_variant: str = "standard", softmax_temperature: float = 1.0, attention_gate: bool = False,
                 norm_num_groups: int = 8, dropout: float = 0.0, num_class_embeds: int | None = None,
                 cross_attention_dim: int | None = None):
        super().__init__()
        channels = list(block_out_channels)
        if not channels or any(not isinstance(c, int) or c <= 0 for c in channels):
            raise ValueError(f"block_out_channels must be a non-empty list of positive integers, got {channels}.")
        if len(attention_levels) != len(channels):
            raise ValueError(f"attention_levels ({list(attention_levels)}) needs one entry per level of "
                             f"block_out_channels ({channels}).")
        if any(c % norm_num_groups for c in channels):
            raise ValueError(f"norm_num_groups={norm_num_groups} must divide every entry of block_out_channels "
                             f"{channels}.")
        if layers_per_block < 1:
            raise ValueError(f"layers_per_block must be >= 1, got {layers_per_block}.")
        emb_dim = 4 * channels[0]
        self.conv_in = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        self.condition = ConditionEmbedding(channels[0], emb_dim, num_class_embeds)

        def attention(width):
            return SpatialAttentionBlock(width, norm_num_groups, attention_settings(self.config, width),
                                         cross_attention_dim)

        self.down_blocks = nn.ModuleList()
        skip_channels = [channels[0]]
        width = channels[0]
        for i, out in enumerate(channels):
            level = UNetLevel()
            for _ in range(layers_per_block):
                level.resnets.append(ResnetBlock(width, out, emb_dim, norm_num_groups, dropout))
                level.attentions.append(attention(out) if attention_levels[i] else nn.Identity())
                width = out
                skip_channels.append(width)
            if i < len(channels) - 1:
                level.sampler = nn.Conv2d(width, width, 3, stride=2, padding=1)
                skip_channels.append(width)
            self.down_blocks.append(level)

        self.mid_resnet_1 = ResnetBlock(width, width, emb_dim, norm_num_groups, dropout)
        self.mid_attention = attention(width)
        self.mid_resnet_2 = ResnetBlock(width, width, emb_dim, norm_num_groups, dropout)

        self.up_blocks = nn.ModuleList()
        for i, out in reversed(list(enumerate(channels))):
            level = UNetLevel()
            for _ in range(layers_per_block + 1):
                level.resnets.append(ResnetBlock(width + skip_channels.pop(), out, emb_dim, norm_num_groups, dropout))
                level.attentions.append(attention(out) if attention_levels[i] else nn.Identity())
                width = out
            if i > 0:
                level.sampler = nn.Conv2d(width, width, 3, padding=1)
            self.up_blocks.append(level)

        self.norm_out = nn.GroupNorm(norm_num_groups, width)
        self.conv_out = nn.Conv2d(width, out_channels, 3, padding=1)

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (len(self.config.block_out_channels) - 1)

    @classmethod
    def from_unet2d(cls, unet, **overrides) -> HfGenUNet2DModel:
        """The same network as diffusers' unconditional ``UNet2DModel`` (positional time embedding,
        ``DownBlock2D`` / ``AttnDownBlock2D`` levels and their up counterparts, one attention head size), with its
        weights: a way to start from any such checkpoint and then switch attention variants on via ``overrides``.
        """
        c = unet.config
        supported = {"DownBlock2D", "AttnDownBlock2D", "UpBlock2D", "AttnUpBlock2D"}
        if (set(c.down_block_types) | set(c.up_block_types)) - supported or c.class_embed_type is not None or \
                c.num_class_embeds is not None or c.time_embedding_type != "positional" or not c.add_attention:
            raise ValueError(f"from_unet2d converts unconditional UNet2DModels with positional time embedding and "
                             f"blocks among {sorted(supported)}; got down {c.down_block_types}, up "
                             f"{c.up_block_types}, class_embed_type={c.class_embed_type}.")
        attention = tuple(kind == "AttnDownBlock2D" for kind in c.down_block_types)
        if attention != tuple(kind == "AttnUpBlock2D" for kind in reversed(c.up_block_types)):
            raise ValueError("from_unet2d needs attention on the same levels going down and up.")
        widths = [w for w, a in zip(c.block_out_channels, (*attention, True)) if a] or [c.block_out_channels[-1]]
        head_dim = c.attention_head_dim or widths[0]
        if any(w % head_dim for w in widths) or len({w // head_dim for w in widths}) != 1:
            raise ValueError("from_unet2d needs the same number of heads in every attention block.")
        model = cls(sample_size=c.sample_size, in_channels=c.in_channels, out_channels=c.out_channels,
                    block_out_channels=tuple(c.block_out_channels), layers_per_block=c.layers_per_block,
                    attention_levels=attention, num_attention_heads=widths[0] // head_dim,
                    norm_num_groups=c.norm_num_groups, **overrides)
        state = {}
        for key, value in unet.state_dict().items():
            for pattern, replacement in _UNET2D_RENAMES:
                key = re.sub(pattern, replacement, key)
            state[key] = value
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or any(not k.endswith(("score_weight", "score_vector", "head_gate.weight", "head_gate.bias"))
                             for k in missing):
            raise ValueError(f"from_unet2d could not map the weights: missing {missing}, unexpected {unexpected}.")
        return model.to(unet.dtype)

    def _attend(self, block: nn.Module, h: torch.Tensor, context, context_mask) -> torch.Tensor:
        return h if isinstance(block, nn.Identity) else block(h, context, context_mask)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float | int,
                class_labels: torch.Tensor | None = None, encoder_hidden_states: torch.Tensor | None = None,
                encoder_attention_mask: torch.Tensor | None = None,
                return_dict: bool = True) -> HfGenUNet2DOutput | tuple[torch.Tensor]:
        """Predict the noise of ``sample`` (``x_t``) at ``timestep``; ``class_labels`` ``[B]`` (``None`` = no
        label), ``encoder_hidden_states`` ``[B, K, cross_attention_dim]`` (``None`` = no text)."""
        check_denoiser_inputs(self, sample, encoder_hidden_states, self.downsampling_factor, encoder_attention_mask)
        if not torch.is_tensor(timestep):
            timestep = torch.tensor([timestep], device=sample.device)
        emb = self.condition(timestep.to(sample.device), sample.shape[0], class_labels, sample.dtype)
        mask = cross_attention_mask(encoder_attention_mask)

        h = self.conv_in(sample)
        skips = [h]
        for level in self.down_blocks:
            for resnet, attn in zip(level.resnets, level.attentions):
                h = self._attend(attn, resnet(h, emb), encoder_hidden_states, mask)
                skips.append(h)
            if level.sampler is not None:
                h = level.sampler(h)
                skips.append(h)
        h = self.mid_resnet_2(self.mid_attention(self.mid_resnet_1(h, emb), encoder_hidden_states, mask), emb)
        for level in self.up_blocks:
            for resnet, attn in zip(level.resnets, level.attentions):
                h = self._attend(attn, resnet(torch.cat([h, skips.pop()], dim=1), emb), encoder_hidden_states, mask)
            if level.sampler is not None:
                h = level.sampler(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        out = self.conv_out(F.silu(self.norm_out(h), inplace=not torch.is_grad_enabled()))
        if not return_dict:
            return (out,)
        return HfGenUNet2DOutput(sample=out)
