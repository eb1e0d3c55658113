"""Registration with transformers' Auto classes, in process and for code on the Hub.

In process: ``AutoConfig.register`` / ``AutoModel*.register`` so ``AutoModelForCausalLM.from_config(cfg)`` and
``from_pretrained`` work with hfgen imported. For code on the Hub: ``register_for_auto_class`` makes
``save_pretrained`` copy the defining files next to the weights; the configs preset ``auto_map`` with every Auto
class so the folder loads through any of them with ``trust_remote_code=True`` where hfgen is not installed.
"""

from __future__ import annotations

from transformers import (
    AutoConfig,
    AutoModel,
    AutoImageProcessor,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoModelForMaskedLM,
    AutoModelForPreTraining,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from .configuration_hfgen_decoder import HfGenDecoderConfig
from .modeling_hfgen_decoder import (
    HfGenDecoderForCausalLM,
    HfGenDecoderForSequenceClassification,
    HfGenDecoderModel,
)
from .configuration_hfgen_seq2seq import HfGenSeq2SeqConfig
from .modeling_hfgen_seq2seq import (
    HfGenSeq2SeqForConditionalGeneration,
    HfGenSeq2SeqForSequenceClassification,
    HfGenSeq2SeqModel,
)
from .configuration_hfgen_encoder import HfGenEncoderConfig
from .modeling_hfgen_encoder import (
    HfGenEncoderForMaskedLM,
    HfGenEncoderForPreTraining,
    HfGenEncoderForSequenceClassification,
    HfGenEncoderForTokenClassification,
    HfGenEncoderModel,
)
from .configuration_hfgen_retnet import HfGenRetNetConfig
from .modeling_hfgen_retnet import HfGenRetNetForCausalLM, HfGenRetNetModel
from .configuration_hfgen_vit import HfGenViTConfig
from .modeling_hfgen_vit import HfGenViTModel
from .configuration_hfgen_vlm import HfGenVlmConfig
from .modeling_hfgen_vlm import HfGenVlmForConditionalGeneration, HfGenVlmModel
from .processing_hfgen_vlm import HfGenVlmImageProcessor, HfGenVlmProcessor
from .configuration_hfgen_gato import HfGenGatoConfig
from .modeling_hfgen_gato import HfGenGatoForCausalLM

# (config class, [(Auto class, model class), ...]) per family.
FAMILIES = [
    (HfGenViTConfig, [
        (AutoModel, HfGenViTModel),
    ]),
    (HfGenGatoConfig, [
        (AutoModelForCausalLM, HfGenGatoForCausalLM),
    ]),
    (HfGenVlmConfig, [
        (AutoModel, HfGenVlmModel),
        (AutoModelForImageTextToText, HfGenVlmForConditionalGeneration),
        (AutoModelForCausalLM, HfGenVlmForConditionalGeneration),
    ]),
    (HfGenRetNetConfig, [
        (AutoModel, HfGenRetNetModel),
        (AutoModelForCausalLM, HfGenRetNetForCausalLM),
    ]),
    (HfGenDecoderConfig, [
        (AutoModel, HfGenDecoderModel),
        (AutoModelForCausalLM, HfGenDecoderForCausalLM),
        (AutoModelForSequenceClassification, HfGenDecoderForSequenceClassification),
    ]),
    (HfGenSeq2SeqConfig, [
        (AutoModel, HfGenSeq2SeqModel),
        (AutoModelForSeq2SeqLM, HfGenSeq2SeqForConditionalGeneration),
        (AutoModelForSequenceClassification, HfGenSeq2SeqForSequenceClassification),
    ]),
    (HfGenEncoderConfig, [
        (AutoModel, HfGenEncoderModel),
        (AutoModelForMaskedLM, HfGenEncoderForMaskedLM),
        (AutoModelForPreTraining, HfGenEncoderForPreTraining),
        (AutoModelForSequenceClassification, HfGenEncoderForSequenceClassification),
        (AutoModelForTokenClassification, HfGenEncoderForTokenClassification),
    ]),
]

_registered = False


def register_auto_classes() -> None:
    """Idempotent: registers every family once per process."""
    global _registered
    if _registered:
        return
    for config_class, models in FAMILIES:
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        config_class.register_for_auto_class()
        for auto_class, model_class in models:
            auto_class.register(config_class, model_class, exist_ok=True)
            model_class.register_for_auto_class(auto_class.__name__)
    # The vision-language processor and its image processor: in process, and copied into saved folders.
    AutoImageProcessor.register(HfGenVlmConfig, slow_image_processor_class=HfGenVlmImageProcessor, exist_ok=True)
    AutoProcessor.register(HfGenVlmConfig, HfGenVlmProcessor, exist_ok=True)
    HfGenVlmImageProcessor.register_for_auto_class("AutoImageProcessor")
    HfGenVlmProcessor.register_for_auto_class("AutoProcessor")
    _registered = True
