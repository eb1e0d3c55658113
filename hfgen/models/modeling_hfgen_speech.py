"""hfgen's speech encoder (``hfgen_speech``): HuBERT (Hsu et al. 2021) with hfgen's encoder layers.

Layout: transformers' ``HubertModel`` name for name up to the transformer, whose layers are hfgen's BERT-shaped
encoder layers (any attention / softmax / norm variant; ``convert_hubert_state_dict`` renames a HuBERT checkpoint)::

    hubert.feature_extractor.conv_layers.N.{conv, layer_norm}     the waveform -> frames (20 ms at 16 kHz)
    hubert.feature_projection.{layer_norm, projection}           frames -> hidden_size
    hubert.masked_spec_embed                                     replaces the masked frames
    hubert.encoder.pos_conv_embed.conv                           grouped convolution: relative positions
    hubert.encoder.{layer_norm, layer.N.*, final_layer_norm}     post-norm (HuBERT base) or pre-norm ("stable")
    final_proj, label_embeddings                                 pre-training: cosine logits over cluster ids
    projector, classifier                                        keyword classification (mean over frames)

Pre-training (HuBERT's objective): spans of frames are masked (``compute_mask_indices``), and the model predicts
each masked frame's cluster id ``z_t`` from ``logits[t, c] = cos(final_proj(h_t), e_c) / logit_temperature``; the
loss is the cross-entropy over the masked frames only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import BaseModelOutput, SequenceClassifierOutput
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs, can_return_tuple
from transformers.utils.output_capturing import capture_outputs

from .configuration_hfgen_speech import HfGenSpeechConfig
from .input_checks import check_classification_labels, check_finite
from .modeling_common import HfGenPreTrainedModel
from .modeling_hfgen_encoder import HfGenEncoderLayer, HfGenEncoderSelfAttention, HfGenEncoderStack


def compute_mask_indices(shape: tuple[int, int], mask_prob: float, mask_length: int,
                         attention_mask: torch.Tensor | None = None, min_masks: int = 0, rng=np.random) -> np.ndarray:
    """HuBERT's / wav2vec 2.0's span masks (transformers' ``_compute_mask_indices``, the same draws in the same
    order, so the same ``rng`` state gives the same mask): each row of ``shape = (batch, frames)`` gets
    ``n = max(min_masks, int(mask_prob * length / mask_length + u))`` spans (``u ~ U[0, 1)`` drawn once per batch:
    probabilistic rounding), at most ``length - mask_length + 1``, starting at distinct frames drawn uniformly
    among the first ``length - mask_length + 1``; each span covers ``mask_length`` frames (spans may overlap).
    ``attention_mask`` (frames, right-padded) gives each row's length. ``rng``: ``np.random`` (the global state, as
    transformers) or a ``np.random.RandomState``."""
    batch, frames = shape
    if mask_length < 1 or mask_length > frames:
        raise ValueError(f"mask_length must lie in [1, frames={frames}], got {mask_length}: the clips are too short "
                         f"for spans of this length (lower mask_time_length).")
    epsilon = rng.rand(1).item()

    def num_spans(length: int) -> int:
        count = max(int(mask_prob * length / mask_length + epsilon), min_masks)
        count = min(count, frames // mask_length)
        return max(min(count, length - (mask_length - 1)), 0)

    lengths = attention_mask.detach().sum(-1).tolist() if attention_mask is not None else [frames] * batch
    mask = np.zeros((batch, frames), dtype=bool)
    most = num_spans(frames)
    if most == 0:
        return mask
    starts = []
    for length in lengths:
        count = num_spans(length)
        chosen = rng.choice(np.arange(length - (mask_length - 1)), count, replace=False)
        dummy = chosen[0] if len(chosen) else frames - 1  # pads every row to `most` spans (repeats a span)
        starts.append(np.concatenate([chosen, np.ones(most - count, dtype=np.int32) * dummy]))
    indices = (np.array(starts)[:, :, None] + np.arange(mask_length)[None, None, :]).reshape(batch, -1)
    np.put_along_axis(mask, np.minimum(indices, frames - 1), True, -1)
    return mask


def check_input_values(config: HfGenSpeechConfig, input_values, attention_mask: torch.Tensor | None) -> None:
    """Clear errors for audio the convolutions cannot read, before any weight is used."""
    if not isinstance(input_values, torch.Tensor) or input_values.dim() != 2:
        shape = tuple(input_values.shape) if isinstance(input_values, torch.Tensor) else type(input_values).__name__
        raise ValueError(f"input_values must be a 2D float tensor [batch, samples] of mono audio at "
                         f"{config.sampling_rate} Hz; got {shape} (1D: add a batch dimension; several channels: "
                         f"average them first).")
    if not input_values.is_floating_point():
        raise ValueError(f"input_values must be floating point (the feature extractor's output), got "
                         f"{input_values.dtype}.")
    lengths = [input_values.shape[1]] * input_values.shape[0]
    if attention_mask is not None:
        if tuple(attention_mask.shape) != tuple(input_values.shape):
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}; expected "
                             f"{tuple(input_values.shape)} (one 0/1 per sample of input_values).")
        lengths = attention_mask.sum(-1).tolist()
    if min(lengths, default=0) < config.receptive_field:
        raise ValueError(f"Audio of {min(lengths, default=0)} samples is too short: the convolutional feature "
                         f"encoder needs at least {config.receptive_field} samples "
                         f"({1000 * config.receptive_field / config.sampling_rate:.0f} ms at "
                         f"{config.sampling_rate} Hz) for one frame.")
    check_finite("input_values", input_values)


class HfGenSpeechConvLayer(nn.Module):
    """One convolution of the feature encoder, with HuBERT's norm (GroupNorm with a group per channel on the first
    layer with ``feat_extract_norm="group"``, LayerNorm over channels on every layer with ``"layer"``)."""

    def __init__(self, config: HfGenSpeechConfig, layer_id: int):
        super().__init__()
        in_dim = config.conv_dim[layer_id - 1] if layer_id > 0 else 1
        out_dim = config.conv_dim[layer_id]
        self.conv = nn.Conv1d(in_dim, out_dim, kernel_size=config.conv_kernel[layer_id],
                              stride=config.conv_stride[layer_id], bias=config.conv_bias)
        self.norm_kind = config.feat_extract_norm if config.feat_extract_norm == "layer" or layer_id == 0 else None
        if self.norm_kind == "group":
            self.layer_norm = nn.GroupNorm(num_groups=out_dim, num_channels=out_dim, affine=True)
        elif self.norm_kind == "layer":
            self.layer_norm = nn.LayerNorm(out_dim, elementwise_affine=True)
        self.activation = ACT2FN[config.feat_extract_activation]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.conv(hidden_states)
        if self.norm_kind == "group":
            hidden_states = self.layer_norm(hidden_states)
        elif self.norm_kind == "layer":
            hidden_states = self.layer_norm(hidden_states.transpose(-2, -1)).transpose(-2, -1)
        return self.activation(hidden_states)


class HfGenSpeechFeatureEncoder(nn.Module):
    """The waveform ``[B, samples]`` -> frames ``[B, conv_dim[-1], frames]``."""

    def __init__(self, config: HfGenSpeechConfig):
        super().__init__()
        self.conv_layers = nn.ModuleList(HfGenSpeechConvLayer(config, i) for i in range(len(config.conv_dim)))

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        hidden_states = input_values[:, None]
        for layer in self.conv_layers:
            hidden_states = layer(hidden_states)
        return hidden_states


class HfGenSpeechFeatureProjection(nn.Module):
    def __init__(self, config: HfGenSpeechConfig):
        super().__init__()
        if config.feat_proj_layer_norm:
            self.layer_norm = nn.LayerNorm(config.conv_dim[-1], eps=config.layer_norm_eps)
        self.projection = nn.Linear(config.conv_dim[-1], config.hidden_size)
        self.dropout = nn.Dropout(config.feat_proj_dropout)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "layer_norm"):
            features = self.layer_norm(features)
        return self.dropout(self.projection(features))


class HfGenSpeechPositionalConvEmbedding(nn.Module):
    """HuBERT's relative positions: a grouped, weight-normalised convolution over time (``same`` padding), GELU."""

    def __init__(self, config: HfGenSpeechConfig):
        super().__init__()
        width = config.num_conv_pos_embeddings
        conv = nn.Conv1d(config.hidden_size, config.hidden_size, kernel_size=width, padding=width // 2,
                         groups=config.num_conv_pos_embedding_groups)
        self.conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
        self.num_pad_remove = 1 if width % 2 == 0 else 0
        self.activation = ACT2FN[config.feat_extract_activation]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.conv(hidden_states.transpose(1, 2))
        if self.num_pad_remove:
            hidden_states = hidden_states[:, :, :-self.num_pad_remove]
        return self.activation(hidden_states).transpose(1, 2)


