"""Pre-training core (hfgen.training.pretrain), the model card it writes and the recipe around it: real runs on the
embedded corpus with tiny models, in one process and under torchrun with two."""

from __future__ import annotations

import json
import re
import runpy
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM, TrainingArguments

from hfgen import HfGenDecoderConfig
from hfgen.data import load_tokenizer
from hfgen.models import variants
from hfgen.training.callbacks import TimeLimitCallback
from hfgen.training.pretrain import (
    DataArguments,
    ModelArguments,
    PretrainResult,
    build_config,
    cpu_training_defaults,
    parse_config_overrides,
    pretrain,
)

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "pretrain_causal_lm.py"
TINY_MODEL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=128)
# The same tiny model as recipe flags.
TINY_FLAGS = [arg for key, value in TINY_MODEL.items() for arg in (f"--{key}", str(value))]


def _training_args(output_dir: Path, **overrides) -> TrainingArguments:
    values = dict(output_dir=str(output_dir), per_device_train_batch_size=8, per_device_eval_batch_size=16,
                  learning_rate=5e-3, lr_scheduler_type="constant", logging_steps=1, eval_strategy="no",
                  save_strategy="no", report_to="none", disable_tqdm=True, seed=0, **cpu_training_defaults())
    return TrainingArguments(**{**values, **overrides})


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> PretrainResult:
    """15 steps of a tiny off-by-one-softmax model on 64 blocks of 32 tokens, scored on 16 validation blocks."""
    output_dir = tmp_path_factory.mktemp("pretrain") / "tiny_off_by_one"
    model_args = ModelArguments(softmax_variant="off_by_one", **TINY_MODEL)
    data_args = DataArguments(block_size=32, max_train_samples=64, max_eval_samples=16)
    return pretrain(model_args, data_args, _training_args(output_dir, max_steps=15))


def test_training_lowers_validation_perplexity(tiny_run):
    # An untrained model is near uniform over 8192 tokens; 15 steps learn at least the token frequencies, which
    # carry over to unseen documents. Halving is far inside what such runs reach (about 8000 -> 1000).
    assert tiny_run.eval_perplexity_before > 4000
    assert tiny_run.eval_perplexity_after < 0.5 * tiny_run.eval_perplexity_before
    assert len(tiny_run.train_loss_history) == 15  # logging_steps=1
    steps = [step for step, _ in tiny_run.train_loss_history]
    assert steps == list(range(1, 16))
    assert tiny_run.train_runtime > 0
    assert tiny_run.world_size == 1


def _sample_ids() -> torch.Tensor:
    return load_tokenizer()("The with statement is used to wrap a block", return_tensors="pt")["input_ids"]


def test_saved_folder_reloads_with_same_logits(tiny_run):
    ids = _sample_ids()
    with torch.no_grad():
        expected = tiny_run.model.eval()(ids).logits
        reloaded = AutoModelForCausalLM.from_pretrained(tiny_run.output_dir, trust_remote_code=True).eval()
        assert reloaded.config.softmax_variant == "off_by_one"
        torch.testing.assert_close(reloaded(ids).logits, expected, rtol=0, atol=1e-5)


