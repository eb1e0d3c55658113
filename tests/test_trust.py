"""No code runs without the user's consent and nothing pickled leaves the machine (issue 19), against the local Hub
endpoint of tests/hub_server.py with the real huggingface_hub / transformers clients.

A "booby-trapped" repository or folder names, in ``auto_map``, a module whose import writes a marker file: any
code path that executes it without ``trust_remote_code`` leaves the marker behind.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

from huggingface_hub import HfApi

from hub_server import HubServer
from test_hub_roundtrip import TOKEN, hub_env

TRAP_MODULE = """
from pathlib import Path
Path({marker!r}).write_text("executed")
from transformers import PreTrainedConfig
class TrapConfig(PreTrainedConfig):
    model_type = "hfgen_vlm"
"""


def trapped_config(marker: Path) -> dict:
    """A config.json that looks like an hfgen VLM's and whose AutoConfig entry is the trap module."""
    return {"model_type": "hfgen_vlm", "architectures": ["HfGenVlmForConditionalGeneration"],
            "auto_map": {"AutoConfig": "trap.TrapConfig"},
            "text_config": {"model_type": "hfgen_decoder", "num_attention_heads": 4, "num_key_value_heads": 4,
                            "hidden_size": 32},
            "vision_config": {"model_type": "hfgen_vit", "num_attention_heads": 4, "hidden_size": 32}}