class HfGenSpeechEncoder(HfGenEncoderStack):
    """Positional convolution, (post-norm) LayerNorm, dropout, then hfgen's encoder layers (and, pre-norm, their
    final norm: HuBERT's "stable layer norm" ``encoder.layer_norm``)."""

    def __init__(self, config: HfGenSpeechConfig):
        super().__init__(config)
        self.pos_conv_embed = HfGenSpeechPositionalConvEmbedding(config)
        if config.norm_position == "post":
            self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, frame_mask: torch.Tensor | None = None,
                **kwargs: Unpack[TransformersKwargs]) -> torch.Tensor:
        if frame_mask is not None:  # padded frames carry nothing into the positional convolution
            hidden_states = hidden_states * frame_mask[..., None].to(hidden_states.dtype)
        mask = create_bidirectional_mask(config=self.config, inputs_embeds=hidden_states, attention_mask=frame_mask)
        hidden_states = hidden_states + self.pos_conv_embed(hidden_states)
        if hasattr(self, "layer_norm"):
            hidden_states = self.layer_norm(hidden_states)
        hidden_states = self.dropout(hidden_states)
        position_ids = torch.arange(hidden_states.shape[1], device=hidden_states.device).unsqueeze(0)
        return super().forward(hidden_states, mask, position_ids, **kwargs)


