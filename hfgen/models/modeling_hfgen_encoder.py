"""The encoder-only family (``hfgen_encoder``): BERT-style autoencoding models (seed 003: "The encoder-only variants
of Transformers are also called autoencoding models. They are pre-trained using Masked Language Modeling (MLM) ...
BERT also optimizes for next sentence prediction") with every hfgen attention variant, and DeBERTa's disentangled
attention as one more position kind.

Layout: BERT's, name for name, so that ``BertModel`` / ``BertForMaskedLM`` / ``BertForPreTraining`` checkpoints load
directly (the attention itself is hfgen's shared ``HfGenAttention``, with BERT's projection names)::

    bert.embeddings.{word_embeddings, position_embeddings, token_type_embeddings, LayerNorm}
    bert.encoder.layer.N.attention.self.{query, key, value}     (+ variant parameters: score_weight, head_gate, ...)
    bert.encoder.layer.N.attention.output.{dense, LayerNorm}
    bert.encoder.layer.N.intermediate.dense (+ gate_dense with mlp_type="gated"), bert.encoder.layer.N.output.{dense,
    LayerNorm}
    bert.encoder.{rotary_emb, relative_position_bias, alibi, rel_embeddings, LayerNorm, final_layer_norm}  (variants)
    bert.pooler.dense, cls.predictions.{transform.dense, transform.LayerNorm, decoder, bias}, cls.seq_relationship

With ``norm_position="pre"`` each block's ``LayerNorm`` normalises its input instead of its output, and
``encoder.final_layer_norm`` normalises the last layer's output.

With ``num_experts > 0`` (``moe.py``) a sparse mixture of experts replaces each layer's MLP: ``intermediate`` and
``output.dense`` give way to ``encoder.layer.N.block_sparse_moe.{gate, experts.M.w1, experts.M.w2 (, w3)}``; the
output block keeps its dropout, residual and ``LayerNorm``. Every output then carries the router losses and the
expert utilisation, and the losses include the weighted router losses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    MaskedLMOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from transformers.utils import ModelOutput, can_return_tuple
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs

from .attention import HfGenAttention, repeat_kv
from .configuration_hfgen_encoder import HfGenEncoderConfig
from .disentangled import disentangled_bias, relative_row_index
from .layers import HfGenLayerNorm, HfGenRMSNorm
from .input_checks import check_classification_labels, check_head_inputs, check_lm_labels
from .modeling_common import HfGenPreTrainedModel, check_inputs
# (transformers offers experts_implementation only if this file names `@use_experts_implementation`: moe.py's)
from .moe import (
    ROUTER_LOGITS_RECORDER,
    HfGenSparseMoeBlock,
    base_output_class,
    build_feed_forward,
    check_router_request,
    moe_output,
)
from .position_inputs import add_position_modules, check_learned_positions, position_inputs
from .positions import POSITION_TABLE


def encoder_norm(config: HfGenEncoderConfig) -> nn.Module:
    norm = HfGenRMSNorm if config.norm_type == "rmsnorm" else HfGenLayerNorm
    return norm(config.hidden_size, eps=config.layer_norm_eps)


def check_token_types(config: HfGenEncoderConfig, token_type_ids: torch.Tensor | None, shape) -> None:
    """Token types index a table of ``type_vocab_size`` rows: say so instead of an index error."""
    if token_type_ids is None:
        return
    if tuple(token_type_ids.shape) != tuple(shape):
        raise ValueError(f"token_type_ids has shape {tuple(token_type_ids.shape)}, expected {tuple(shape)} "
                         f"(one segment id per token).")
    if token_type_ids.is_floating_point():
        raise ValueError(f"token_type_ids must hold integer segment ids, got dtype {token_type_ids.dtype}.")
    if token_type_ids.numel() and not torch.compiler.is_compiling():
        low, high = torch.stack(torch.aminmax(token_type_ids)).tolist()
        if low < 0 or high >= max(config.type_vocab_size, 1):
            valid = f"[0, {config.type_vocab_size})" if config.type_vocab_size else "0 only (type_vocab_size=0)"
            raise ValueError(f"token_type_ids must lie in {valid} (type_vocab_size={config.type_vocab_size}); got "
                             f"ids from {low} to {high}.")


class HfGenEncoderEmbeddings(nn.Module):
    """Word embeddings, plus absolute positions (learned: BERT; sinusoidal) and token types, then a norm and dropout,
    in BERT's order: ``LayerNorm((words + types) + positions)``."""

    def __init__(self, config: HfGenEncoderConfig):
        super().__init__()
        self.config = config
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        if config.position_embedding == "learned":
            self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        if config.type_vocab_size > 0:
            self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = encoder_norm(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor | None, token_type_ids: torch.Tensor | None,
                position_ids: torch.Tensor, inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        embeddings = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        kind = POSITION_TABLE[self.config.position_embedding]
        table = getattr(self, "position_embeddings", None)
        if kind.inputs is not None and kind.scales_inputs:  # (sinusoidal: scaled token embeddings first)
            embeddings = kind.inputs(self.config, embeddings, position_ids, table)
        if hasattr(self, "token_type_embeddings"):
            if token_type_ids is None:
                token_type_ids = torch.zeros(embeddings.shape[:2], dtype=torch.long, device=embeddings.device)
            embeddings = embeddings + self.token_type_embeddings(token_type_ids)
        if kind.inputs is not None and not kind.scales_inputs:  # BERT: (words + types) + positions
            embeddings = kind.inputs(self.config, embeddings, position_ids, table)
        return self.dropout(self.LayerNorm(embeddings))


class HfGenEncoderSelfAttention(HfGenAttention):
    """hfgen's shared attention (every scoring / softmax variant, bidirectional) with BERT's names: ``query``,
    ``key``, ``value``; the output projection is BERT's ``attention.output.dense``, outside this module.

    With ``position_embedding="disentangled"`` it adds DeBERTa's content-to-position and position-to-content terms
    (``disentangled.py``) and scales all three terms by ``1 / sqrt(3 d)`` (with scaled dot-product scoring).
    """

    q_proj = property(lambda self: self.query)
    k_proj = property(lambda self: self.key)
    v_proj = property(lambda self: self.value)

    def __init__(self, config: HfGenEncoderConfig, layer_idx: int):
        super().__init__(config, layer_idx, is_causal=False)
        for old, new in (("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value")):
            setattr(self, new, self._modules.pop(old))
        del self._modules["o_proj"]
        self.o_proj = nn.Identity()
        self.disentangled = config.position_embedding == "disentangled"
        if self.disentangled and self.scoring_entry.scaled:
            self.scaling = (3 * self.head_dim) ** -0.5  # c2c + c2p + p2c: three terms of variance d each

    def score_bias(self, position_bias, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor | None:
        if not self.disentangled:
            return super().score_bias(position_bias, query, key)
        q_len, k_len = query.shape[2], key.shape[2]
        # [R, hidden]: the rows of the relative embeddings these lengths reach (or a function of the lengths)
        relative = position_bias if isinstance(position_bias, torch.Tensor) else position_bias(q_len, k_len)
        index = relative_row_index(self.config, q_len, k_len, relative.device)  # [Q, K] into them
        rows = relative.shape[0]
        position_query = self.query(relative).view(rows, self.num_heads, self.head_dim).transpose(0, 1)
        position_key = self.key(relative).view(rows, self.num_key_value_heads, self.head_dim).transpose(0, 1)
        position_key = repeat_kv(position_key.unsqueeze(0), self.num_key_value_groups)[0]
        if self.scoring_entry.query is not None:  # the query side of every term goes through it (general: W_k)
            position_query = self.scoring_entry.query(self, position_query.unsqueeze(0))[0]
        key = repeat_kv(key, self.num_key_value_groups)
        return disentangled_bias(query, key, position_query.to(query.dtype), position_key.to(query.dtype), index,
                                 self.scaling)


class _ResidualOutput(nn.Module):
    """BERT's ``*Output`` blocks: ``dense``, dropout, then the residual and ``LayerNorm`` (post-norm); with pre-norm
    the ``LayerNorm`` has normalised the block's input instead and the residual is added last."""

    def __init__(self, config: HfGenEncoderConfig, in_features: int | None, bias: bool):
        super().__init__()
        self.pre_norm = config.norm_position == "pre"
        # in_features None: the block's input is already hidden-sized (the experts' own w2 projected it)
        self.dense = nn.Linear(in_features, config.hidden_size, bias=bias) if in_features else nn.Identity()
        self.LayerNorm = encoder_norm(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        hidden_states = self.dropout(self.dense(hidden_states))
        return residual + hidden_states if self.pre_norm else self.LayerNorm(hidden_states + residual)


class HfGenEncoderSelfOutput(_ResidualOutput):
    def __init__(self, config: HfGenEncoderConfig):
        super().__init__(config, config.num_attention_heads * config.head_dim, config.attention_bias)


# Not literally "(nn.Module)": transformers' set_attn_implementation greps the model's file for an attention class
# deriving from nn.Module and, finding one, would demand that this file call the attention interface itself
# (HfGenAttention in attention.py does).
class HfGenEncoderAttention(torch.nn.Module):
    """BERT's ``BertAttention``: the self-attention and its output block."""

    def __init__(self, config: HfGenEncoderConfig, layer_idx: int):
        super().__init__()
        self.self = HfGenEncoderSelfAttention(config, layer_idx)
        self.output = HfGenEncoderSelfOutput(config)

    def forward(self, hidden_states: torch.Tensor,
                **kwargs: Unpack[TransformersKwargs]) -> tuple[torch.Tensor, torch.Tensor | None]:
        inputs = self.output.LayerNorm(hidden_states) if self.output.pre_norm else hidden_states
        attended, weights = self.self(inputs, **kwargs)
        return self.output(attended, hidden_states), weights


class HfGenEncoderIntermediate(nn.Module):
    """The MLP's first half: ``act(dense(x))`` (BERT), or ``act(gate_dense(x)) * dense(x)`` with
    ``mlp_type="gated"``."""

    def __init__(self, config: HfGenEncoderConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        if config.mlp_type == "gated":
            self.gate_dense = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.intermediate_act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "gate_dense"):
            return self.intermediate_act_fn(self.gate_dense(hidden_states)) * self.dense(hidden_states)
        return self.intermediate_act_fn(self.dense(hidden_states))


class HfGenEncoderOutput(_ResidualOutput):
    """The MLP's second half (``dense``), dropout, residual and norm; after a mixture of experts no ``dense``."""

    def __init__(self, config: HfGenEncoderConfig, after_experts: bool = False):
        super().__init__(config, None if after_experts else config.intermediate_size, config.mlp_bias)


class HfGenEncoderLayer(GradientCheckpointingLayer):
    """Bidirectional self-attention then the MLP (or, with ``num_experts``, a mixture of experts: ``moe.py``), each in
    a residual connection (BERT's ``BertLayer``)."""

    def __init__(self, config: HfGenEncoderConfig, layer_idx: int):
        super().__init__()
        self.attention = HfGenEncoderAttention(config, layer_idx)
        feed_forward = build_feed_forward(config, lambda: HfGenEncoderIntermediate(config))
        self.is_moe = isinstance(feed_forward, HfGenSparseMoeBlock)
        if self.is_moe:
            self.block_sparse_moe = feed_forward  # the decoder's (Mixtral's) name
        else:
            self.intermediate = feed_forward
        self.output = HfGenEncoderOutput(config, after_experts=self.is_moe)

    def forward(self, hidden_states: torch.Tensor, position_bias=None, attention_mask=None,
                position_embeddings=None, **kwargs: Unpack[TransformersKwargs]) -> torch.Tensor:
        """``position_bias`` second and positional: reentrant gradient checkpointing carries gradients only out of
        positional tensors, and relative-position biases and DeBERTa's relative embeddings are trained."""
        hidden_states, _ = self.attention(hidden_states, attention_mask=attention_mask,
                                          position_embeddings=position_embeddings, position_bias=position_bias,
                                          **kwargs)
        inputs = self.output.LayerNorm(hidden_states) if self.output.pre_norm else hidden_states
        feed_forward = self.block_sparse_moe if self.is_moe else self.intermediate
        return self.output(feed_forward(inputs), hidden_states)


class HfGenEncoderStack(nn.Module):
    """The layers, the position modules that act inside attention, and (pre-norm) the final norm."""

    def __init__(self, config: HfGenEncoderConfig):
        super().__init__()
        self.config = config
        if POSITION_TABLE[config.position_embedding].inputs is None:  # (absolute positions: the embeddings')
            add_position_modules(self, config, bidirectional=True)
        self.layer = nn.ModuleList([HfGenEncoderLayer(config, i) for i in range(config.num_hidden_layers)])
        if config.norm_position == "pre":
            self.final_layer_norm = encoder_norm(config)
        self.gradient_checkpointing = False

    def forward(self, hidden_states: torch.Tensor, attention_mask, position_ids: torch.Tensor,
                **kwargs: Unpack[TransformersKwargs]) -> torch.Tensor:
        # The bias (disentangled: the rows of the relative embeddings) is computed here, once, outside every layer:
        # shared by all of them, and never inside a gradient-checkpointed region.
        hidden_states, rotary, bias = position_inputs(self, self.config, hidden_states, position_ids, 0,
                                                      absolute=False)
        for layer in self.layer:
            hidden_states = layer(hidden_states, bias, attention_mask=attention_mask, position_embeddings=rotary,
                                  **kwargs)
        if hasattr(self, "final_layer_norm"):
            hidden_states = self.final_layer_norm(hidden_states)
        return hidden_states


class HfGenEncoderPooler(nn.Module):
    """BERT's pooler: ``tanh(dense(h_0))`` of the first token ([CLS])."""

    def __init__(self, config: HfGenEncoderConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden_states[:, 0]))


class HfGenEncoderPredictionHeadTransform(nn.Module):
    def __init__(self, config: HfGenEncoderConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.transform_act_fn = ACT2FN[config.hidden_act]
        self.LayerNorm = encoder_norm(config)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.transform_act_fn(self.dense(hidden_states)))


class HfGenEncoderPredictionHead(nn.Module):
    """BERT's MLM head: ``decoder(LayerNorm(act(dense(h))))``; ``decoder.weight`` is the word embedding when tied,
    ``decoder.bias`` is ``bias``."""

    def __init__(self, config: HfGenEncoderConfig):
        super().__init__()
        self.transform = HfGenEncoderPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=True)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(hidden_states))


