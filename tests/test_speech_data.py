"""The keyword corpus spoken by espeak-ng (hfgen.data.speech) and recipes/pretrain_speech.py end to end. These need
the espeak-ng binary (Debian package ``espeak-ng``; .ci/run installs it) and skip, saying so, without it."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.signal import resample_poly
from transformers import AutoModelForAudioClassification, AutoModelForPreTraining, pipeline

from hfgen.data.speech import (
    SAMPLING_RATE,
    espeak_available,
    keyword_corpus,
    read_wav,
    speech_feature_extractor,
    split_by_voice,
    synthesize,
    trim_silence,
)

needs_espeak = pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed (apt-get install "
                                  "-y espeak-ng): the speech corpus is synthesised with it")
RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "pretrain_speech.py"


@needs_espeak
def test_corpus_rows_rate_and_cache(tmp_path, monkeypatch):
    spec = dict(words=("yes", "no"), voices=("m1", "f2"), rates=(175,), pitches=(50,), cache_dir=tmp_path)
    corpus = keyword_corpus(**spec)
    assert len(corpus) == 4 and corpus.features["label"].names == ["yes", "no"]
    assert [(r["word"], r["voice"]) for r in corpus] == [("yes", "m1"), ("yes", "f2"), ("no", "m1"), ("no", "f2")]
    arrays = [np.asarray(a["array"]) for a in corpus["audio"]]
    assert all(a["sampling_rate"] == SAMPLING_RATE for a in corpus["audio"])
    assert all(2000 < len(x) < SAMPLING_RATE and np.abs(x).max() > 0.05 for x in arrays)  # a word: 0.1 to 1 s
    assert not np.array_equal(arrays[0][:2000], arrays[1][:2000])  # two voices, two sounds
    monkeypatch.setenv("PATH", "")  # no espeak-ng now: the second call must read the cache
    again = keyword_corpus(**spec)
    for first, second in zip(arrays, again["audio"]):
        np.testing.assert_array_equal(first, np.asarray(second["array"]))


@needs_espeak
def test_a_clip_is_espeaks_wav_trimmed_and_resampled_to_16_khz(tmp_path):
    path = tmp_path / "go.wav"
    subprocess.run(["espeak-ng", "-v", "en+m3", "-s", "130", "-p", "35", "-w", str(path), "go"], check=True)
    raw, rate = read_wav(path)
    assert rate == 22050
    expected = resample_poly(trim_silence(raw), 320, 441)  # 16000 / 22050 = 320 / 441
    np.testing.assert_allclose(synthesize("go", "m3", 130, 35), expected, atol=1e-6)
    assert abs(len(expected) / SAMPLING_RATE - len(trim_silence(raw)) / rate) < 1e-3  # same duration


def test_bad_corpus_arguments_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="rates"):
        keyword_corpus(rates=(20,), cache_dir=tmp_path)
    with pytest.raises(ValueError, match="pitches"):
        keyword_corpus(pitches=(120,), cache_dir=tmp_path)
    with pytest.raises(ValueError, match="voices is empty"):
        keyword_corpus(voices=(), cache_dir=tmp_path)


@needs_espeak
def test_split_by_voice_holds_out_whole_voices(tmp_path):
    corpus = keyword_corpus(words=("up",), voices=("m1", "f2", "klatt"), rates=(175,), pitches=(50,),
                            cache_dir=tmp_path)
    train, test = split_by_voice(corpus, 1)
    assert set(train["voice"]) == {"m1", "f2"} and set(test["voice"]) == {"klatt"}
    with pytest.raises(ValueError, match="held_out_voices"):
        split_by_voice(corpus, 3)


@pytest.mark.slow  # (17 s at load 20; notebooks/speech.ipynb runs the recipe in the default suite)
@needs_espeak
def test_recipe_end_to_end(tmp_path, monkeypatch):
    """Two iterations and three fine-tunings in a few steps: the folders load through the Auto classes and the
    pipeline, and the results say what was run."""
    monkeypatch.setenv("HFGEN_CACHE", str(tmp_path / "cache"))
    spec = importlib.util.spec_from_file_location("pretrain_speech_recipe", RECIPE)
    recipe = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = recipe
    spec.loader.exec_module(recipe)
    out = tmp_path / "out"
    results = recipe.main(["--output_dir", str(out), "--num_words", "3", "--num_voices", "3", "--held_out_voices",
                           "1", "--max_steps", "3", "--finetune_steps", "3", "--labels_per_class", "1",
                           "--mfcc_clusters", "6", "--feature_clusters", "6", "--hidden_size", "32",
                           "--num_hidden_layers", "1", "--feature_layer", "1", "--per_device_train_batch_size", "4",
                           "--logging_steps", "1"])
    saved = json.loads((out / "results.json").read_text())["results"]
    assert saved["held_out_accuracy"] == results["held_out_accuracy"]
    assert set(results["held_out_accuracy"]) == {"scratch", "iteration1", "iteration2"}
    assert results["train_clips"] == 3 * 2 * 4 and results["test_clips"] == 3 * 4 and results["labelled_clips"] == 3
    assert [len(v) for v in results["pretraining_losses"].values()] == [3, 3]
    for name in ("iteration1", "iteration2"):
        model = AutoModelForPreTraining.from_pretrained(out / name)
        assert model.config.num_clusters == 6
    classifier = AutoModelForAudioClassification.from_pretrained(out / "classifier").eval()
    clip = synthesize("no", "klatt", 175, 65)  # a held-out voice
    scores = pipeline("audio-classification", model=str(out / "classifier"))(clip, top_k=3)
    values = speech_feature_extractor()(clip, sampling_rate=SAMPLING_RATE)["input_values"][0]
    with torch.no_grad():
        probabilities = classifier(torch.as_tensor(values)[None]).logits.softmax(-1)[0]
    for row in scores:
        assert row["score"] == pytest.approx(probabilities[classifier.config.label2id[row["label"]]].item(), rel=1e-5)
