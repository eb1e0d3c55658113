"""Configuration of hfgen's speech encoder (``hfgen_speech``): HuBERT (Hsu et al. 2021, "Self-Supervised Speech
Representation Learning by Masked Prediction of Hidden Units", a reference of seed 000) with hfgen's encoder layers,
so every attention / softmax / norm variant of the text families applies to speech.

A convolutional feature encoder turns the waveform into frames (HuBERT's geometry: 400 samples wide, one frame every
320 samples, 20 ms at 16 kHz), a linear projection maps them to ``hidden_size``, masked frames are replaced by a
learned mask embedding, a grouped convolution adds relative positions, and the transformer encodes the sequence.
Pre-training predicts a cluster id (k-means over MFCCs, then over the model's own features) at each masked frame.
"""

from __future__ import annotations

import math

from .configuration_common import HfGenAttentionConfig
from .moe import MOE_DEFAULTS, init_moe_config, validate_moe_config
from .positions import POSITION_TABLE
from .variants import check_choice, check_number, check_positive_int, validate_attention_config

SPEECH_AUTO_MAP = {
    "AutoConfig": "configuration_hfgen_speech.HfGenSpeechConfig",
    "AutoModel": "modeling_hfgen_speech.HfGenSpeechModel",
    "AutoModelForPreTraining": "modeling_hfgen_speech.HfGenSpeechForPreTraining",
    "AutoModelForAudioClassification": "modeling_hfgen_speech.HfGenSpeechForSequenceClassification",
}
FEAT_EXTRACT_NORMS = ("group", "layer")


class HfGenSpeechConfig(HfGenAttentionConfig):
    r"""Configuration of :class:`HfGenSpeechModel` and its heads (HuBERT's keys, HuBERT's names).

    Feature encoder and projection (``transformers.HubertConfig``'s meaning):
        conv_dim / conv_kernel / conv_stride (`tuple[int]`): channels, widths and strides of the 1-D convolutions
            over the waveform. The defaults keep HuBERT's kernels and strides (a frame every 320 samples, 400
            samples wide) with 64 channels instead of 512.
        conv_bias (`bool`, False), feat_extract_activation (`str`, "gelu").
        feat_extract_norm (`"layer"` | `"group"`, "layer"): LayerNorm over the channels after each convolution (each
            frame on its own, so a padded clip gives the frames it gives alone), or HuBERT base's GroupNorm after the
            first convolution only (statistics over the whole padded clip: padding changes the outputs).
        feat_proj_layer_norm (`bool`, True), feat_proj_dropout (`float`, 0.0).
        num_conv_pos_embeddings (`int`, 16) / num_conv_pos_embedding_groups (`int`, 4): the positional convolution
            (HuBERT: 128 / 16 for clips of many seconds; the keyword clips here are about 50 frames).
        sampling_rate (`int`, 16000): the rate of the audio the model was trained on (the feature extractor's).

    Masking (HuBERT's span masks, ``compute_mask_indices``):
        mask_time_prob (`float`, 0.08): about ``mask_time_prob * frames / mask_time_length`` spans start per clip
            (HuBERT pre-training: 0.08 with spans of 10); mask_time_length (`int`, 5); mask_time_min_masks (`int`, 2).

    Pre-training head (HuBERT's ``final_proj`` and ``label_embs_concat``):
        num_clusters (`int`, 50): k-means clusters = classes predicted at masked frames.
        final_dim (`int`, 64): size of the projection compared with the cluster embeddings.
        logit_temperature (`float`, 0.1): logits = cosine(projection, cluster embedding) / logit_temperature.

    Classification head (HuBERT's): classifier_proj_size (`int`, 64): projection before mean pooling over frames.

    Transformer (hfgen's encoder layers, BERT-shaped, post-norm as HuBERT base; ``norm_position="pre"`` is
    HuBERT's "stable layer norm"): hidden_size, num_hidden_layers, num_attention_heads, intermediate_size,
    hidden_act ("gelu"), hidden_dropout_prob (0.1), attention_dropout (0.1), layer_norm_eps (1e-5), and every
    variant key shared by the families (``attention_scoring``, ``softmax_variant``, ``num_key_value_heads``,
    ``position_embedding`` -- ``"none"`` by default: the positional convolution gives positions, as in HuBERT --
    ``norm_type``, ``mlp_type``, mixture-of-experts keys).
    """

    model_type = "hfgen_speech"
    AUTO_MAP = SPEECH_AUTO_MAP
    extra_config_keys = tuple(MOE_DEFAULTS)

    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    hidden_act: str = "gelu"
    attention_bias: bool = True
    attention_dropout: float = 0.1
    mlp_bias: bool = True
    position_embedding: str = "none"
    norm_type: str = "layernorm"
    norm_position: str = "post"
    mlp_type: str = "standard"
    hidden_dropout_prob: float = 0.1
    layer_norm_eps: float = 1e-5
    conv_dim: tuple[int, ...] | list[int] = (64, 64, 64, 64, 64, 64, 64)
    conv_kernel: tuple[int, ...] | list[int] = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: tuple[int, ...] | list[int] = (5, 2, 2, 2, 2, 2, 2)
    conv_bias: bool = False
    feat_extract_norm: str = "layer"
    feat_extract_activation: str = "gelu"
    feat_proj_layer_norm: bool = True
    feat_proj_dropout: float = 0.0
    num_conv_pos_embeddings: int = 16
    num_conv_pos_embedding_groups: int = 4
    sampling_rate: int = 16000
    mask_time_prob: float = 0.08
    mask_time_length: int = 5
    mask_time_min_masks: int = 2
    num_clusters: int = 50
    final_dim: int = 64
    logit_temperature: float = 0.1
    classifier_proj_size: int = 64
    classifier_dropout: float | None = None

    def __post_init__(self, **kwargs):
        self.conv_dim, self.conv_kernel, self.conv_stride = (
            list(self.conv_dim), list(self.conv_kernel), list(self.conv_stride))
        init_moe_config(self, kwargs)  # num_experts / num_experts_per_tok / router_*: moe.py (0: plain MLP)
        super().__post_init__(**kwargs)

    def validate_architecture(self) -> None:
        validate_speech_config(self)

    @property
    def num_feat_extract_layers(self) -> int:
        return len(self.conv_dim)

    @property
    def inputs_to_logits_ratio(self) -> int:
        """Samples per frame (HuBERT's name): the product of the strides."""
        return math.prod(self.conv_stride)

    def num_frames(self, samples):
        """Frames the feature encoder makes of ``samples`` samples (an int or a tensor of lengths)."""
        for kernel, stride in zip(self.conv_kernel, self.conv_stride):
            samples = (samples - kernel) // stride + 1
        return samples

    @property
    def receptive_field(self) -> int:
        """Samples one frame sees: the shortest input that gives a frame (400 with HuBERT's geometry)."""
        field = 1
        for kernel, stride in zip(reversed(self.conv_kernel), reversed(self.conv_stride)):
            field = (field - 1) * stride + kernel
        return field


