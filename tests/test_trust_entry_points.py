"""Consent for code at the entry points that load a folder the user names (issue 19): the reward-model recipe, the
RLHF recipe's reused stages, the transfer-learning experiment's pre-trained folders and ``hfgen push``.

Each folder is a real saved hfgen model whose ``config.json`` (and ``tokenizer_config.json``) ``auto_map`` names a
module that writes a marker file when imported. An entry point that loads only hfgen's own classes must never import
it; one that may load the folder's tokenizer code refuses it without ``--trust_remote_code`` and honours the flag.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import HfApi

from hub_server import HubServer
from test_hub_roundtrip import TOKEN, hub_env
from test_rlhf_recipe import RUN, TINY, _module

REPO = Path(__file__).resolve().parents[1]

TRAP = """
from pathlib import Path
Path({marker!r}).write_text("executed")
from transformers import PreTrainedConfig, PreTrainedTokenizerFast
class TrapConfig(PreTrainedConfig):
    pass
class TrapModel:
    pass
class TrapTokenizer(PreTrainedTokenizerFast):
    pass
"""


def trap(folder: Path, marker: Path) -> Path:
    """Point every ``auto_map`` entry of the saved ``folder`` (config and tokenizer) at ``trap.py``, which writes
    ``marker`` when imported."""
    (folder / "trap.py").write_text(TRAP.format(marker=str(marker)))
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "trap.TrapConfig", **{key: "trap.TrapModel" for key in (
        "AutoModel", "AutoModelForCausalLM", "AutoModelForSequenceClassification", "AutoModelForMaskedLM")}}
    (folder / "config.json").write_text(json.dumps(config))
    tokenizer_config = folder / "tokenizer_config.json"
    if tokenizer_config.exists():
        values = json.loads(tokenizer_config.read_text())
        values.update(auto_map={"AutoTokenizer": ["trap.TrapTokenizer", "trap.TrapTokenizer"]},
                      tokenizer_class="TrapTokenizer")
        tokenizer_config.write_text(json.dumps(values))
    return folder


def assert_trap_is_live(folder: Path, marker: Path) -> None:
    """The trap is real: loading the folder's tokenizer with the user's consent runs the module. (Its config entry
    runs it only where hfgen's model types are not registered: in process they take precedence.)"""
    from transformers import AutoTokenizer

    assert not marker.exists()
    AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    assert marker.exists()


def chat_folders(tmp_path: Path, marker: Path) -> tuple[Path, Path]:
    """Trapped SFT (causal LM) and reward-model (one score) folders of the RLHF ladder's shape, tokenizer included."""
    from hfgen.data import load_tokenizer
    from hfgen.models import HfGenDecoderForCausalLM, HfGenDecoderForSequenceClassification
    from hfgen.training.rlhf import chat_decoder_config

    tokenizer = load_tokenizer()
    config = chat_decoder_config(tokenizer, hidden_size=32, intermediate_size=64, num_hidden_layers=1)
    folders = []
    for name, model_class, extra in (("sft", HfGenDecoderForCausalLM, {}),
                                     ("reward", HfGenDecoderForSequenceClassification, {"num_labels": 1})):
        model = model_class(type(config)(**{**config.to_dict(), **extra}))
        model.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
        folders.append(trap(tmp_path / name, marker))
    return folders[0], folders[1]


def test_reward_model_recipe_never_imports_the_folders_code(tmp_path):
    """recipes/reward_model.py --model_name_or_path loads hfgen's own classes and hfgen's tokenizer: the trapped SFT
    folder trains a reward model and its module never runs."""
    marker = tmp_path / "marker"
    sft, _ = chat_folders(tmp_path, marker)
    metrics = _module(REPO / "recipes" / "reward_model.py", "reward_model_recipe").main([
        "--model_name_or_path", str(sft), "--output_dir", str(tmp_path / "out"), "--max_steps", "1",
        "--rejected_per_prompt", "1", "--report_to", "none"])
    assert not marker.exists(), "reward_model.py ran the folder's code"
    assert (tmp_path / "out" / "model.safetensors").is_file() and "accuracy_after" in json.dumps(metrics)
    assert_trap_is_live(sft, marker)


def test_rlhf_recipe_never_imports_reused_folders_code(tmp_path):
    """recipes/rlhf/run.py --sft_model / --reward_model (the stages it reuses) load hfgen's own classes: PPO runs on
    the trapped folders and neither module runs."""
    marker = tmp_path / "marker"
    sft, reward = chat_folders(tmp_path, marker)
    _module(RUN, "rlhf_run_trust").main(["--output_dir", str(tmp_path / "out"), "--sft_model", str(sft),
                                         "--reward_model", str(reward), *TINY, "--rl_steps", "1"])
    assert not marker.exists(), "rlhf/run.py ran a reused folder's code"
    assert (tmp_path / "out" / "results.json").is_file()
    assert_trap_is_live(reward, marker)


def test_transfer_experiment_asks_consent_for_a_pretrained_folders_code(tmp_path):
    """The transfer experiment's --pretrained_dirs: a folder whose tokenizer names code is refused without
    --trust_remote_code (nothing ran); with it, the user's choice is honoured (the code runs, fine-tuning goes on)."""
    from hfgen.data import load_encoder_tokenizer
    from hfgen.models import HfGenEncoderConfig, HfGenEncoderForMaskedLM
    from hfgen.training.transfer import TransferArguments, _finetune

    marker = tmp_path / "marker"
    tokenizer = load_encoder_tokenizer()
    folder = tmp_path / "encoder"
    HfGenEncoderForMaskedLM(HfGenEncoderConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        pad_token_id=tokenizer.pad_token_id)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    trap(folder, marker)
    recipe = _module(REPO / "recipes" / "transfer_learning.py", "transfer_recipe_trust")
    assert recipe.parse_arguments([]).trust_remote_code is False
    assert recipe.parse_arguments(["--trust_remote_code"]).trust_remote_code is True

    def finetune(trust: bool):
        args = TransferArguments(finetune_steps=1, finetune_batch_size=4, max_length=32, max_eval_samples=8,
                                 trust_remote_code=trust)
        return _finetune("encoder", "pretrained", 8, 0, 1e-3, args, {"encoder": str(folder)}, tmp_path / "ft")

    with pytest.raises(ValueError, match="trust_remote_code"):
        finetune(False)
    assert not marker.exists(), "the transfer experiment ran the folder's code without --trust_remote_code"
    result = finetune(True)
    assert marker.exists() and 0.0 <= result.eval_accuracy <= 1.0


def test_hfgen_push_never_imports_the_folders_code(tmp_path):
    """`hfgen push` reads the folder's config and tokenizer config to check them and to build the card: as JSON
    and through hfgen's own registered config, so the module their auto_map names is uploaded (it is the user's
    folder) but never imported by the push."""
    from conftest import build, tiny_config
    from hfgen import HfGenDecoderForCausalLM
    from hfgen.data import load_tokenizer

    marker = tmp_path / "marker"
    folder = tmp_path / "model"
    build(HfGenDecoderForCausalLM, tiny_config()).save_pretrained(folder)
    load_tokenizer().save_pretrained(folder)
    trap(folder, marker)
    with HubServer() as server:
        result = subprocess.run([sys.executable, "-m", "hfgen.cli", "push", str(folder), "hfgen-tester/trapped-push"],
                                env=hub_env(server, tmp_path / "home"), capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        files = set(HfApi(endpoint=server.url, token=TOKEN).list_repo_files("hfgen-tester/trapped-push"))
    assert not marker.exists(), "hfgen push imported the folder's code"
    assert {"config.json", "trap.py", "README.md"} <= files
    assert_trap_is_live(folder, marker)
