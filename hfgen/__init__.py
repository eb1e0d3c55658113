"""hfgen: the architectures and attention/softmax variants of the generative-AI survey notes as native
Hugging Face models. Importing hfgen registers every model with transformers' Auto classes (their public ``register``) and
changes nothing else in other libraries; see :mod:`hfgen.compat`."""

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
    HfGenTabularConfig,
    HfGenTabularForGeneration,
    HfGenTabularProcessor,
    register_auto_classes,
)

# transformers' public registration API, for hfgen's own classes only: nothing else of any other library changes on
# import (what needs more than a public API lives in hfgen.compat and runs only when called).
register_auto_classes()

__version__ = "0.1.0"

__all__ = [
    "HfGenTabularConfig",
    "HfGenTabularForGeneration",
    "HfGenTabularProcessor",
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