class HfGenEncoderMLMHead(nn.Module):
    def __init__(self, config: HfGenEncoderConfig):
        super().__init__()
        self.predictions = HfGenEncoderPredictionHead(config)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.predictions(hidden_states)


class HfGenEncoderPreTrainingHeads(HfGenEncoderMLMHead):
    """MLM head plus BERT's next-sentence classifier on the pooled output."""

    def __init__(self, config: HfGenEncoderConfig):
        super().__init__(config)
        self.seq_relationship = nn.Linear(config.hidden_size, 2)


class HfGenEncoderPreTrainedModel(HfGenPreTrainedModel):
    config_class = HfGenEncoderConfig
    config: HfGenEncoderConfig
    base_model_prefix = "bert"  # BERT's: checkpoints of BertModel and of its heads load in both directions
    _no_split_modules = ["HfGenEncoderEmbeddings", "HfGenEncoderLayer"]
    _can_record_outputs = {"hidden_states": HfGenEncoderLayer, "attentions": HfGenEncoderSelfAttention,
                           "router_logits": ROUTER_LOGITS_RECORDER}
    # Checkpoints written by transformers 4.x hold BERT's position-id buffer; it is recomputed here.
    _keys_to_ignore_on_load_unexpected = [r"embeddings\.position_ids"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, HfGenEncoderPredictionHead):
            init.zeros_(module.bias)


