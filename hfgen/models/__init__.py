"""Hub-portable model code. A flat package whose files import each other only as ``from .x import y``, so that
transformers' own remote-code mechanism copies a model's file and everything it needs into a saved folder."""

from .configuration_hfgen_decoder import HfGenDecoderConfig
from .modeling_hfgen_decoder import (
    HfGenDecoderForCausalLM,
    HfGenDecoderForSequenceClassification,
    HfGenDecoderModel,
    HfGenDecoderPreTrainedModel,
)
from .registration import register_auto_classes
from .variants import (
    ATTENTION_SCORINGS,
    MLP_TYPES,
    NORM_POSITIONS,
    NORM_TYPES,
    POSITION_EMBEDDINGS,
    SOFTMAX_VARIANTS,
)

__all__ = [
    "ATTENTION_SCORINGS",
    "HfGenDecoderConfig",
    "HfGenDecoderForCausalLM",
    "HfGenDecoderForSequenceClassification",
    "HfGenDecoderModel",
    "HfGenDecoderPreTrainedModel",
    "MLP_TYPES",
    "NORM_POSITIONS",
    "NORM_TYPES",
    "POSITION_EMBEDDINGS",
    "SOFTMAX_VARIANTS",
    "register_auto_classes",
]
