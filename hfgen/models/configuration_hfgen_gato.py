"""Configuration of the Gato-like multi-domain decoder (``hfgen_gato``; Reed et al. 2022, seed 000/002): one
decoder-only transformer over a token stream that mixes text, image patches, continuous values and discrete
actions.

Token space (Gato, section 2.1): text tokens ``[0, text_vocab_size)``; then ``num_bins`` tokens for discretised
values, shared by continuous values (mu-law companded, then uniformly binned) and discrete actions (integers
shifted into the same range); then a separator token (``|``, between observation and action) and the image
placeholder token (replaced by one patch embedding each).
"""

from __future__ import annotations

from .configuration_common import set_derived_vocab_size
from .configuration_hfgen_decoder import HfGenDecoderConfig

GATO_AUTO_MAP = {
    "AutoConfig": "configuration_hfgen_gato.HfGenGatoConfig",
    "AutoModelForCausalLM": "modeling_hfgen_gato.HfGenGatoForCausalLM",
}
# Modality ids of the modality embedding added to every token.
MODALITIES = ("text", "image", "continuous", "action")


class HfGenGatoConfig(HfGenDecoderConfig):
    r"""Configuration of :class:`HfGenGatoForCausalLM`: every key of :class:`HfGenDecoderConfig` (the decoder,
    any attention variant) plus

    Args:
        text_vocab_size (`int`, 8192): size of the text tokenizer's vocabulary.
        num_bins (`int`, 1024): uniform bins of the discretised values (Gato: 1024).
        mu_law_mu (`float`, 100) / mu_law_max (`float`, 256): mu-law companding ``F(x) = sgn(x) log(|x| mu + 1) /
            log(M mu + 1)`` (Gato: mu = 100, M = 256); values must lie in ``[-M, M]``, which ``F`` maps onto [-1, 1].
        image_size / patch_size / num_channels: the images' geometry (patches embedded by one linear layer).
        image_vocab_size (`int`, 0): image tokens after the placeholder (a VQ-VAE's codes: images as words instead of
            patches; 0: none).
    ``vocab_size`` is derived: ``text_vocab_size + num_bins + 2 + image_vocab_size`` (separator, image placeholder,
    image tokens).
    """

    model_type = "hfgen_gato"
    # Every Auto class a saved folder serves (written to config.json; registration.py registers the same).
    AUTO_MAP = GATO_AUTO_MAP

    derived_keys = ("head_dim", "num_key_value_heads", "vocab_size")

    text_vocab_size: int = 8192
    num_bins: int = 1024
    mu_law_mu: float = 100.0
    mu_law_max: float = 256.0
    image_size: int = 8
    patch_size: int = 2
    num_channels: int = 1
    image_vocab_size: int = 0
    vocab_size: int | None = None  # derived: text_vocab_size + num_bins + 2 + image_vocab_size

    def __post_init__(self, **kwargs):
        if type(self.image_vocab_size) is not int or self.image_vocab_size < 0:
            raise ValueError(f"image_vocab_size must be an int >= 0 (0: no image tokens), got "
                             f"{self.image_vocab_size!r}.")
        if isinstance(self.mu_law_mu, int):
            self.mu_law_mu = float(self.mu_law_mu)
        if isinstance(self.mu_law_max, int):
            self.mu_law_max = float(self.mu_law_max)
        set_derived_vocab_size(self, self.text_vocab_size + self.num_bins + 2 + self.image_vocab_size)
        super().__post_init__(**kwargs)

    def validate_architecture(self) -> None:
        super().validate_architecture()
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size ({self.image_size}) is not divisible by patch_size ({self.patch_size}).")

    @property
    def first_bin_id(self) -> int:
        return self.text_vocab_size

    @property
    def separator_token_id(self) -> int:
        return self.text_vocab_size + self.num_bins

    @property
    def image_token_id(self) -> int:
        return self.text_vocab_size + self.num_bins + 1

    @property
    def first_image_code_id(self) -> int:
        return self.image_token_id + 1

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2
