"""Registration with transformers' Auto classes, in process and for code on the Hub.

In process: ``AutoConfig.register`` / ``AutoModel*.register`` so ``AutoModelForCausalLM.from_config(cfg)`` and
``from_pretrained`` work with hfgen imported. For code on the Hub: ``register_for_auto_class`` makes
``save_pretrained`` copy the defining files next to the weights; the configs preset ``auto_map`` with every Auto
class (their ``AUTO_MAP``, the one list both registrations read) so the folder loads through any of them with
``trust_remote_code=True`` where hfgen is not installed.
"""

from __future__ import annotations

import importlib

import transformers
from transformers import AutoConfig, AutoImageProcessor, AutoProcessor

from .configuration_hfgen_clip import HfGenClipConfig
from .configuration_hfgen_decoder import HfGenDecoderConfig
from .configuration_hfgen_encoder import HfGenEncoderConfig
from .configuration_hfgen_gato import HfGenGatoConfig
from .configuration_hfgen_retnet import HfGenRetNetConfig
from .configuration_hfgen_seq2seq import HfGenSeq2SeqConfig
from .configuration_hfgen_speech import HfGenSpeechConfig
from .configuration_hfgen_tabular import HfGenTabularConfig
from .configuration_hfgen_vit import HfGenViTConfig
from .configuration_hfgen_vlm import HfGenVlmConfig
from .processing_hfgen_clip import HfGenClipProcessor
from .processing_hfgen_vlm import HfGenVlmImageProcessor, HfGenVlmProcessor

# The one list of families. What each serves is its config's AUTO_MAP ("AutoModelForCausalLM":
# "modeling_hfgen_decoder.HfGenDecoderForCausalLM", ...), which is also written to config.json: a new family is
# its config class here, nothing else in this file.
CONFIGS = (HfGenViTConfig, HfGenGatoConfig, HfGenVlmConfig, HfGenRetNetConfig, HfGenDecoderConfig,
           HfGenSeq2SeqConfig, HfGenEncoderConfig, HfGenClipConfig, HfGenTabularConfig, HfGenSpeechConfig)
# Families read with a processor: config class -> (image processor, processor), both also copied into saved folders.
PROCESSORS = {
    HfGenVlmConfig: (HfGenVlmImageProcessor, HfGenVlmProcessor),
    # The contrastive model: the same image processor with the text tower's tokenizer.
    HfGenClipConfig: (HfGenVlmImageProcessor, HfGenClipProcessor),
}


def family_models(config_class: type) -> list[tuple[type, type]]:
    """``(Auto class, model class)`` for every entry of the family's ``AUTO_MAP`` (``"AutoModel":
    "modeling_hfgen_decoder.HfGenDecoderModel"``, ...): the one list that both ``config.json``'s ``auto_map`` and
    the in-process registration come from (the Auto class is transformers' of that name)."""
    models = []
    for auto_name, reference in config_class.AUTO_MAP.items():
        if auto_name == "AutoConfig":
            continue
        module_name, class_name = reference.split(".")
        module = importlib.import_module(f".{module_name}", __package__)
        models.append((getattr(transformers, auto_name), getattr(module, class_name)))
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
    for config_class, (image_processor, processor) in PROCESSORS.items():
        AutoImageProcessor.register(config_class, slow_image_processor_class=image_processor, exist_ok=True)
        AutoProcessor.register(config_class, processor, exist_ok=True)
        image_processor.register_for_auto_class("AutoImageProcessor")
        processor.register_for_auto_class("AutoProcessor")
    _registered = True
