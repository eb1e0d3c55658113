"""Configuration of the vision-language family (``hfgen_vlm``): an hfgen decoder that reads images.

Seed 002 names two ways to join modalities, and a third joins them inside the decoder (``fusion``):

* ``"early"``: early fusion, "one model trained on combined modalities" -- image patches are embedded by one linear
  layer straight into the decoder's token space and sit in its sequence like words; there is no vision encoder.
* ``"projection"``: late fusion, LLaVA/LENS-like -- a separate vision encoder (``hfgen_vit``) encodes the image and
  a small MLP projects its patch vectors into the decoder's token space, where they replace the image tokens.
* ``"cross_attention"``: late fusion, Flamingo-like -- the decoder's sequence holds one ``<image>`` marker token;
  gated cross-attention blocks, inserted before every ``cross_attention_interval``-th decoder layer, let the text
  attend to the encoder's patch vectors. Their tanh gates start at 0, so the untrained bridge leaves the language
  model's output exactly as it was (Alayrac et al. 2022).

In both late fusions the language model can be frozen while the bridge trains
(:meth:`HfGenVlmForConditionalGeneration.freeze_language_model`).
"""

from __future__ import annotations

from typing import ClassVar

from .configuration_common import HfGenConfig, sub_config
from .configuration_hfgen_decoder import HfGenDecoderConfig
from .configuration_hfgen_vit import HfGenViTConfig
from .variants import FUSIONS, is_number  # noqa: F401  (FUSIONS re-exported)

VLM_AUTO_MAP = {
    "AutoConfig": "configuration_hfgen_vlm.HfGenVlmConfig",
    "AutoModel": "modeling_hfgen_vlm.HfGenVlmModel",
    "AutoModelForImageTextToText": "modeling_hfgen_vlm.HfGenVlmForConditionalGeneration",
    "AutoModelForCausalLM": "modeling_hfgen_vlm.HfGenVlmForConditionalGeneration",
}


class HfGenVlmConfig(HfGenConfig):
    r"""Configuration of :class:`HfGenVlmForConditionalGeneration`: a composite config, typed as transformers'
    ``LlavaConfig`` (sub-configs as fields, ``sub_configs_defaults``), checked as every hfgen config is.

    Args:
        text_config (`HfGenDecoderConfig` or `dict`): the decoder (any hfgen attention variant).
        vision_config (`HfGenViTConfig` or `dict`): the image geometry (``image_size``, ``patch_size``,
            ``num_channels``) and, for the late fusions, the vision encoder.
        fusion (`str`, "projection"): ``"early"``, ``"projection"`` or ``"cross_attention"`` (module docstring).
        image_token_id (`int`, ``text_config.vocab_size - 1``): the id of the image placeholder token in the
            decoder's vocabulary. Early fusion and projection: the processor repeats it once per patch
            (``num_image_tokens``) and each copy's embedding is replaced by one patch vector. Cross-attention: one
            marker per image, embedded as a word.
        cross_attention_interval (`int`, 1): a gated cross-attention block before decoder layers 0, k, 2k, ...
        cross_attention_gate_init (`float`, 0.0): the starting value of every tanh gate. 0 is Flamingo's choice (the
            untrained bridge leaves the language model exactly as it was). At the sizes of the CPU recipes the
            closed gates are a saddle the bridge does not leave: the gates get a gradient only through the
            still-random attention output, the blocks' weights only through ``tanh(gate)`` ~ 0, and the gates
            random-walk around 0 (measured with a frozen 2-layer, 64-wide decoder: gates within 0.05 of 0 and
            chance accuracy after 200-1500 steps at learning rates 1e-3 to 1e-2). Open gates learn: 0.5 leaves a
            loss plateau after ~600 steps (caption accuracy 0.84 after 1500), 1.0 within 600 (0.85); both fail at
            learning rates >= 3e-3. ``recipes/train_vlm.py`` starts them at 1.0.
        projector_hidden_act (`str`, "gelu"): activation of the projection MLP.
        initializer_range (`float`, 0.02).
        tie_word_embeddings (`bool`, ``text_config.tie_word_embeddings``).

    What ``generate()`` and the loss read from the top-level config is the decoder's: ``vocab_size`` (always
    ``text_config.vocab_size``) and, unless given, the special-token ids.
    """

    model_type = "hfgen_vlm"
    # Every Auto class a saved folder serves (written to config.json; registration.py registers the same).
    AUTO_MAP = VLM_AUTO_MAP
    sub_configs_defaults = {"text_config": HfGenDecoderConfig, "vision_config": HfGenViTConfig}

    text_config: HfGenDecoderConfig | dict | None = None
    vision_config: HfGenViTConfig | dict | None = None
    fusion: str = "projection"
    image_token_id: int | None = None
    cross_attention_interval: int = 1
    cross_attention_gate_init: float = 0.0
    projector_hidden_act: str = "gelu"
    initializer_range: float = 0.02
    tie_word_embeddings: bool | None = None

    # Fields whose None __post_init__ replaces by the decoder's value.
    derived_keys: ClassVar[tuple[str, ...]] = ("tie_word_embeddings",)

    def __post_init__(self, **kwargs):
        # The sub-configs first (transformers' own loop then finds them built): the decoder's vocabulary is what
        # the special-token ids among kwargs are checked against when they are set.
        self.text_config = sub_config("text_config", self.text_config, HfGenDecoderConfig)
        self.vision_config = sub_config("vision_config", self.vision_config, HfGenViTConfig)
        vocab_size = kwargs.pop("vocab_size", self.text_config.vocab_size)
        if vocab_size != self.text_config.vocab_size:
            raise ValueError(f"vocab_size ({vocab_size!r}) is text_config.vocab_size ({self.text_config.vocab_size}) "
                             f"in hfgen_vlm: set it on text_config.")
        self.vocab_size = vocab_size
        if self.image_token_id is None:
            self.image_token_id = vocab_size - 1
        if is_number(self.cross_attention_gate_init):
            self.cross_attention_gate_init = float(self.cross_attention_gate_init)
        if self.tie_word_embeddings is None:
            self.tie_word_embeddings = self.text_config.tie_word_embeddings
        for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
            kwargs.setdefault(key, getattr(self.text_config, key, None))
        super().__post_init__(**kwargs)

    def validate_architecture(self) -> None:
        """The sub-configs' own checks, and the image token inside the decoder's vocabulary."""
        self.text_config.validate_architecture()
        self.vision_config.validate_architecture()
        vocab, token = self.text_config.vocab_size, self.image_token_id
        if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < vocab:
            raise ValueError(f"image_token_id must be a token id in [0, {vocab}) (text_config.vocab_size), got "
                             f"{token!r}.")

    @property
    def num_image_tokens(self) -> int:
        """Tokens one image occupies in the decoder's sequence: one per patch, or one marker (cross-attention)."""
        return 1 if self.fusion == "cross_attention" else self.vision_config.num_patches

    def get_text_config(self, *args, **kwargs) -> HfGenDecoderConfig:
        return self.text_config
