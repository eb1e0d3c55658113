"""HuBERT's two pre-training iterations and keyword fine-tuning for ``hfgen_speech``.

Iteration 1 predicts k-means clusters of MFCCs (13 coefficients with their first and second differences, one
vector per model frame: 25 ms windows every 20 ms); iteration 2 predicts k-means clusters of the iteration-1
model's own features (a middle layer, as HuBERT takes layer 6 of 12). Each iteration trains
``HfGenSpeechForPreTraining`` with ``Trainer`` on the model's own loss (cross-entropy of the cluster ids at masked
frames).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import datasets
import numpy as np
import torch
from scipy.fft import dct
from sklearn.cluster import MiniBatchKMeans
from transformers import Trainer, TrainingArguments
from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

logger = logging.getLogger(__name__)

NUM_MEL = 40
NUM_MFCC = 13


def mfcc_frames(audio: np.ndarray, config) -> np.ndarray:
    """``[frames, 39]``: 13 MFCCs (log mel energies of 40 HTK mel bands through an orthonormal DCT-II), their first
    and second differences over time, on the model's frames: windows of ``config.receptive_field`` samples every
    ``config.inputs_to_logits_ratio`` (25 ms every 20 ms with HuBERT's geometry), ``config.num_frames(len)`` of them."""
    width, hop = config.receptive_field, config.inputs_to_logits_ratio
    if len(audio) < width:
        raise ValueError(f"Audio of {len(audio)} samples is shorter than one {width}-sample frame.")
    fft_length = 1 << (width - 1).bit_length()
    mel = mel_filter_bank(num_frequency_bins=fft_length // 2 + 1, num_mel_filters=NUM_MEL, min_frequency=20.0,
                          max_frequency=config.sampling_rate / 2, sampling_rate=config.sampling_rate, mel_scale="htk")
    log_mel = spectrogram(np.asarray(audio, dtype=np.float64), window_function(width, "hann"), frame_length=width,
                          hop_length=hop, fft_length=fft_length, power=2.0, center=False, mel_filters=mel,
                          mel_floor=1e-10, log_mel="log")
    coefficients = dct(log_mel, type=2, axis=0, norm="ortho")[:NUM_MFCC].T
    if len(coefficients) < 2:
        return np.concatenate([coefficients, np.zeros_like(coefficients), np.zeros_like(coefficients)], 1)
    delta = np.gradient(coefficients, axis=0)
    delta2 = np.gradient(delta, axis=0)
    return np.concatenate([coefficients, delta, delta2], 1).astype(np.float32)


@torch.no_grad()
def layer_frames(model, input_values: list[np.ndarray], layer: int, batch_size: int = 32) -> list[np.ndarray]:
    """Each clip's frames ``[frames, hidden_size]`` after encoder layer ``layer`` (0: the input to the first layer),
    unmasked, in eval mode: the features iteration 2 clusters."""
    model.eval()
    base = model.base_model
    outputs = []
    for start in range(0, len(input_values), batch_size):
        chunk = input_values[start:start + batch_size]
        longest = max(len(x) for x in chunk)
        values = torch.zeros(len(chunk), longest)
        mask = torch.zeros(len(chunk), longest, dtype=torch.long)
        for row, x in enumerate(chunk):
            values[row, :len(x)], mask[row, :len(x)] = torch.as_tensor(x), 1
        hidden = base(values, attention_mask=mask, output_hidden_states=True).hidden_states[layer]
        frames = base._get_feat_extract_output_lengths(mask.sum(-1)).tolist()
        outputs += [hidden[row, :count].float().numpy() for row, count in enumerate(frames)]
    return outputs


def cluster_targets(frames: list[np.ndarray], num_clusters: int, seed: int = 0) -> tuple[MiniBatchKMeans, list]:
    """k-means (scikit-learn's ``MiniBatchKMeans``) over every frame of every clip, and each clip's cluster ids."""
    stacked = np.concatenate(frames)
    if len(stacked) < num_clusters:
        raise ValueError(f"{len(stacked)} frames cannot make {num_clusters} clusters: lower num_clusters.")
    kmeans = MiniBatchKMeans(n_clusters=num_clusters, random_state=seed, batch_size=4096, n_init=3)
    kmeans.fit(stacked)
    return kmeans, [kmeans.predict(x).astype(np.int64) for x in frames]


@dataclass
class SpeechCollator:
    """Pads ``input_values`` (the feature extractor's ``pad``: zeros and an attention mask) and, when the examples
    carry them, per-frame ``labels`` with -100 (pre-training) or one class id each (classification)."""

    feature_extractor: object
    config: object  # the model's HfGenSpeechConfig: how many frames a padded batch makes

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.feature_extractor.pad([{"input_values": e["input_values"]} for e in examples],
                                           padding=True, return_attention_mask=True, return_tensors="pt")
        batch = {"input_values": batch["input_values"].float(), "attention_mask": batch["attention_mask"]}
        if "labels" in examples[0]:
            labels = [torch.as_tensor(e["labels"]) for e in examples]
            if labels[0].dim() == 0:
                batch["labels"] = torch.stack(labels)
            else:
                frames = self.config.num_frames(batch["input_values"].shape[1])
                batch["labels"] = torch.full((len(labels), frames), -100, dtype=torch.long)
                for row, label in enumerate(labels):
                    batch["labels"][row, :len(label)] = label
        return batch


def normalized_inputs(feature_extractor, corpus: datasets.Dataset) -> list[np.ndarray]:
    """Each clip as the feature extractor gives it (zero mean, unit variance), unpadded."""
    return [feature_extractor(a["array"], sampling_rate=a["sampling_rate"])["input_values"][0]
            for a in corpus["audio"]]


def train_on(model, input_values: list[np.ndarray], labels: list, feature_extractor,
             training_args: TrainingArguments) -> list[tuple[int, float]]:
    """Train ``model`` with ``Trainer`` on its own loss: per-frame cluster ids (one HuBERT iteration) or one class id
    per clip (keyword fine-tuning). Returns the logged (step, loss) pairs."""
    labels = [x.tolist() if isinstance(x, np.ndarray) else x for x in labels]
    examples = datasets.Dataset.from_dict({"input_values": [x.tolist() for x in input_values], "labels": labels})
    trainer = Trainer(model=model, args=training_args, train_dataset=examples,
                      data_collator=SpeechCollator(feature_extractor, model.config))
    trainer.train()
    return [(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e]


@torch.no_grad()
def classification_accuracy(model, input_values: list[np.ndarray], labels: list[int], feature_extractor,
                            batch_size: int = 64) -> float:
    """Share of clips whose arg-max logit is their label."""
    model.eval()
    collate = SpeechCollator(feature_extractor, model.config)
    correct = 0
    for start in range(0, len(input_values), batch_size):
        batch = collate([{"input_values": x} for x in input_values[start:start + batch_size]])
        predicted = model(**batch).logits.argmax(-1)
        correct += int((predicted == torch.as_tensor(labels[start:start + batch_size])).sum())
    return correct / len(input_values)


def few_label_subset(labels: list[int], per_class: int, seed: int) -> list[int]:
    """Indices of ``per_class`` examples of each class (seeded choice)."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    chosen = []
    for label in np.unique(labels):
        where = np.flatnonzero(labels == label)
        if len(where) < per_class:
            raise ValueError(f"class {label} has {len(where)} examples, fewer than {per_class} labels per class.")
        chosen += rng.choice(where, per_class, replace=False).tolist()
    return sorted(chosen)
