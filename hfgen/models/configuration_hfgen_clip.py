"""Configuration of hfgen's contrastive image-text model (``hfgen_clip``): CLIP (Radford et al. 2021) with an hfgen
encoder (any attention variant) as its text tower and an hfgen ViT as its image tower.

Seed 000 lists "TODO: Clip paper" under multi-modal models; seed 002 names CLIP-guided diffusion. The two towers
map a caption and an image to unit vectors of one shared space (``projection_dim``); training pulls each image
towards its own caption and away from the other captions of the batch (the symmetric contrastive loss), so that a
new image is classified by the caption it lies closest to ("zero-shot").
"""

from __future__ import annotations

import math

from .configuration_common import HfGenConfig
from .configuration_hfgen_encoder import HfGenEncoderConfig
from .configuration_hfgen_vit import HfGenViTConfig
from .variants import check_positive_int

CLIP_AUTO_MAP = {
    "AutoConfig": "configuration_hfgen_clip.HfGenClipConfig",
    "AutoModel": "modeling_hfgen_clip.HfGenClipModel",
    "AutoModelForZeroShotImageClassification": "modeling_hfgen_clip.HfGenClipModel",
}
# CLIP's starting temperature: logits = exp(logit_scale) * cosine, exp(2.6592) = 1 / 0.07.
CLIP_LOGIT_SCALE_INIT = math.log(1 / 0.07)


def tower_config(name: str, value, config_class: type, projection_dim: int):
    """``value`` (a config of ``config_class``, its dict, or None for the default) as a ``config_class``; a
    ``projection_dim`` that a sub-config carries (as transformers' CLIP sub-configs do) must equal the model's."""
    if value is None:
        return config_class()
    if isinstance(value, dict):
        value = dict(value)
        model_type = value.pop("model_type", config_class.model_type)
        if model_type != config_class.model_type:
            raise ValueError(f"{name} has model_type {model_type!r}; the {name.split('_')[0]} tower of hfgen_clip "
                             f"is {config_class.model_type!r} ({config_class.__name__}).")
        value = config_class(**value)
    if not isinstance(value, config_class):
        raise ValueError(f"{name} must be a {config_class.__name__} or its dict, got {type(value).__name__}.")
    own = getattr(value, "projection_dim", None)  # (a key the tower's config stores but never reads)
    if own is not None and own != projection_dim:
        raise ValueError(f"{name}.projection_dim ({own}) differs from projection_dim ({projection_dim}): both towers "
                         f"project into the one shared space of projection_dim dimensions.")
    return value


class HfGenClipConfig(HfGenConfig):
    r"""Configuration of :class:`HfGenClipModel`: a composite config, typed as transformers' ``CLIPConfig`` (the
    towers' configs as fields, ``sub_configs_defaults``), checked as every hfgen config is.

    Args:
        text_config (`HfGenEncoderConfig` or `dict`): the text tower, any hfgen encoder variant (attention scoring,
            softmax, positions, norms, mixture of experts).
        vision_config (`HfGenViTConfig` or `dict`): the image tower and the image geometry.
        projection_dim (`int`, 64): the size of the shared embedding space; each tower's pooled output is projected
            to it by a bias-free linear layer (CLIP's ``text_projection`` / ``visual_projection``).
        logit_scale_init_value (`float`, log(1/0.07) = 2.6592): the starting value of the learnable logit scale
            (the log of the inverse softmax temperature), CLIP's.
        max_logit_scale (`float`, 100.0): the logits are at most ``max_logit_scale`` x cosine: CLIP clips the
            learned scale there "to prevent scaling the logits by more than 100" (transformers' ``CLIPModel`` does
            not clip; with the scale below it both give the same logits).
        initializer_range (`float`, 0.02).

    The text tower is pooled by the mean of its last hidden states over the real tokens (the attention mask), the
    image tower by the mean over patches (``HfGenViTModel``'s ``pooler_output``).
    """

    model_type = "hfgen_clip"
    # Every Auto class a saved folder serves (written to config.json; registration.py registers the same).
    AUTO_MAP = CLIP_AUTO_MAP
    sub_configs_defaults = {"text_config": HfGenEncoderConfig, "vision_config": HfGenViTConfig}

    text_config: HfGenEncoderConfig | dict | None = None
    vision_config: HfGenViTConfig | dict | None = None
    projection_dim: int = 64
    logit_scale_init_value: float = CLIP_LOGIT_SCALE_INIT
    max_logit_scale: float = 100.0
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        check_positive_int("projection_dim", self.projection_dim)  # first: the towers' copies are compared with it
        self.text_config = tower_config("text_config", self.text_config, HfGenEncoderConfig, self.projection_dim)
        self.vision_config = tower_config("vision_config", self.vision_config, HfGenViTConfig, self.projection_dim)
        super().__post_init__(**kwargs)

    def validate_architecture(self) -> None:
        """The towers' own checks, the projection size and the logit scale."""
        self.text_config.validate_architecture()
        self.vision_config.validate_architecture()
        check_positive_int("projection_dim", self.projection_dim)
        for name in ("logit_scale_init_value", "max_logit_scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}.")
        if self.max_logit_scale <= 0:
            raise ValueError(f"max_logit_scale must be positive (the largest factor on the cosines), got "
                             f"{self.max_logit_scale}.")

    def get_text_config(self, *args, **kwargs) -> HfGenEncoderConfig:
        return self.text_config
