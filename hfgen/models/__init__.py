"""Hub-portable model code. A flat package whose files import each other only as ``from .x import y``, so that
transformers' own remote-code mechanism copies a model's file and everything it needs into a saved folder."""

from .configuration_hfgen_decoder import HfGenDecoderConfig
from .modeling_hfgen_decoder import (
    HfGenDecoderForCausalLM,
    HfGenDecoderForSequenceClassification,
    HfGenDecoderModel,
    HfGenDecoderPreTrainedModel,
)
from .configuration_hfgen_seq2seq import T5_LIKE_KEYS, HfGenSeq2SeqConfig
from .modeling_hfgen_seq2seq import (
    HfGenSeq2SeqForConditionalGeneration,
    HfGenSeq2SeqForSequenceClassification,
    HfGenSeq2SeqModel,
    HfGenSeq2SeqPreTrainedModel,
)
from .configuration_hfgen_encoder import BERT_LIKE_KEYS, DEBERTA_LIKE_KEYS, HfGenEncoderConfig
from .modeling_hfgen_encoder import (
    HfGenEncoderForMaskedLM,
    HfGenEncoderForPreTraining,
    HfGenEncoderForSequenceClassification,
    HfGenEncoderForTokenClassification,
    HfGenEncoderModel,
    HfGenEncoderPreTrainedModel,
)
from .configuration_hfgen_retnet import HfGenRetNetConfig
from .modeling_hfgen_retnet import (
    HfGenRetNetCache,
    HfGenRetNetForCausalLM,
    HfGenRetNetModel,
    HfGenRetNetPreTrainedModel,
)
from .modeling_hfgen_value_head import (
    CausalLMOutputWithValue,
    HfGenDecoderForCausalLMWithValueHead,
    HfGenValueHead,
)
from .configuration_hfgen_vit import HfGenViTConfig
from .modeling_hfgen_vit import HfGenViTModel
from .configuration_hfgen_vlm import HfGenVlmConfig
from .modeling_hfgen_vlm import HfGenVlmForConditionalGeneration, HfGenVlmModel
from .processing_hfgen_vlm import HfGenVlmImageProcessor, HfGenVlmProcessor
from .configuration_hfgen_gato import HfGenGatoConfig
from .modeling_hfgen_gato import HfGenGatoForCausalLM
from .configuration_hfgen_clip import HfGenClipConfig
from .modeling_hfgen_clip import HfGenClipModel
from .processing_hfgen_clip import HfGenClipProcessor
from .configuration_hfgen_tabular import HfGenTabularConfig
from .modeling_hfgen_tabular import HfGenTabularForGeneration
from .processing_hfgen_tabular import HfGenTabularProcessor
from .configuration_hfgen_speech import HfGenSpeechConfig
from .modeling_hfgen_speech import (
    HfGenSpeechForPreTraining,
    HfGenSpeechForSequenceClassification,
    HfGenSpeechModel,
    HfGenSpeechPreTrainedModel,
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
    "HfGenSpeechConfig",
    "HfGenSpeechForPreTraining",
    "HfGenSpeechForSequenceClassification",
    "HfGenSpeechModel",
    "HfGenSpeechPreTrainedModel",
    "HfGenTabularConfig",
    "HfGenTabularForGeneration",
    "HfGenTabularProcessor",
    "HfGenClipConfig",
    "HfGenClipModel",
    "HfGenClipProcessor",
    "HfGenGatoConfig",
    "HfGenGatoForCausalLM",
    "HfGenViTConfig",
    "HfGenViTModel",
    "HfGenVlmConfig",
    "HfGenVlmForConditionalGeneration",
    "HfGenVlmImageProcessor",
    "HfGenVlmModel",
    "HfGenVlmProcessor",
    "CausalLMOutputWithValue",
    "HfGenDecoderForCausalLMWithValueHead",
    "HfGenValueHead",
    "HfGenRetNetCache",
    "HfGenRetNetConfig",
    "HfGenRetNetForCausalLM",
    "HfGenRetNetModel",
    "HfGenRetNetPreTrainedModel",
    "ATTENTION_SCORINGS",
    "BERT_LIKE_KEYS",
    "DEBERTA_LIKE_KEYS",
    "HfGenEncoderConfig",
    "HfGenEncoderForMaskedLM",
    "HfGenEncoderForPreTraining",
    "HfGenEncoderForSequenceClassification",
    "HfGenEncoderForTokenClassification",
    "HfGenEncoderModel",
    "HfGenEncoderPreTrainedModel",
    "HfGenDecoderConfig",
    "HfGenDecoderForCausalLM",
    "HfGenDecoderForSequenceClassification",
    "HfGenDecoderModel",
    "HfGenDecoderPreTrainedModel",
    "HfGenSeq2SeqConfig",
    "HfGenSeq2SeqForConditionalGeneration",
    "HfGenSeq2SeqForSequenceClassification",
    "HfGenSeq2SeqModel",
    "HfGenSeq2SeqPreTrainedModel",
    "MLP_TYPES",
    "NORM_POSITIONS",
    "NORM_TYPES",
    "POSITION_EMBEDDINGS",
    "SOFTMAX_VARIANTS",
    "T5_LIKE_KEYS",
    "register_auto_classes",
]
