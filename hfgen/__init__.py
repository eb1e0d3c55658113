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
    HfGenSeq2SeqForSequenceClassification,
    HfGenSeq2SeqModel,
    HfGenRetNetCache,
    HfGenRetNetConfig,
    HfGenRetNetForCausalLM,
    HfGenRetNetModel,
    HfGenGatoConfig,
    HfGenGatoForCausalLM,
    HfGenViTConfig,
    HfGenViTModel,
    HfGenVlmConfig,
    HfGenVlmForConditionalGeneration,
    HfGenVlmModel,
    HfGenVlmProcessor,
    register_auto_classes,
)

register_auto_classes()

from .training.peft_defaults import register_peft_defaults  # noqa: E402  (PEFT's default target modules)

register_peft_defaults()

__version__ = "0.1.0"

__all__ = [
    "HfGenGatoConfig",
    "HfGenGatoForCausalLM",
    "HfGenViTConfig",
    "HfGenViTModel",
    "HfGenVlmConfig",
    "HfGenVlmForConditionalGeneration",
    "HfGenVlmModel",
    "HfGenVlmProcessor",
    "HfGenRetNetCache",
    "HfGenRetNetConfig",
    "HfGenRetNetForCausalLM",
    "HfGenRetNetModel",
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
    "HfGenSeq2SeqForSequenceClassification",
    "HfGenSeq2SeqModel",
    "__version__",
]