class HfGenSpeechPreTrainedModel(HfGenPreTrainedModel):
    config_class = HfGenSpeechConfig
    config: HfGenSpeechConfig
    base_model_prefix = "hubert"  # HuBERT's: its checkpoints and heads load in both directions once renamed
    main_input_name = "input_values"
    input_modalities = "audio"
    _no_split_modules = ["HfGenEncoderLayer", "HfGenSpeechFeatureEncoder"]
    _can_record_outputs = {"hidden_states": HfGenEncoderLayer, "attentions": HfGenEncoderSelfAttention}

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, HfGenSpeechPositionalConvEmbedding):  # wav2vec 2.0's: N(0, sqrt(4 / (k d))), g = |v|
            conv = module.conv
            weight = conv.parametrizations.weight
            std = (4.0 / (conv.kernel_size[0] * conv.in_channels)) ** 0.5
            init.normal_(weight.original1, mean=0.0, std=std)
            init.copy_(weight.original0, torch.linalg.vector_norm(weight.original1, dim=(0, 1), keepdim=True))
            init.zeros_(conv.bias)
        elif isinstance(module, HfGenSpeechConvLayer):
            init.kaiming_normal_(module.conv.weight)
            if module.conv.bias is not None:
                init.zeros_(module.conv.bias)
        elif isinstance(module, HfGenSpeechModel):
            init.uniform_(module.masked_spec_embed)
        elif isinstance(module, HfGenSpeechForPreTraining):
            init.normal_(module.label_embeddings, mean=0.0, std=self.config.final_dim ** -0.5)

    def _get_feat_extract_output_lengths(self, input_lengths: torch.Tensor | int) -> torch.Tensor | int:
        """Frames the feature encoder makes of ``input_lengths`` samples (HuBERT's name)."""
        return self.config.num_frames(input_lengths)

    def _get_feature_vector_attention_mask(self, frames: int, attention_mask: torch.Tensor) -> torch.Tensor:
        """The samples' 0/1 mask (right padding) -> a boolean mask over the ``frames`` frames."""
        lengths = self._get_feat_extract_output_lengths(attention_mask.sum(-1).long())
        return torch.arange(frames, device=attention_mask.device)[None, :] < lengths[:, None]

    def freeze_feature_encoder(self) -> None:
        """Stop training the convolutional feature encoder (as HuBERT's fine-tuning does)."""
        self.base_model.feature_extractor.requires_grad_(False)


