"""Configuration of hfgen's vision encoder (``hfgen_vit``): a ViT (Dosovitskiy et al. 2021) whose layers are
hfgen's shared attention layer, so every attention / softmax / norm variant of the text families applies to images.

Seed 002 (multimodal models): a vision encoder turns an image into a sequence of vectors that a language model can
attend to; here the image is cut into ``patch_size`` x ``patch_size`` squares, each flattened and embedded.
"""

from __future__ import annotations

from .configuration_common import HfGenAttentionConfig
from .variants import validate_attention_config

VIT_AUTO_MAP = {
    "AutoConfig": "configuration_hfgen_vit.HfGenViTConfig",
    "AutoModel": "modeling_hfgen_vit.HfGenViTModel",
}

# ViT's choices among the shared variant keys (pre-norm LayerNorm, GELU MLP, learned absolute positions, biases).
VIT_DEFAULT_KEYS = dict(position_embedding="learned", norm_type="layernorm", mlp_type="standard", attention_bias=True,
                        mlp_bias=True)


class HfGenViTConfig(HfGenAttentionConfig):
    r"""Configuration of :class:`HfGenViTModel`.

    Args:
        image_size (`int`, 16): height = width of the input images, in pixels.
        patch_size (`int`, 4): side of the square patches; must divide ``image_size``. The encoder sees
            ``(image_size // patch_size) ** 2`` patch tokens.
        num_channels (`int`, 1): colour channels (1 for the digit images).
        hidden_size / intermediate_size / num_hidden_layers / num_attention_heads: the transformer's sizes.
        hidden_act (`str`, "gelu"), layer_norm_eps (`float`, 1e-6), initializer_range (`float`, 0.02).

    Variant keys, shared by every hfgen family (meaning: :class:`HfGenDecoderConfig`). The defaults are ViT's:
    ``position_embedding="learned"`` (one learned vector per patch), ``norm_type="layernorm"`` before each block,
    ``mlp_type="standard"``; attention is bidirectional.
    """

    model_type = "hfgen_vit"
    # Every Auto class a saved folder serves (written to config.json; registration.py registers the same).
    AUTO_MAP = VIT_AUTO_MAP
    base_config_key = "vision_config"
    extra_config_keys = ("max_position_embeddings",)  # derived: the patch count

    image_size: int = 16
    patch_size: int = 4
    num_channels: int = 1
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    hidden_act: str = "gelu"
    rms_norm_eps: float = 1e-6
    # ViT's choices among the shared variant keys (VIT_DEFAULT_KEYS)
    attention_bias: bool = True
    mlp_bias: bool = True
    position_embedding: str = "learned"
    norm_type: str = "layernorm"
    mlp_type: str = "standard"

    def __post_init__(self, **kwargs):
        kwargs.pop("max_position_embeddings", None)  # derived: the patch count
        self.max_position_embeddings = (self.image_size // self.patch_size) ** 2
        super().__post_init__(**kwargs)

    def validate_architecture(self) -> None:
        validate_vision_config(self)

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def patch_dim(self) -> int:
        """Values in one flattened patch: ``num_channels * patch_size ** 2``."""
        return self.num_channels * self.patch_size**2


def validate_vision_config(config) -> None:
    """How the keys fit together (the shared attention checks) and the image geometry."""
    validate_attention_config(config)
    if config.image_size % config.patch_size != 0:
        raise ValueError(
            f"image_size ({config.image_size}) is not divisible by patch_size ({config.patch_size}): the image must "
            f"be cut into whole patches; valid patch sizes for this image size are "
            f"{[p for p in range(1, config.image_size + 1) if config.image_size % p == 0]}.")
