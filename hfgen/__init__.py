"""hfgen: the architectures and attention/softmax variants of the generative-AI survey notes as native
Hugging Face models. Importing hfgen registers every model with transformers' Auto classes."""

from .models import (
    HfGenDecoderConfig,
    HfGenDecoderForCausalLM,
    HfGenDecoderForSequenceClassification,
    HfGenDecoderModel,
    HfGenEncoderConfig,
    HfGenEncoderForMaskedLM,
    HfGenEncoderForPreTraining,
    HfGenEncoderForSequenceClassification,
    HfGenEncoderForTokenClassification,
    HfGenEncoderModel,
    HfGenSeq2SeqConfig,
    HfGenSeq2SeqForConditionalGeneration,
    HfGenSeq2SeqModel,
    HfGenRetNetCache,
    HfGenRetNetConfig,
    HfGenRetNetForCausalLM,
    HfGenRetNetModel,
    register_auto_classes,
)

register_auto_classes()

__version__ = "0.1.0"

__all__ = [
    "HfGenDecoderConfig",
    "HfGenDecoderForCausalLM",
    "HfGenDecoderForSequenceClassification",
    "HfGenDecoderModel",
    "HfGenEncoderConfig",
    "HfGenEncoderForMaskedLM",
    "HfGenEncoderForPreTraining",
    "HfGenEncoderForSequenceClassification",
    "HfGenEncoderForTokenClassification",
    "HfGenEncoderModel",
    "HfGenSeq2SeqConfig",
    "HfGenSeq2SeqForConditionalGeneration",
    "HfGenSeq2SeqModel",
    "HfGenRetNetCache",
    "HfGenRetNetConfig",
    "HfGenRetNetForCausalLM",
    "HfGenRetNetModel",
    "__version__",
]