class HfGenSpeechModel(HfGenSpeechPreTrainedModel):
    """The bare speech encoder. ``input_values``: ``[B, samples]`` mono audio at ``sampling_rate``, normalised by
    the feature extractor; ``attention_mask``: 1 for samples, 0 for (right) padding; ``mask_time_indices``:
    ``[B, frames]`` boolean, the frames replaced by ``masked_spec_embed`` (in training without it, spans are drawn
    with the config's ``mask_time_*`` keys, as HuBERT's SpecAugment). Returns ``BaseModelOutput``
    (``last_hidden_state`` ``[B, frames, hidden_size]``)."""

    def __init__(self, config: HfGenSpeechConfig):
        super().__init__(config)
        self.feature_extractor = HfGenSpeechFeatureEncoder(config)
        self.feature_projection = HfGenSpeechFeatureProjection(config)
        self.masked_spec_embed = nn.Parameter(torch.empty(config.hidden_size))
        self.encoder = HfGenSpeechEncoder(config)
        self.post_init()

    def mask_frames(self, hidden_states: torch.Tensor, mask_time_indices: torch.Tensor | None,
                    frame_mask: torch.Tensor | None) -> torch.Tensor:
        """Masked frames take the mask embedding (drawn here in training when none are given)."""
        if mask_time_indices is None and self.training and self.config.mask_time_prob > 0:
            mask_time_indices = torch.from_numpy(compute_mask_indices(
                tuple(hidden_states.shape[:2]), self.config.mask_time_prob, self.config.mask_time_length,
                frame_mask, self.config.mask_time_min_masks)).to(hidden_states.device)
        if mask_time_indices is None:
            return hidden_states
        if tuple(mask_time_indices.shape) != tuple(hidden_states.shape[:2]) or mask_time_indices.dtype != torch.bool:
            raise ValueError(f"mask_time_indices must be a boolean tensor of shape {tuple(hidden_states.shape[:2])} "
                             f"(batch, frames); got {mask_time_indices.dtype} {tuple(mask_time_indices.shape)}.")
        embed = self.masked_spec_embed.to(hidden_states.dtype)
        return torch.where(mask_time_indices[..., None], embed, hidden_states)

    @capture_outputs
    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None,
                mask_time_indices: torch.Tensor | None = None,
                **kwargs: Unpack[TransformersKwargs]) -> BaseModelOutput:
        check_input_values(self.config, input_values, attention_mask)
        features = self.feature_extractor(input_values.to(self.dtype)).transpose(1, 2)
        frame_mask = None
        if attention_mask is not None:
            frame_mask = self._get_feature_vector_attention_mask(features.shape[1], attention_mask)
        hidden_states = self.mask_frames(self.feature_projection(features), mask_time_indices, frame_mask)
        return BaseModelOutput(last_hidden_state=self.encoder(hidden_states, frame_mask, **kwargs))