class HfGenEncoderModel(HfGenEncoderPreTrainedModel):
    """The bare encoder: embeddings, layers, and (``add_pooling_layer``) BERT's pooler. Returns
    ``BaseModelOutputWithPooling`` (``pooler_output`` is None without the pooler)."""

    def __init__(self, config: HfGenEncoderConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = HfGenEncoderEmbeddings(config)
        self.encoder = HfGenEncoderStack(config)
        self.pooler = HfGenEncoderPooler(config) if add_pooling_layer else None
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

    @merge_with_config_defaults
    @capture_outputs
    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.LongTensor | None = None, position_ids: torch.LongTensor | None = None,
                inputs_embeds: torch.Tensor | None = None,
                **kwargs: Unpack[TransformersKwargs]) -> BaseModelOutputWithPooling:
        """``attention_mask``: 1 for real tokens, 0 for padding (any side); ``token_type_ids``: segment ids below
        ``type_vocab_size`` (zeros when absent); ``position_ids``: ``0..S-1`` when absent (BERT)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        check_router_request(self.config, kwargs.get("output_router_logits"))
        check_inputs(self.config, input_ids, inputs_embeds, attention_mask, 0, position_ids)
        reference = input_ids if input_ids is not None else inputs_embeds
        check_token_types(self.config, token_type_ids, reference.shape[:2])
        if position_ids is None:
            position_ids = torch.arange(reference.shape[1], device=reference.device).unsqueeze(0)
        check_learned_positions(self.config, position_ids)
        hidden_states = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds)
        mask = create_bidirectional_mask(config=self.config, inputs_embeds=hidden_states,
                                         attention_mask=attention_mask)
        hidden_states = self.encoder(hidden_states, mask, position_ids, **kwargs)
        pooled = self.pooler(hidden_states) if self.pooler is not None else None
        # With num_experts: a router_logits field, filled when output_router_logits is on (moe.py).
        return base_output_class(self.config, BaseModelOutputWithPooling)(last_hidden_state=hidden_states,
                                                                          pooler_output=pooled)


class HfGenEncoderForMaskedLM(HfGenEncoderPreTrainedModel):
    """Encoder with BERT's MLM head. ``labels``: the original token ids at masked positions, -100 elsewhere (what
    ``hfgen.data.mlm.MaskedLMCollator`` produces). Works with ``pipeline("fill-mask")``."""

    _tied_weights_keys = {
        "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
        "cls.predictions.decoder.bias": "cls.predictions.bias",
    }

    def __init__(self, config: HfGenEncoderConfig):
        super().__init__(config)
        self.bert = HfGenEncoderModel(config, add_pooling_layer=False)
        self.cls = HfGenEncoderMLMHead(config)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.cls.predictions.decoder

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.cls.predictions.decoder = value
        self.cls.predictions.bias = value.bias

    @can_return_tuple
    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.LongTensor | None = None, position_ids: torch.LongTensor | None = None,
                inputs_embeds: torch.Tensor | None = None, labels: torch.LongTensor | None = None,
                **kwargs: Unpack[TransformersKwargs]) -> MaskedLMOutput:
        check_mlm_labels(self.config, labels, input_ids, inputs_embeds)
        outputs = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                            position_ids=position_ids, inputs_embeds=inputs_embeds, **kwargs)
        logits = self.cls(outputs.last_hidden_state)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, self.config.vocab_size, **kwargs)
        # With router logits: aux_loss, z_loss and router_logits too, router losses added to the loss (moe.py).
        return moe_output(self.config, outputs, attention_mask, MaskedLMOutput, loss=loss, logits=logits,
                          hidden_states=outputs.hidden_states, attentions=outputs.attentions)


def check_mlm_labels(config: HfGenEncoderConfig, labels: torch.Tensor | None,
                     input_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None) -> None:
    """Masked-LM labels: token ids or -100, one per input token (the input's shape when it is given)."""
    if labels is None:
        return
    if input_ids is None and inputs_embeds is None:  # (the training loop's own check, before the model runs)
        check_lm_labels(labels, config.vocab_size, labels.shape)
    else:
        check_head_inputs(config, input_ids, inputs_embeds, labels)


@dataclass
class HfGenEncoderForPreTrainingOutput(ModelOutput):
    """BERT's pre-training output: ``loss`` = MLM loss + next-sentence loss (when labels are given),
    ``prediction_logits`` ``[B, S, vocab]``, ``seq_relationship_logits`` ``[B, 2]`` (0: B follows A, 1: random)."""

    loss: torch.FloatTensor | None = None
    prediction_logits: torch.FloatTensor | None = None
    seq_relationship_logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class HfGenEncoderForPreTraining(HfGenEncoderPreTrainedModel):
    """BERT's two pre-training objectives at once: masked language modelling and next sentence prediction (seed 003:
    "a binary classification of whether or not the second sentence belongs after the first"), on the pooled [CLS].
    ``next_sentence_label``: 0 when segment B follows A in the text, 1 when it is random (BERT's convention; what
    ``hfgen.data.mlm.NextSentenceCollator`` produces)."""

    _tied_weights_keys = HfGenEncoderForMaskedLM._tied_weights_keys
    # BERT's loss is the sum of two per-batch means: Trainer must scale it for gradient accumulation itself.
    accepts_loss_kwargs = False

    def __init__(self, config: HfGenEncoderConfig):
        super().__init__(config)
        self.bert = HfGenEncoderModel(config)
        self.cls = HfGenEncoderPreTrainingHeads(config)
        self.post_init()

    get_output_embeddings = HfGenEncoderForMaskedLM.get_output_embeddings
    set_output_embeddings = HfGenEncoderForMaskedLM.set_output_embeddings

    @can_return_tuple
    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.LongTensor | None = None, position_ids: torch.LongTensor | None = None,
                inputs_embeds: torch.Tensor | None = None, labels: torch.LongTensor | None = None,
                next_sentence_label: torch.LongTensor | None = None,
                **kwargs: Unpack[TransformersKwargs]) -> HfGenEncoderForPreTrainingOutput:
        check_mlm_labels(self.config, labels, input_ids, inputs_embeds)
        if next_sentence_label is not None and next_sentence_label.numel() and not torch.compiler.is_compiling():
            if ((next_sentence_label != 0) & (next_sentence_label != 1)).any():
                raise ValueError("next_sentence_label must be 0 (B follows A) or 1 (B is random), got "
                                 f"{next_sentence_label.unique().tolist()}.")
        outputs = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                            position_ids=position_ids, inputs_embeds=inputs_embeds, **kwargs)
        prediction_logits = self.cls(outputs.last_hidden_state)
        relationship_logits = self.cls.seq_relationship(outputs.pooler_output)
        loss = None
        if labels is not None and next_sentence_label is not None:
            loss = nn.functional.cross_entropy(prediction_logits.view(-1, self.config.vocab_size).float(),
                                               labels.view(-1), ignore_index=-100)
            loss = loss + nn.functional.cross_entropy(relationship_logits.view(-1, 2).float(),
                                                      next_sentence_label.view(-1))
        elif (labels is None) != (next_sentence_label is None):
            raise ValueError("Pre-training needs both labels (MLM targets) and next_sentence_label, or neither.")
        return moe_output(self.config, outputs, attention_mask, HfGenEncoderForPreTrainingOutput, loss=loss,
                          prediction_logits=prediction_logits, seq_relationship_logits=relationship_logits,
                          hidden_states=outputs.hidden_states, attentions=outputs.attentions)


