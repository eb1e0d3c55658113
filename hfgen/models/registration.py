"""Registration with transformers' Auto classes, in process and for code on the Hub.

In process: ``AutoConfig.register`` / ``AutoModel*.register`` so ``AutoModelForCausalLM.from_config(cfg)`` and
``from_pretrained`` work with hfgen imported. For code on the Hub: ``register_for_auto_class`` makes
``save_pretrained`` copy the defining files next to the weights; the configs preset ``auto_map`` with every Auto
class (their ``AUTO_MAP``, the one list both registrations read) so the folder loads through any of them with
``trust_remote_code=True`` where hfgen is not installed.
"""

from __future__ import annotations

import importlib

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
    AutoModelForZeroShotImageClassification,
)
from transformers import AutoModelForAudioClassification

from .configuration_hfgen_decoder import HfGenDecoderConfig
from .configuration_hfgen_encoder import HfGenEncoderConfig
from .configuration_hfgen_gato import HfGenGatoConfig
from .configuration_hfgen_retnet import HfGenRetNetConfig
from .configuration_hfgen_seq2seq import HfGenSeq2SeqConfig
from .configuration_hfgen_vit import HfGenViTConfig
from .configuration_hfgen_vlm import HfGenVlmConfig
from .configuration_hfgen_tabular import HfGenTabularConfig
from .configuration_hfgen_clip import HfGenClipConfig
from .configuration_hfgen_speech import HfGenSpeechConfig
from .processing_hfgen_clip import HfGenClipProcessor
from .processing_hfgen_vlm import HfGenVlmImageProcessor, HfGenVlmProcessor

CONFIGS = (HfGenViTConfig, HfGenGatoConfig, HfGenVlmConfig, HfGenRetNetConfig, HfGenDecoderConfig,
           HfGenSeq2SeqConfig, HfGenEncoderConfig, HfGenClipConfig)
CONFIGS += (HfGenTabularConfig,)
CONFIGS += (HfGenSpeechConfig,)
AUTO_CLASSES = {auto_class.__name__: auto_class for auto_class in (
    AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText, AutoModelForMaskedLM, AutoModelForPreTraining,
    AutoModelForSeq2SeqLM, AutoModelForSequenceClassification, AutoModelForTokenClassification,
    AutoModelForZeroShotImageClassification)}
AUTO_CLASSES["AutoModelForAudioClassification"] = AutoModelForAudioClassification


def family_models(config_class: type) -> list[tuple[type, type]]:
    """``(Auto class, model class)`` for every entry of the family's ``AUTO_MAP`` (``"AutoModel":
    "modeling_hfgen_decoder.HfGenDecoderModel"``, ...): the one list that both ``config.json``'s ``auto_map`` and
    the in-process registration come from."""
    models = []
    for auto_name, reference in config_class.AUTO_MAP.items():
        if auto_name == "AutoConfig":
            continue
        module_name, class_name = reference.split(".")
        module = importlib.import_module(f".{module_name}", __package__)
        models.append((AUTO_CLASSES[auto_name], getattr(module, class_name)))
    return models


_registered = False


def register_auto_classes() -> None:
    """Idempotent: registers every family once per process."""
    global _registered
    if _registered:
        return
    for config_class in CONFIGS:
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        config_class.register_for_auto_class()
        for auto_class, model_class in family_models(config_class):
            auto_class.register(config_class, model_class, exist_ok=True)
            model_class.register_for_auto_class(auto_class.__name__)
    # The vision-language processor and its image processor: in process, and copied into saved folders.
    AutoImageProcessor.register(HfGenVlmConfig, slow_image_processor_class=HfGenVlmImageProcessor, exist_ok=True)
    AutoProcessor.register(HfGenVlmConfig, HfGenVlmProcessor, exist_ok=True)
    HfGenVlmImageProcessor.register_for_auto_class("AutoImageProcessor")
    HfGenVlmProcessor.register_for_auto_class("AutoProcessor")
    # The contrastive model's processor: the same image processor with the text tower's tokenizer.
    AutoImageProcessor.register(HfGenClipConfig, slow_image_processor_class=HfGenVlmImageProcessor, exist_ok=True)
    AutoProcessor.register(HfGenClipConfig, HfGenClipProcessor, exist_ok=True)
    HfGenClipProcessor.register_for_auto_class("AutoProcessor")
    _registered = True