@dataclass
class HfGenSpeechForPreTrainingOutput(ModelOutput):
    """``loss``: cross-entropy of the cluster ids over the masked frames; ``logits`` ``[B, frames, num_clusters]``;
    ``mask_time_indices`` ``[B, frames]``: the frames that were masked (and scored)."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    mask_time_indices: torch.BoolTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class HfGenSpeechForPreTraining(HfGenSpeechPreTrainedModel):
    """HuBERT's masked prediction of hidden units. ``labels``: ``[B, frames]`` cluster ids in ``[0, num_clusters)``,
    -100 where unknown (padding). With labels and no ``mask_time_indices``, spans are drawn from the config (with
    numpy's global state, as HuBERT; pass ``mask_time_indices`` to fix them)."""

    # The loss is a mean over this batch's masked frames: Trainer scales it for accumulation itself.
    accepts_loss_kwargs = False

    def __init__(self, config: HfGenSpeechConfig):
        super().__init__(config)
        self.hubert = HfGenSpeechModel(config)
        self.final_proj = nn.Linear(config.hidden_size, config.final_dim)
        self.label_embeddings = nn.Parameter(torch.empty(config.num_clusters, config.final_dim))
        self.post_init()

    def cluster_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``cos(final_proj(h_t), e_c) / logit_temperature`` for every frame and cluster."""
        projected = nn.functional.normalize(self.final_proj(hidden_states), dim=-1, eps=1e-8)
        clusters = nn.functional.normalize(self.label_embeddings, dim=-1, eps=1e-8)
        return projected @ clusters.T / self.config.logit_temperature

    def draw_mask(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        frames = self._get_feat_extract_output_lengths(input_values.shape[1])
        frame_mask = None if attention_mask is None else self._get_feature_vector_attention_mask(frames,
                                                                                                 attention_mask)
        return torch.from_numpy(compute_mask_indices(
            (input_values.shape[0], frames), self.config.mask_time_prob, self.config.mask_time_length, frame_mask,
            self.config.mask_time_min_masks)).to(input_values.device)

    def check_labels(self, labels: torch.Tensor, input_values: torch.Tensor) -> None:
        expected = (input_values.shape[0], self._get_feat_extract_output_lengths(input_values.shape[1]))
        if tuple(labels.shape) != expected or labels.is_floating_point():
            raise ValueError(f"labels must be integer cluster ids of shape {expected} (batch, frames); got "
                             f"{labels.dtype} {tuple(labels.shape)}.")
        valid = labels[labels != -100]
        if valid.numel() and (valid.min() < 0 or valid.max() >= self.config.num_clusters):
            raise ValueError(f"labels must lie in [0, num_clusters={self.config.num_clusters}) or be -100; got ids "
                             f"from {int(valid.min())} to {int(valid.max())}.")

    @can_return_tuple
    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.LongTensor | None = None, mask_time_indices: torch.Tensor | None = None,
                **kwargs: Unpack[TransformersKwargs]) -> HfGenSpeechForPreTrainingOutput:
        check_input_values(self.config, input_values, attention_mask)
        if labels is not None:
            self.check_labels(labels, input_values)
            if mask_time_indices is None:
                mask_time_indices = self.draw_mask(input_values, attention_mask)
        outputs = self.hubert(input_values, attention_mask=attention_mask, mask_time_indices=mask_time_indices,
                              **kwargs)
        logits = self.cluster_logits(outputs.last_hidden_state)
        loss = None
        if labels is not None:
            scored = mask_time_indices & (labels != -100)
            loss = nn.functional.cross_entropy(logits[scored].float(), labels[scored])
        return HfGenSpeechForPreTrainingOutput(loss=loss, logits=logits, mask_time_indices=mask_time_indices,
                                               hidden_states=outputs.hidden_states, attentions=outputs.attentions)


class HfGenSpeechForSequenceClassification(HfGenSpeechPreTrainedModel):
    """Keyword classification (HuBERT's head): ``projector``, the mean over the clip's frames, ``classifier``.
    Works with ``pipeline("audio-classification")``."""

    accepts_loss_kwargs = False  # a per-batch mean

    def __init__(self, config: HfGenSpeechConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.hubert = HfGenSpeechModel(config)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.projector = nn.Linear(config.hidden_size, config.classifier_proj_size)
        self.classifier = nn.Linear(config.classifier_proj_size, config.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.LongTensor | None = None,
                **kwargs: Unpack[TransformersKwargs]) -> SequenceClassifierOutput:
        check_classification_labels(self.config, labels, input_values, None)
        outputs = self.hubert(input_values, attention_mask=attention_mask, **kwargs)
        hidden_states = self.projector(self.dropout(outputs.last_hidden_state))
        if attention_mask is None:
            pooled = hidden_states.mean(1)
        else:
            frames = self._get_feature_vector_attention_mask(hidden_states.shape[1], attention_mask)
            weights = frames.to(hidden_states.dtype)[..., None]
            pooled = (hidden_states * weights).sum(1) / weights.sum(1)
        logits = self.classifier(pooled)
        loss = None
        if labels is not None:
            loss = self.loss_function(labels=labels, pooled_logits=logits, config=self.config)
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                        attentions=outputs.attentions)


# HubertModel's layer names -> hfgen's encoder layers' (the rest of the names are HuBERT's already).
HUBERT_LAYER_RENAMES = {
    "attention.q_proj": "attention.self.query", "attention.k_proj": "attention.self.key",
    "attention.v_proj": "attention.self.value", "attention.out_proj": "attention.output.dense",
    "layer_norm": "attention.output.LayerNorm", "feed_forward.intermediate_dense": "intermediate.dense",
    "feed_forward.output_dense": "output.dense", "final_layer_norm": "output.LayerNorm",
}


def convert_hubert_state_dict(state_dict: dict[str, torch.Tensor], stable_layer_norm: bool = False) -> dict:
    """A ``transformers`` HuBERT state dict (``HubertModel`` or a head's ``hubert.*``) with hfgen's names: load it
    into a model of ``HfGenSpeechConfig`` with the same sizes (``norm_position="pre"`` for
    ``do_stable_layer_norm=True``, whose final ``encoder.layer_norm`` becomes ``encoder.final_layer_norm``)."""
    layer = re.compile(r"^(.*encoder\.)layers\.(\d+)\.(.+)\.(weight|bias)$")
    converted = {}
    for key, value in state_dict.items():
        match = layer.match(key)
        if match:
            prefix, index, name, kind = match.groups()
            key = f"{prefix}layer.{index}.{HUBERT_LAYER_RENAMES.get(name, name)}.{kind}"
        elif stable_layer_norm and re.search(r"(^|\.)encoder\.layer_norm\.", key):
            key = key.replace("encoder.layer_norm.", "encoder.final_layer_norm.")
        converted[key] = value
    return converted