class HfGenEncoderForSequenceClassification(HfGenEncoderPreTrainedModel):
    """Classification / regression of the whole input from BERT's pooled first token (``problem_type`` as in
    transformers: regression for one label, single- or multi-label classification otherwise). Works with
    ``pipeline("text-classification")``."""

    # Its loss is a per-batch mean (num_items_in_batch unused): without this, Trainer sees **kwargs in forward,
    # scales the loss by the number of processes for a token-sum loss it is not, and N processes train apart.
    accepts_loss_kwargs = False

    def __init__(self, config: HfGenEncoderConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = HfGenEncoderModel(config)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.LongTensor | None = None, position_ids: torch.LongTensor | None = None,
                inputs_embeds: torch.Tensor | None = None, labels: torch.LongTensor | None = None,
                **kwargs: Unpack[TransformersKwargs]) -> SequenceClassifierOutput:
        check_classification_labels(self.config, labels, input_ids, inputs_embeds)
        outputs = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                            position_ids=position_ids, inputs_embeds=inputs_embeds, **kwargs)
        logits = self.classifier(self.dropout(outputs.pooler_output))
        loss = None
        if labels is not None:
            loss = self.loss_function(labels=labels, pooled_logits=logits, config=self.config)
        return moe_output(self.config, outputs, attention_mask, SequenceClassifierOutput, loss=loss, logits=logits,
                          hidden_states=outputs.hidden_states, attentions=outputs.attentions)


