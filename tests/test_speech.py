"""hfgen_speech (HuBERT-style): parity with transformers' HubertModel, span masks, the masked-prediction loss written
out, k-means targets, save -> load, the audio-classification pipeline, code on the Hub, bad input. Random audio and
tiny models: no espeak-ng needed (tests/test_speech_data.py covers the corpus and the recipe)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from transformers import AutoModelForAudioClassification, AutoModelForPreTraining, HubertConfig, HubertModel, pipeline
from transformers.models.hubert.modeling_hubert import _compute_mask_indices

from conftest import build
from hfgen.data.speech import speech_feature_extractor
from hfgen.models import register_auto_classes
from hfgen.models.configuration_hfgen_speech import HfGenSpeechConfig
from hfgen.models.modeling_hfgen_speech import (
    HfGenSpeechForPreTraining,
    HfGenSpeechForSequenceClassification,
    HfGenSpeechModel,
    compute_mask_indices,
    convert_hubert_state_dict,
)
from hfgen.training.speech import SpeechCollator, cluster_targets, mfcc_frames

register_auto_classes()
SIZES = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, conv_dim=[16] * 7,
             num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, layer_norm_eps=1e-5)


def tiny(**overrides) -> HfGenSpeechConfig:
    return HfGenSpeechConfig(**{**SIZES, "num_clusters": 7, **overrides})


def audio(batch: int = 2, samples: int = 4000, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, samples, generator=torch.Generator().manual_seed(seed))


# --- parity with transformers' HuBERT ---------------------------------------------------------------------------

@pytest.mark.parametrize("norm, stable", [("group", False), ("layer", False), ("layer", True)])
def test_same_outputs_as_transformers_hubert_with_the_same_weights(norm, stable):
    """Feature encoder, projection, positional convolution, mask embedding and the encoder layers: HubertModel's
    outputs from the converted weights, with and without padding, with given masked frames."""
    torch.manual_seed(0)
    reference = HubertModel(HubertConfig(**SIZES, feat_extract_norm=norm, do_stable_layer_norm=stable,
                                         mask_time_prob=0.05)).eval()
    model = build(HfGenSpeechModel, tiny(feat_extract_norm=norm, norm_position="pre" if stable else "post"), seed=1)
    model.load_state_dict(convert_hubert_state_dict(reference.state_dict(), stable_layer_norm=stable))
    values = audio(2, 4000)
    mask = torch.ones_like(values, dtype=torch.long)
    mask[1, 2500:] = 0
    frames = model._get_feat_extract_output_lengths(4000)
    masked = torch.zeros(2, frames, dtype=torch.bool)
    masked[0, 3:6] = masked[1, 1:2] = True
    with torch.no_grad():
        for kwargs in ({}, {"attention_mask": mask}, {"mask_time_indices": masked}):
            ours, theirs = model(values, **kwargs), reference(values.clone(), **kwargs)
            torch.testing.assert_close(ours.last_hidden_state, theirs.last_hidden_state, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.feature_extractor(values), reference.feature_extractor(values))
    assert frames == reference._get_feat_extract_output_lengths(torch.tensor(4000)).item()


@pytest.mark.parametrize("prob, length, min_masks, lengths", [
    (0.08, 5, 2, None), (0.5, 3, 0, None), (0.3, 4, 1, [40, 25, 12]), (0.9, 10, 2, [40, 11, 40])])
def test_mask_spans_are_transformers_spans_for_the_same_random_state(prob, length, min_masks, lengths):
    attention = None
    if lengths is not None:
        attention = torch.zeros(len(lengths), 40, dtype=torch.long)
        for row, n in enumerate(lengths):
            attention[row, :n] = 1
    shape = (len(lengths or [0, 0, 0]), 40)
    for seed in range(5):
        np.random.seed(seed)
        theirs = _compute_mask_indices(shape, prob, length, attention, min_masks)
        ours = compute_mask_indices(shape, prob, length, attention, min_masks, rng=np.random.RandomState(seed))
        np.testing.assert_array_equal(ours, theirs)


def test_mask_spans_follow_the_formula():
    """Each row: n = max(min_masks, int(p L / l + u)) distinct starts in [0, L - l], every start's l frames masked,
    nothing outside them (u is the generator's first draw)."""
    batch, frames, prob, span, min_masks = 4, 50, 0.3, 4, 2
    for seed in range(10):
        mask = compute_mask_indices((batch, frames), prob, span, None, min_masks, rng=np.random.RandomState(seed))
        draws = np.random.RandomState(seed)
        u = draws.rand(1).item()
        count = max(int(prob * frames / span + u), min_masks)
        for row in range(batch):
            starts = draws.choice(np.arange(frames - span + 1), count, replace=False)
            expected = np.zeros(frames, dtype=bool)
            for start in starts:
                expected[start:start + span] = True
            np.testing.assert_array_equal(mask[row], expected)
            runs = np.diff(np.flatnonzero(np.diff(np.r_[0, mask[row].astype(int), 0])))[::2]
            assert runs.min() >= span and mask[row].sum() <= count * span


# --- pre-training loss ------------------------------------------------------------------------------------------

def test_loss_is_cross_entropy_of_cosine_logits_on_masked_frames_only():
    model = build(HfGenSpeechForPreTraining, tiny())
    values = audio(2, 4000)
    frames = model._get_feat_extract_output_lengths(4000)
    labels = torch.randint(0, 7, (2, frames), generator=torch.Generator().manual_seed(3))
    labels[1, -2:] = -100
    masked = torch.from_numpy(compute_mask_indices((2, frames), 0.3, 3, None, 1, rng=np.random.RandomState(0)))
    with torch.no_grad():
        out = model(values, labels=labels, mask_time_indices=masked, output_hidden_states=True)
        hidden = model.hubert(values, mask_time_indices=masked).last_hidden_state
        projected = model.final_proj(hidden)
        embeddings = model.label_embeddings
        cosine = (projected @ embeddings.T) / (projected.norm(dim=-1, keepdim=True) * embeddings.norm(dim=-1))
        logits = cosine / model.config.logit_temperature
        terms = [-torch.log_softmax(logits[b, t], -1)[labels[b, t]]
                 for b in range(2) for t in range(frames) if masked[b, t] and labels[b, t] != -100]
        torch.testing.assert_close(out.logits, logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out.loss, torch.stack(terms).mean(), rtol=1e-5, atol=1e-6)
        other = labels.masked_fill(~masked, 0)  # labels of unmasked frames play no part
        assert torch.equal(model(values, labels=other, mask_time_indices=masked).loss, out.loss)
    assert torch.equal(out.mask_time_indices, masked)


def test_training_draws_masks_from_the_config_and_the_loss_trains():
    model = build(HfGenSpeechForPreTraining, tiny(mask_time_prob=0.3, mask_time_length=3)).train()
    values = audio(2, 4000)
    labels = torch.randint(0, 7, (2, model._get_feat_extract_output_lengths(4000)))
    np.random.seed(0)
    out = model(values, labels=labels)
    np.random.seed(0)
    expected = _compute_mask_indices(tuple(labels.shape), 0.3, 3, None, model.config.mask_time_min_masks)
    np.testing.assert_array_equal(out.mask_time_indices.numpy(), expected)
    out.loss.backward()
    assert model.label_embeddings.grad.abs().sum() > 0 and model.hubert.masked_spec_embed.grad.abs().sum() > 0


# --- targets ----------------------------------------------------------------------------------------------------

def test_cluster_labels_are_the_nearest_centres_of_sklearn_kmeans():
    from sklearn.cluster import MiniBatchKMeans

    rng = np.random.default_rng(0)
    frames = [rng.normal(size=(n, 5)).astype(np.float32) + rng.integers(0, 3) for n in (30, 17, 41)]
    kmeans, labels = cluster_targets(frames, 6, seed=0)
    reference = MiniBatchKMeans(n_clusters=6, random_state=0, batch_size=4096, n_init=3).fit(np.concatenate(frames))
    np.testing.assert_array_equal(np.concatenate(labels), reference.labels_)
    for clip, ids in zip(frames, labels):
        distances = ((clip[:, None, :] - kmeans.cluster_centers_[None]) ** 2).sum(-1)
        np.testing.assert_array_equal(ids, distances.argmin(1))


@pytest.mark.parametrize("samples", [400, 719, 720, 4000, 8123])
def test_mfcc_frames_are_the_model_frames(samples):
    config = tiny()
    features = mfcc_frames(np.random.default_rng(0).normal(size=samples).astype(np.float32), config)
    assert features.shape == (config.num_frames(samples), 39) and np.isfinite(features).all()


# --- classification, padding, saving, pipeline -----------------------------------------------------------------

def classifier(**overrides) -> HfGenSpeechForSequenceClassification:
    config = tiny(num_labels=3, id2label={0: "yes", 1: "no", 2: "up"}, label2id={"yes": 0, "no": 1, "up": 2},
                  **overrides)
    return build(HfGenSpeechForSequenceClassification, config)


@pytest.mark.parametrize("variant", [{}, {"softmax_variant": "off_by_one", "position_embedding": "alibi"}])
def test_a_padded_clip_classifies_as_it_does_alone(variant):
    model = classifier(**variant)
    extractor = speech_feature_extractor()
    clips = [np.random.default_rng(s).normal(size=n).astype(np.float32) for s, n in ((0, 4000), (1, 2600))]
    batch = SpeechCollator(extractor, model.config)([{"input_values": extractor(c, sampling_rate=16000)
                                                      ["input_values"][0]} for c in clips])
    with torch.no_grad():
        together = model(**batch).logits
        for row, clip in enumerate(clips):
            alone = model(torch.as_tensor(extractor(clip, sampling_rate=16000)["input_values"][0])[None]).logits
            torch.testing.assert_close(together[row], alone[0], rtol=1e-5, atol=1e-5)


def test_save_and_load_identical(tmp_path):
    model = classifier()
    pretraining = build(HfGenSpeechForPreTraining, tiny())
    values = audio(2, 3000)
    for name, net, auto in (("cls", model, AutoModelForAudioClassification),
                            ("pre", pretraining, AutoModelForPreTraining)):
        net.save_pretrained(tmp_path / name)
        loaded = auto.from_pretrained(tmp_path / name).eval()
        assert type(loaded) is type(net)
        mask = torch.zeros(2, net._get_feat_extract_output_lengths(3000), dtype=torch.bool)
        kwargs = {} if name == "cls" else {"mask_time_indices": mask}
        with torch.no_grad():
            assert torch.equal(loaded(values, **kwargs).logits, net(values, **kwargs).logits)
    assert {"configuration_hfgen_speech.py", "modeling_hfgen_speech.py"} <= set(os.listdir(tmp_path / "cls"))


def test_pipeline_scores_are_the_softmax_of_the_logits(tmp_path):
    model = classifier()
    extractor = speech_feature_extractor()
    model.save_pretrained(tmp_path)
    extractor.save_pretrained(tmp_path)
    clip = np.random.default_rng(4).normal(size=5000).astype(np.float32)
    classify = pipeline("audio-classification", model=str(tmp_path))
    scores = {r["label"]: r["score"] for r in classify(clip, top_k=3)}
    with torch.no_grad():
        logits = model(torch.as_tensor(extractor(clip, sampling_rate=16000)["input_values"][0])[None]).logits
    expected = torch.softmax(logits[0], -1)
    for index, label in model.config.id2label.items():
        assert scores[label] == pytest.approx(expected[index].item(), rel=1e-5, abs=1e-7)


CHILD = textwrap.dedent("""
    import importlib.util, sys
    import numpy as np, torch
    from transformers import AutoModelForAudioClassification, pipeline

    assert importlib.util.find_spec("hfgen") is None, "hfgen is importable in the isolated interpreter"
    path = sys.argv[1]
    model = AutoModelForAudioClassification.from_pretrained(path, trust_remote_code=True).eval()
    clip = np.load(path + "/../clip.npy")
    with torch.no_grad():
        logits = model(torch.as_tensor(clip)[None]).logits
    scores = pipeline("audio-classification", model=path, trust_remote_code=True)(clip, top_k=3)
    assert "hfgen" not in sys.modules
    torch.save({"logits": logits, "module": type(model).__module__, "scores": scores}, sys.argv[2])
""")


def test_folder_loads_where_hfgen_is_not_installed(tmp_path):
    from test_hub_portability import isolated_pythonpath

    model = classifier()
    path = tmp_path / "speech"
    model.save_pretrained(path)
    speech_feature_extractor().save_pretrained(path)
    clip = np.random.default_rng(5).normal(size=4000).astype(np.float32)
    np.save(tmp_path / "clip.npy", clip)
    with torch.no_grad():
        local = HfGenSpeechForSequenceClassification.from_pretrained(path).eval()(torch.as_tensor(clip)[None]).logits
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "HF_", "TRANSFORMERS"))}
    env.update(PYTHONPATH=isolated_pythonpath(tmp_path), HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS=str(torch.get_num_threads()))
    result = subprocess.run([sys.executable, "-S", "-c", CHILD, str(path), str(tmp_path / "out.pt")],
                            cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"isolated load failed:\n{result.stdout}\n{result.stderr[-6000:]}"
    remote = torch.load(tmp_path / "out.pt")
    assert remote["module"].startswith("transformers_modules")
    torch.testing.assert_close(remote["logits"], local, rtol=0, atol=1e-6)
    assert {r["label"] for r in remote["scores"]} == {"yes", "no", "up"}


# --- bad input --------------------------------------------------------------------------------------------------

def test_wrong_sampling_rate_is_a_clear_error():
    with pytest.raises(ValueError, match="16000"):
        speech_feature_extractor()(np.zeros(8000, dtype=np.float32), sampling_rate=22050)


@pytest.mark.parametrize("values, message", [
    (torch.zeros(4000), "2D float tensor"),  # 1-D: no batch dimension
    (torch.zeros(2, 4000, 2), "average them"),  # stereo
    (torch.zeros(2, 399), "at least 400 samples"),  # shorter than the receptive field
    (torch.zeros(2, 4000, dtype=torch.long), "floating point"),
    (torch.full((1, 4000), float("nan")), "NaN"),
])
def test_bad_audio_is_a_clear_error(values, message):
    model = classifier()
    with pytest.raises(ValueError, match=message):
        model(values)


def test_bad_mask_and_labels_are_clear_errors():
    model = build(HfGenSpeechForPreTraining, tiny())
    values = audio(2, 4000)
    frames = model._get_feat_extract_output_lengths(4000)
    with pytest.raises(ValueError, match="at least 400 samples"):
        model(values, attention_mask=torch.cat([torch.ones(2, 300), torch.zeros(2, 3700)], 1).long())
    with pytest.raises(ValueError, match=rf"shape \(2, {frames}\)"):
        model(values, labels=torch.zeros(2, frames + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="num_clusters=7"):
        model(values, labels=torch.full((2, frames), 7))
    with pytest.raises(ValueError, match="boolean tensor"):
        model(values, mask_time_indices=torch.zeros(2, frames))


@pytest.mark.parametrize("kwargs, message", [
    (dict(conv_kernel=[10, 3]), "one entry per convolution layer"),
    (dict(position_embedding="learned"), "absolute positions"),
    (dict(feat_extract_norm="batch"), "feat_extract_norm"),
    (dict(num_conv_pos_embedding_groups=5), "divisible by num_conv_pos_embedding_groups"),
    (dict(mask_time_prob=1.5), "mask_time_prob"),
    (dict(logit_temperature=0.0), "logit_temperature"),
])
def test_bad_config_is_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny(**kwargs)



@pytest.mark.parametrize("model_class, task, auto_class", [
    (HfGenSpeechForSequenceClassification, "audio-classification", "AutoModelForAudioClassification"),
    (HfGenSpeechForPreTraining, "hidden-unit-prediction", "AutoModelForPreTraining"),
])
def test_model_card_names_the_audio_task_and_its_usage_runs(model_class, task, auto_class, capsys):
    from hfgen.models.model_card import CARD_TASKS, build_model_card, task_for

    assert task_for("hfgen_speech", model_class.__name__) == task
    config = tiny(num_labels=3, id2label={0: "yes", 1: "no", 2: "up"}, label2id={"yes": 0, "no": 1, "up": 2})
    card = build_model_card(config, {"eval_accuracy": 0.5}, "user/m", task=task)
    assert card.data.pipeline_tag == CARD_TASKS[task].pipeline_tag
    assert f'{auto_class}.from_pretrained("user/m"' in card.text and "AutoFeatureExtractor" in card.text
    exec(CARD_TASKS[task].usage, {"model": build(model_class, config), "feature_extractor": speech_feature_extractor()})
    assert capsys.readouterr().out.strip()
