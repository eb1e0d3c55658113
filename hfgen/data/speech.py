"""Speech made offline: a keyword corpus spoken by the text-to-speech engine espeak-ng (a Debian package), in
several voices, rates and pitches, resampled to 16 kHz and cached under the user's cache dir.

The words are the project's: the ten digit names (the digits of the image recipes) and ten commands (those of the
Speech Commands keyword-spotting task). Each clip is one word, its leading and trailing silence trimmed. The result
is a ``datasets.Dataset`` whose ``audio`` column holds what ``datasets.Audio`` decodes to (``{"array",
"sampling_rate"}``), so the usual audio recipes read it unchanged.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import datasets
import numpy as np
from scipy.signal import resample_poly

from ..pretrained import default_cache_dir

logger = logging.getLogger(__name__)

SAMPLING_RATE = 16000
ESPEAK_RATE = 22050  # espeak-ng writes 22,050 Hz mono 16-bit WAV
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
COMMAND_WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
WORDS = DIGIT_WORDS + COMMAND_WORDS
# espeak-ng voice variants (`espeak-ng --voices=variant`): male, female, and synthesiser timbres.
VOICES = ("m1", "m3", "m5", "m7", "f1", "f2", "f4", "klatt", "croak", "Alex", "Andrea", "Annie", "benjamin",
          "david", "linda", "max", "michel", "steph", "victor", "shelby")
RATES = (130, 175)  # words per minute
PITCHES = (35, 65)  # 0..99
SILENCE = 0.02  # fraction of the clip's peak below which leading / trailing samples count as silence


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def require_espeak() -> None:
    if not espeak_available():
        raise RuntimeError("espeak-ng is not installed: the speech corpus is synthesised with it. Install it with "
                           "`apt-get install -y espeak-ng` (Debian / Ubuntu).")


def read_wav(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """A 16-bit PCM WAV file as float32 in [-1, 1] (mono) and its rate (the standard library's reader)."""
    with wave.open(str(path)) as handle:
        if handle.getsampwidth() != 2:
            raise ValueError(f"{path}: expected 16-bit PCM, got {8 * handle.getsampwidth()}-bit samples.")
        data = np.frombuffer(handle.readframes(handle.getnframes()), dtype="<i2").astype(np.float32) / 32768.0
        channels, rate = handle.getnchannels(), handle.getframerate()
    return data.reshape(-1, channels).mean(1), rate


def trim_silence(audio: np.ndarray, threshold: float = SILENCE) -> np.ndarray:
    """Drop leading and trailing samples quieter than ``threshold`` times the peak."""
    loud = np.flatnonzero(np.abs(audio) >= threshold * np.abs(audio).max(initial=0.0))
    return audio[loud[0]: loud[-1] + 1] if len(loud) else audio


def synthesize(word: str, voice: str, rate: int, pitch: int, sampling_rate: int = SAMPLING_RATE) -> np.ndarray:
    """One spoken word at ``sampling_rate`` (float32, silence trimmed)."""
    require_espeak()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "word.wav")
        subprocess.run(["espeak-ng", "-v", f"en+{voice}", "-s", str(rate), "-p", str(pitch), "-w", path, word],
                       check=True, capture_output=True)
        audio, source_rate = read_wav(path)
    divisor = np.gcd(sampling_rate, source_rate)
    audio = resample_poly(trim_silence(audio), sampling_rate // divisor, source_rate // divisor)
    return audio.astype(np.float32)


def corpus_key(words, voices, rates, pitches, sampling_rate) -> str:
    spec = json.dumps([list(words), list(voices), list(rates), list(pitches), sampling_rate, SILENCE])
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


def check_choices(words, voices, rates, pitches) -> None:
    for name, values in (("words", words), ("voices", voices), ("rates", rates), ("pitches", pitches)):
        if not values:
            raise ValueError(f"{name} is empty: the corpus needs at least one of each.")
    for rate in rates:
        if not isinstance(rate, int) or not 80 <= rate <= 450:
            raise ValueError(f"rates must be integers in [80, 450] words per minute (espeak-ng's range); got {rate!r}.")
    for pitch in pitches:
        if not isinstance(pitch, int) or not 0 <= pitch <= 99:
            raise ValueError(f"pitches must be integers in [0, 99] (espeak-ng's range); got {pitch!r}.")


def keyword_corpus(words: tuple[str, ...] = WORDS, voices: tuple[str, ...] = VOICES, rates: tuple[int, ...] = RATES,
                   pitches: tuple[int, ...] = PITCHES, sampling_rate: int = SAMPLING_RATE,
                   cache_dir: str | os.PathLike | None = None) -> datasets.Dataset:
    """Every word in every (voice, rate, pitch): columns ``audio`` (``{"array", "sampling_rate"}``), ``label``
    (a ``ClassLabel`` over ``words``), ``word``, ``voice``, ``rate``, ``pitch``. Synthesised once (about 0.05 s a
    clip), then loaded from ``<cache_dir>/speech/<key>`` (default :func:`hfgen.pretrained.default_cache_dir`)."""
    check_choices(words, voices, rates, pitches)
    folder = Path(cache_dir if cache_dir is not None else default_cache_dir()) / "speech" / corpus_key(
        words, voices, rates, pitches, sampling_rate)
    if (folder / "dataset_info.json").is_file():
        return datasets.load_from_disk(str(folder))
    rows = {"audio": [], "label": [], "word": [], "voice": [], "rate": [], "pitch": []}
    logger.info("Synthesising %d clips with espeak-ng into %s", len(words) * len(voices) * len(rates) * len(pitches),
                folder)
    for (label, word), voice, rate, pitch in itertools.product(enumerate(words), voices, rates, pitches):
        rows["audio"].append({"array": synthesize(word, voice, rate, pitch, sampling_rate),
                              "sampling_rate": sampling_rate})
        for key, value in (("label", label), ("word", word), ("voice", voice), ("rate", rate), ("pitch", pitch)):
            rows[key].append(value)
    features = datasets.Features({
        "audio": {"array": datasets.Sequence(datasets.Value("float32")), "sampling_rate": datasets.Value("int32")},
        "label": datasets.ClassLabel(names=list(words)), "word": datasets.Value("string"),
        "voice": datasets.Value("string"), "rate": datasets.Value("int32"), "pitch": datasets.Value("int32")})
    corpus = datasets.Dataset.from_dict(rows, features=features)
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    corpus.save_to_disk(str(partial))
    os.replace(partial, folder)  # whole or absent: a killed run leaves no half-written cache
    return datasets.load_from_disk(str(folder))


def split_by_voice(corpus: datasets.Dataset, held_out_voices: int) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Train on some voices, test on the others (the last ``held_out_voices`` in the corpus's order): a keyword
    classifier is measured on speakers it never heard."""
    voices = list(dict.fromkeys(corpus["voice"]))
    if not 0 < held_out_voices < len(voices):
        raise ValueError(f"held_out_voices must lie in [1, {len(voices) - 1}] for a corpus of {len(voices)} voices; "
                         f"got {held_out_voices}.")
    test = set(voices[-held_out_voices:])
    is_test = [voice in test for voice in corpus["voice"]]
    return (corpus.select([i for i, t in enumerate(is_test) if not t]),
            corpus.select([i for i, t in enumerate(is_test) if t]))


def speech_feature_extractor(sampling_rate: int = SAMPLING_RATE):
    """transformers' ``Wav2Vec2FeatureExtractor`` as HuBERT uses it (zero mean, unit variance per clip, padding
    with an attention mask): saved beside the model, ``pipeline("audio-classification")`` finds it."""
    from transformers import Wav2Vec2FeatureExtractor

    return Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=sampling_rate, padding_value=0.0,
                                    do_normalize=True, return_attention_mask=True)