class HfGenEncoderForTokenClassification(HfGenEncoderPreTrainedModel):
    """A label per token (BERT's ``BertForTokenClassification``); ``labels`` -100 where ignored. Works with
    ``pipeline("token-classification")``."""

    # Its loss is a per-batch mean (num_items_in_batch unused): without this, Trainer sees **kwargs in forward,
    # scales the loss by the number of processes for a token-sum loss it is not, and N processes train apart.
    accepts_loss_kwargs = False

    def __init__(self, config: HfGenEncoderConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = HfGenEncoderModel(config, add_pooling_layer=False)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.LongTensor | None = None, position_ids: torch.LongTensor | None = None,
                inputs_embeds: torch.Tensor | None = None, labels: torch.LongTensor | None = None,
                **kwargs: Unpack[TransformersKwargs]) -> TokenClassifierOutput:
        check_classification_labels(self.config, labels, input_ids, inputs_embeds, per_token=True)
        outputs = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                            position_ids=position_ids, inputs_embeds=inputs_embeds, **kwargs)
        logits = self.classifier(self.dropout(outputs.last_hidden_state))
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, self.config)
        return moe_output(self.config, outputs, attention_mask, TokenClassifierOutput, loss=loss, logits=logits,
                          hidden_states=outputs.hidden_states, attentions=outputs.attentions)