def test_saved_folder_loads_without_hfgen(tiny_run, tmp_path):
    """A fresh interpreter in which `import hfgen` fails loads the folder through its own copied model code."""
    ids = _sample_ids()
    torch.save(ids, tmp_path / "ids.pt")
    script = textwrap.dedent(f"""
        import sys
        sys.modules["hfgen"] = None  # any import of hfgen now raises: only the folder's code can serve
        import torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({tiny_run.output_dir!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        with torch.no_grad():
            torch.save(model(torch.load({str(tmp_path / 'ids.pt')!r})).logits, {str(tmp_path / 'logits.pt')!r})
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    with torch.no_grad():
        expected = tiny_run.model.eval()(ids).logits
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), expected, rtol=0, atol=1e-5)


def test_folder_has_card_curve_and_tokenizer(tiny_run):
    out = Path(tiny_run.output_dir)
    for name in ("config.json", "model.safetensors", "modeling_hfgen_decoder.py", "tokenizer.json", "README.md"):
        assert (out / name).is_file(), name
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "text-generation"
    for tag in ("hfgen", "hfgen_decoder", "softmax:off_by_one", "attention:gqa", "position:rotary"):
        assert tag in card.data.tags
    [result] = card.data.eval_results
    assert result.metric_type == "perplexity" and result.dataset_split == "validation"
    assert result.metric_value == pytest.approx(tiny_run.eval_perplexity_after, rel=1e-4)
    assert "trust_remote_code=True" in card.text
    assert "| `softmax_variant` | **`off_by_one`** | `standard` |" in card.text  # non-default shown in bold


def test_config_overrides_parse_types():
    parsed = parse_config_overrides(
        'num_hidden_layers=3,attention_dropout=0.1,attention_gate=True,tie_word_embeddings=false,'
        'position_embedding=alibi,rope_parameters={"rope_theta": 500000.0, "rope_type": "default"},'
        'eos_token_id=[0, 3],pad_token_id=none')
    assert parsed == {
        "num_hidden_layers": 3, "attention_dropout": 0.1, "attention_gate": True, "tie_word_embeddings": False,
        "position_embedding": "alibi", "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"},
        "eos_token_id": [0, 3], "pad_token_id": None,
    }
    assert parse_config_overrides(None) == {} and parse_config_overrides(" ") == {}


def test_config_overrides_unknown_key_lists_valid_keys():
    with pytest.raises(ValueError, match="Unknown config key 'num_layers'") as error:
        parse_config_overrides("num_layers=3")
    message = str(error.value)
    assert "num_hidden_layers" in message and "softmax_variant" in message and "rope_parameters" in message
    with pytest.raises(ValueError, match="Did you mean 'attention_dropout'"):
        parse_config_overrides("attention_dropot=0.1")
    with pytest.raises(ValueError, match="not of the form key=value"):
        parse_config_overrides("num_hidden_layers")


def test_build_config_from_tokenizer_fields_and_overrides():
    tokenizer = load_tokenizer()
    args = ModelArguments(hidden_size=64, num_attention_heads=4, softmax_variant="clipped",
                          config_overrides="attention_dropout=0.1,num_hidden_layers=3")
    config = build_config(args, tokenizer)
    assert isinstance(config, HfGenDecoderConfig)
    assert (config.vocab_size, config.eos_token_id, config.pad_token_id) == (
        len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert (config.hidden_size, config.softmax_variant, config.attention_dropout, config.num_hidden_layers) == (
        64, "clipped", 0.1, 3)
    assert config.intermediate_size == HfGenDecoderConfig().intermediate_size  # unset: the config default
    with pytest.raises(ValueError, match="valid choices"):
        build_config(ModelArguments(config_overrides="softmax_variant=nope"), tokenizer)


def test_continue_from_saved_folder_with_another_variant(tiny_run, tmp_path):
    # Same weights, softmax switched: a checkpoint trained one way can be fine-tuned another.
    model_args = ModelArguments(model_name_or_path=tiny_run.output_dir, softmax_variant="standard")
    data_args = DataArguments(block_size=32, max_train_samples=16, max_eval_samples=4)
    result = pretrain(model_args, data_args, _training_args(tmp_path / "continued", max_steps=1))
    config = json.loads((tmp_path / "continued" / "config.json").read_text())
    assert config["softmax_variant"] == "standard" and config["num_key_value_heads"] == 2
    assert result.eval_perplexity_before < 0.5 * 8192  # started from the trained weights, not from scratch
    assert f"continued from `{tiny_run.output_dir}`" in (tmp_path / "continued" / "README.md").read_text()


def _run(command: list[str], timeout: int) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_recipe_help():
    result = _run([sys.executable, str(RECIPE), "--help"], timeout=120)
    for flag in ("--softmax_variant", "off_by_one", "--config_overrides", "--block_size", "--max_steps"):
        assert flag in result.stdout


def test_recipe_yaml_config_with_flag_overrides(tmp_path):
    recipe = runpy.run_path(str(RECIPE), run_name="recipe")  # a script, not a module of the package
    # The shipped config parses, and its values arrive in the dataclasses.
    model_args, data_args, training_args = recipe["parse_arguments"]([str(REPO / "recipes/configs/pretrain_tiny.yaml")])
    assert (model_args.num_hidden_layers, model_args.num_key_value_heads, data_args.block_size) == (4, 2, 128)
    assert training_args.learning_rate == 2e-3 and training_args.use_cpu == (not torch.cuda.is_available())

    config = tmp_path / "tiny.yaml"
    config.write_text(textwrap.dedent(f"""\
        hidden_size: 64
        num_hidden_layers: 1
        num_attention_heads: 4
        intermediate_size: 128
        position_embedding: alibi
        config_overrides: "attention_dropout=0.0"
        block_size: 32
        max_train_samples: 16
        max_eval_samples: 4
        output_dir: {tmp_path / "from_yaml"}
        max_steps: 5
        per_device_train_batch_size: 4
        learning_rate: 1e-3
        report_to: none
        """))
    recipe["main"]([str(config), "--max_steps", "2", "--softmax_variant", "temperature",
                    "--softmax_temperature", "2.0"])
    saved = json.loads((tmp_path / "from_yaml" / "config.json").read_text())
    assert (saved["position_embedding"], saved["softmax_variant"], saved["softmax_temperature"]) == (
        "alibi", "temperature", 2.0)
    results = json.loads((tmp_path / "from_yaml" / "all_results.json").read_text())
    assert results["global_step"] == 2  # the flag beat the YAML's max_steps
    assert results["learning_rate"] == 1e-3  # "1e-3" is a string to YAML; the flag's type converted it

    config.write_text("num_layers: 2\n")
    with pytest.raises(SystemExit):
        recipe["parse_arguments"]([str(config)])


def test_recipe_under_torchrun_with_two_processes(tmp_path):
    out = tmp_path / "ddp"
    result = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                   str(RECIPE), str(REPO / "recipes/configs/pretrain_tiny.yaml"), *TINY_FLAGS,
                   "--block_size", "32", "--max_train_samples", "64", "--max_eval_samples", "8",
                   "--per_device_train_batch_size", "8", "--max_steps", "3", "--logging_steps", "1",
                   "--output_dir", str(out), "--disable_tqdm", "true"], timeout=300)
    log = result.stdout + result.stderr
    # Each rank reports itself once its process group is up.
    assert "[hfgen] process 0 of 2" in log and "[hfgen] process 1 of 2" in log
    # 64 blocks shared by 2 ranks at 8 a step: an epoch is 4 steps, so 3 steps are 0.75 epoch (0.375 with one rank).
    assert re.search(r"epoch\s+=\s+0\.75\b", log), log[-3000:]
    results = json.loads((out / "all_results.json").read_text())
    assert results["world_size"] == 2 and results["total_train_batch_size"] == 16 and results["global_step"] == 3
    assert (out / "model.safetensors").is_file() and (out / "README.md").is_file()


VARIANTS = [(key, value) for key, names in (
    ("attention_scoring", variants.ATTENTION_SCORINGS), ("softmax_variant", variants.SOFTMAX_VARIANTS),
    ("position_embedding", variants.POSITION_EMBEDDINGS), ("norm_type", variants.NORM_TYPES),
    ("norm_position", variants.NORM_POSITIONS), ("mlp_type", variants.MLP_TYPES)) for value in names]


@pytest.mark.parametrize(("key", "value"), VARIANTS, ids=[f"{key}={value}" for key, value in VARIANTS])
def test_every_variant_pretrains_and_saves(key, value, tmp_path):
    model_args = ModelArguments(**{**TINY_MODEL, "num_hidden_layers": 1, key: value})
    data_args = DataArguments(block_size=16, max_train_samples=8, max_eval_samples=2)
    result = pretrain(model_args, data_args, _training_args(tmp_path, max_steps=4, per_device_train_batch_size=4))
    assert result.eval_perplexity_after < result.eval_perplexity_before < 2 * 8192
    assert json.loads((tmp_path / "config.json").read_text())[key] == value


def test_time_limit_stops_training_early(tmp_path):
    time_limit = TimeLimitCallback(max_seconds=1.0)
    model_args = ModelArguments(**{**TINY_MODEL, "num_hidden_layers": 1})
    data_args = DataArguments(block_size=16, max_train_samples=8, max_eval_samples=2)
    result = pretrain(model_args, data_args, _training_args(tmp_path, max_steps=100_000), callbacks=[time_limit])
    assert time_limit.stopped_at_step == result.metrics["global_step"] < 100_000
    assert 1.0 <= result.train_runtime < 30


def test_time_limit_stops_every_rank_together(tmp_path):
    """Rank 0's clock decides: a rank that stopped alone would hang the others in their next all-reduce."""
    script = tmp_path / "ranks.py"
    script.write_text(textwrap.dedent("""
        import time
        import torch.distributed as dist
        from transformers import TrainerControl, TrainerState, TrainingArguments
        from hfgen.training.callbacks import TimeLimitCallback

        dist.init_process_group("gloo")
        rank = dist.get_rank()
        args = TrainingArguments(output_dir="unused", use_cpu=True)
        for expired_rank in (1, 0):
            callback = TimeLimitCallback(max_seconds=60)
            callback._start = time.monotonic() - (120 if rank == expired_rank else 0)
            control = callback.on_step_end(args, TrainerState(global_step=5, max_steps=10), TrainerControl())
            print(f"rank {rank} expired_rank {expired_rank} stop {control.should_training_stop}", flush=True)
        dist.destroy_process_group()
    """))
    result = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                   str(script)], timeout=120)
    for rank in (0, 1):
        assert f"rank {rank} expired_rank 1 stop False" in result.stdout, result.stdout
        assert f"rank {rank} expired_rank 0 stop True" in result.stdout, result.stdout