def test_pushing_a_processor_never_runs_the_target_repositorys_code(tmp_path):
    """The VLM processor's push reads the repository's config.json to build hfgen's card: as JSON, so the module
    its auto_map names is never imported (an earlier version loaded it with trust_remote_code=True)."""
    marker = tmp_path / "marker"
    child = textwrap.dedent("""
        from hfgen.data.captions import vlm_processor, vlm_tokenizer
        from hfgen.models import HfGenDecoderConfig, HfGenVlmConfig
        tokenizer = vlm_tokenizer()
        config = HfGenVlmConfig(text_config=HfGenDecoderConfig(vocab_size=len(tokenizer)),
                                image_token_id=tokenizer.convert_tokens_to_ids("<image>"))
        vlm_processor(config, tokenizer).push_to_hub("hfgen-tester/trapped")
    """)
    with HubServer() as server:
        api = HfApi(endpoint=server.url, token=TOKEN)
        api.create_repo("hfgen-tester/trapped")
        api.upload_file(path_or_fileobj=json.dumps(trapped_config(marker)).encode(), path_in_repo="config.json",
                        repo_id="hfgen-tester/trapped")
        api.upload_file(path_or_fileobj=TRAP_MODULE.format(marker=str(marker)).encode(), path_in_repo="trap.py",
                        repo_id="hfgen-tester/trapped")
        result = subprocess.run([sys.executable, "-c", child], env=hub_env(server, tmp_path / "home"),
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        card = Path(api.hf_hub_download("hfgen-tester/trapped", "README.md", cache_dir=tmp_path / "cache"))
        card_text = card.read_text()
    assert not marker.exists(), "pushing executed the target repository's code"
    # the card was still built from the repository's config: hfgen's, loading the processor just pushed
    assert "hfgen_vlm" in card_text and "AutoProcessor.from_pretrained" in card_text


def test_push_uploads_no_pickle_and_names_what_it_left_out(tmp_path):
    """A saved model folder with Trainer's pickles beside it (training_args.bin, optimizer.pt): the push uploads
    the weights, config, code and card, never the pickles, and the log names each file it left out."""
    import torch

    from conftest import build, tiny_config
    from hfgen import HfGenDecoderForCausalLM

    folder = tmp_path / "run"
    build(HfGenDecoderForCausalLM, tiny_config()).save_pretrained(folder)
    torch.save({"lr": 1.0}, folder / "training_args.bin")
    torch.save({"state": {}}, folder / "optimizer.pt")
    child = f"from hfgen.hub import push_folder; push_folder({str(folder)!r}, 'hfgen-tester/no-pickle')"
    with HubServer() as server:
        result = subprocess.run([sys.executable, "-c", child], env=hub_env(server, tmp_path / "home"),
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        files = set(HfApi(endpoint=server.url, token=TOKEN).list_repo_files("hfgen-tester/no-pickle"))
    assert {"model.safetensors", "config.json", "modeling_hfgen_decoder.py", "README.md"} <= files
    assert not {"training_args.bin", "optimizer.pt"} & files
    assert "not uploaded" in result.stderr and "optimizer.pt, training_args.bin" in result.stderr


def test_push_arguments_turn_off_trainers_pickled_uploads(tmp_path):
    """--push_to_hub: Trainer's default hub_strategy (every_save uploads training_args.bin) becomes 'end'; the
    checkpoint strategies (optimizer pickles) are refused by name; a bad repo id fails before training."""
    import pytest
    from transformers import TrainingArguments
    from transformers.trainer_utils import HubStrategy

    from hfgen.hub import check_push_arguments

    def arguments(**kwargs):
        return TrainingArguments(output_dir=str(tmp_path / "out"), push_to_hub=True, hub_model_id="u/model",
                                 report_to=[], **kwargs)

    default = arguments()
    check_push_arguments(default)
    assert default.hub_strategy == HubStrategy.END
    for strategy in ("checkpoint", "all_checkpoints"):
        with pytest.raises(ValueError, match=rf"--hub_strategy {strategy} uploads Trainer checkpoints.*pickles.*"
                                             r"use --hub_strategy end"):
            check_push_arguments(arguments(hub_strategy=strategy))
    with pytest.raises(ValueError, match=r"Invalid repo id 'u/bad name'"):
        check_push_arguments(TrainingArguments(output_dir=str(tmp_path / "out"), push_to_hub=True,
                                               hub_model_id="u/bad name", report_to=[]))


# What other libraries log while transformers is imported, before hfgen runs a line: with torchao installed (the
# quantization extra), transformers imports it, which logs its CUDA-only extensions that do not load and makes torch
# log deprecation warnings in its own format ("W1207 12:00:00.000 123 file.py:630] ...").
UPSTREAM_IMPORT_NOISE = re.compile(r"Failed to load .*torchao|[IWE]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\] ")


def test_push_failures_are_one_clear_line_and_upload_nothing(tmp_path):
    """`hfgen push` without a login, with a token the Hub did not issue, to an endpoint nobody listens on, and in
    offline mode: exit code 2, one line on stderr saying what failed and what to do, no traceback, no repository
    made and nothing committed."""
    from conftest import build, tiny_config
    from hfgen import HfGenDecoderForCausalLM

    folder = tmp_path / "model"
    build(HfGenDecoderForCausalLM, tiny_config()).save_pretrained(folder)
    with HubServer() as server:
        base = {k: v for k, v in hub_env(server, tmp_path / "home").items() if k != "HF_TOKEN"}
        cases = {
            "no login": ({}, r"refused the push .*HTTP 401.*Log in with `hf auth login`"),
            "bad token": ({"HF_TOKEN": "hf_not_issued"}, r"HTTP 401: not logged in"),
            "unreachable": ({"HF_TOKEN": TOKEN, "HF_ENDPOINT": "http://127.0.0.1:9"},
                            r"Cannot reach the Hub at http://127\.0\.0\.1:9 .*Check the network, or HF_ENDPOINT"),
            "offline": ({"HF_TOKEN": TOKEN, "HF_HUB_OFFLINE": "1"}, r"offline mode is on .*Unset HF_HUB_OFFLINE"),
        }
        for name, (env, message) in cases.items():
            result = subprocess.run([sys.executable, "-m", "hfgen.cli", "push", str(folder), "hfgen-tester/fail"],
                                    env={**base, **env}, capture_output=True, text=True, timeout=600)
            lines = [line for line in result.stderr.strip().splitlines() if not UPSTREAM_IMPORT_NOISE.match(line)]
            assert result.returncode == 2, (name, result.stderr[-2000:])
            assert len(lines) == 1 and "Traceback" not in result.stderr, (name, result.stderr[-2000:])
            assert re.search(message, lines[0]), (name, lines[0])
        assert "hfgen-tester/fail" not in server.repos
        assert not [r for r in server.requests if "/commit/" in r[1]]


def trapped_tokenizer_folder(folder: Path, marker: Path) -> Path:
    """A saved hfgen tokenizer whose tokenizer_config.json names, in auto_map, a module that writes ``marker``."""
    from hfgen.data import load_tokenizer

    load_tokenizer().save_pretrained(folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": ["trap.TrapTokenizer", "trap.TrapTokenizer"]}
    config["tokenizer_class"] = "TrapTokenizer"
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "trap.py").write_text(textwrap.dedent(f"""
        from pathlib import Path
        Path({str(marker)!r}).write_text("executed")
        from transformers import PreTrainedTokenizerFast
        class TrapTokenizer(PreTrainedTokenizerFast):
            pass
    """))
    return folder


def test_training_cores_run_no_folder_code_without_consent(tmp_path):
    """Every training core's tokenizer loading (causal LM, masked LM, span corruption, classification): a folder
    naming code is refused by transformers unless the run says --trust_remote_code, and the code never ran; with
    it, the code runs (the trap is real)."""
    import pytest

    from hfgen.training.classification import load_classification_tokenizer
    from hfgen.training.masked_lm import _load_tokenizer as masked_lm_tokenizer
    from hfgen.training.pretrain import ModelArguments, _load_tokenizer
    from hfgen.training.span_corruption import load_span_corruption_tokenizer

    marker = tmp_path / "marker"
    folder = str(trapped_tokenizer_folder(tmp_path / "trapped", marker))
    loaders = {
        "pretrain": lambda trust: _load_tokenizer(ModelArguments(model_name_or_path=folder, trust_remote_code=trust)),
        "masked_lm": lambda trust: masked_lm_tokenizer(ModelArguments(model_name_or_path=folder,
                                                                      trust_remote_code=trust)),
        "span_corruption": lambda trust: load_span_corruption_tokenizer(folder, trust_remote_code=trust),
        "classification": lambda trust: load_classification_tokenizer("hfgen_encoder", folder, trust),
    }
    for name, load in loaders.items():
        with pytest.raises(ValueError, match="trust_remote_code"):
            load(False)
        assert not marker.exists(), f"{name} ran the folder's code without consent"
    loaders["pretrain"](True)
    assert marker.exists()


def test_finetune_lora_runs_no_folder_code_without_consent(tmp_path):
    """recipes/finetune_lora.py on a folder whose config and tokenizer name code in auto_map: without
    --trust_remote_code the model loads through hfgen's own class, the tokenizer is refused (not silently swapped
    for hfgen's) and neither module ran."""
    import pytest

    from conftest import build, tiny_config
    from hfgen import HfGenDecoderForCausalLM
    from test_peft_recipe import _recipe

    marker = tmp_path / "marker"
    folder = trapped_tokenizer_folder(tmp_path / "trapped", marker)
    build(HfGenDecoderForCausalLM, tiny_config(vocab_size=8192)).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"]["AutoModelForCausalLM"] = "trap.TrapTokenizer"  # any import of trap.py leaves the marker
    (folder / "config.json").write_text(json.dumps(config))
    flags = ["--model_name_or_path", str(folder), "--output_dir", str(tmp_path / "out"), "--max_steps", "1",
             "--block_size", "16", "--max_train_samples", "4", "--max_eval_samples", "2", "--report_to", "none"]
    with pytest.raises(ValueError, match="trust_remote_code"):
        _recipe().main(flags)
    assert not marker.exists(), "finetune_lora ran the folder's code without --trust_remote_code"
    assert not (tmp_path / "out").exists()


def test_sft_runs_no_folder_code_without_consent(tmp_path):
    """recipes/sft.py --model_name_or_path on a folder whose config names code in auto_map: without
    --trust_remote_code the module never runs (hfgen's own class loads the model)."""
    import importlib.util

    from conftest import build, tiny_config
    from hfgen import HfGenDecoderForCausalLM

    marker = tmp_path / "marker"
    folder = tmp_path / "trapped"
    build(HfGenDecoderForCausalLM, tiny_config(vocab_size=8192)).save_pretrained(folder)
    (folder / "trap.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('executed')\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"]["AutoModelForCausalLM"] = "trap.TrapModel"
    (folder / "config.json").write_text(json.dumps(config))
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "sft.py"
    spec = importlib.util.spec_from_file_location("sft_recipe", recipe)
    module = importlib.util.module_from_spec(spec)
    sys.modules["sft_recipe"] = module
    spec.loader.exec_module(module)
    module.main(["--model_name_or_path", str(folder), "--output_dir", str(tmp_path / "out"), "--max_steps", "1",
                 "--eval_max_new_tokens", "2", "--report_to", "none"])
    assert not marker.exists(), "sft.py ran the folder's code without --trust_remote_code"
