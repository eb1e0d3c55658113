"""A recipe given a model folder that does not exist fails at once with "no such folder", naming the flag, what was
given and what is valid -- before any Hub lookup (offline, transformers' lookup ends after retries in an OSError
about an unreachable host) and before anything is written."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hfgen.training.recipe_common import check_model_folder

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_hub(monkeypatch):
    """Fails the test if the Hub is asked at all."""
    from huggingface_hub import HfApi

    def asked(*args, **kwargs):
        raise AssertionError("the Hub was asked")

    monkeypatch.setattr(HfApi, "model_info", asked)


@pytest.mark.parametrize("value", ["./missing", "/no/such/folder", "a/b/c", "outputs/pretrain_tiny"])
def test_missing_local_path_fails_without_asking_the_hub(value, no_hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as error:
        check_model_folder(value, "--model_name_or_path", "a folder written by an earlier run")
    message = str(error.value)
    assert message.startswith("--model_name_or_path: no such folder: ") and repr(value) in message
    assert "a folder written by an earlier run" in message


def test_path_under_an_existing_folder_is_local(no_hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    with pytest.raises(ValueError, match=r"no such folder: 'out/pretrain'.*'out/' is a local folder"):
        check_model_folder("out/pretrain", "--vae", "a saved VAE folder")


def test_offline_mode_does_not_ask_the_hub(no_hub, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE is set"):
        check_model_folder("someone/model", "--model_name_or_path", "a folder")


def test_hub_id_in_the_cache_passes_offline(no_hub, tmp_path, monkeypatch):
    """A model downloaded before loads offline from the Hub cache: the check must not refuse it."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    snapshot = cache / "models--someone--model" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (cache / "models--someone--model" / "refs").mkdir()
    (cache / "models--someone--model" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    check_model_folder("someone/model", "--model_name_or_path", "a folder")
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE"):
        check_model_folder("someone/other", "--model_name_or_path", "a folder")


def test_existing_folder_and_unset_pass(no_hub, tmp_path):
    check_model_folder(str(tmp_path), "--model_name_or_path", "a folder")
    check_model_folder(None, "--model_name_or_path", "a folder")


def test_a_file_is_not_a_folder(no_hub, tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        check_model_folder(str(path), "--classifier", "a classifier folder", hub=False)


def test_local_only_argument_never_offers_a_hub_id(no_hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as error:
        check_model_folder("someone/model", "--pretrained_dirs", "family=folder pairs", hub=False)
    assert "Hub" not in str(error.value)


def test_finetune_lora_readme_typo_fails_fast_and_writes_nothing(tmp_path):
    """The issue's case: a folder no earlier command wrote, the Hub unreachable (here: a closed local port)."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", OMP_NUM_THREADS="1")
    start = time.monotonic()
    result = subprocess.run([sys.executable, str(REPO / "recipes/finetune_lora.py"), "--model_name_or_path",
                             "out/pretrain", "--output_dir", "outputs/lora"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ValueError: --model_name_or_path: no such folder: 'out/pretrain'"), last
    assert "outputs/pretrain_tiny" in last and "Hub could not be asked" in last
    assert not (tmp_path / "outputs").exists()
    assert time.monotonic() - start < 120  # no retries: the stack's import is most of it