def validate_speech_config(config) -> None:
    """The shared attention checks plus how the convolution and masking keys fit together."""
    validate_attention_config(config)
    validate_moe_config(config)
    if POSITION_TABLE[config.position_embedding].inputs is not None:
        valid = [name for name, kind in POSITION_TABLE.items() if kind.inputs is None and kind.families is None]
        raise ValueError(f"position_embedding={config.position_embedding!r} adds absolute positions to token "
                         f"embeddings, which speech frames do not have; valid here: {valid} (the positional "
                         f"convolution always adds relative positions).")
    lengths = {"conv_dim": len(config.conv_dim), "conv_kernel": len(config.conv_kernel),
               "conv_stride": len(config.conv_stride)}
    if len(set(lengths.values())) != 1 or not lengths["conv_dim"]:
        raise ValueError(f"conv_dim, conv_kernel and conv_stride need one entry per convolution layer (and at "
                         f"least one); got lengths {lengths}.")
    for key in ("conv_dim", "conv_kernel", "conv_stride"):
        for value in getattr(config, key):
            check_positive_int(key, value)
    for key in ("num_conv_pos_embeddings", "num_conv_pos_embedding_groups", "mask_time_length", "num_clusters",
                "final_dim", "classifier_proj_size", "sampling_rate"):
        check_positive_int(key, getattr(config, key))
    check_choice("feat_extract_norm", config.feat_extract_norm, FEAT_EXTRACT_NORMS)
    check_number("mask_time_prob", config.mask_time_prob, 0.0, 1.0)
    check_number("logit_temperature", config.logit_temperature, 0.0, low_open=True)
    if config.hidden_size % config.num_conv_pos_embedding_groups:
        raise ValueError(f"hidden_size ({config.hidden_size}) must be divisible by num_conv_pos_embedding_groups "
                         f"({config.num_conv_pos_embedding_groups}): the positional convolution is grouped.")
