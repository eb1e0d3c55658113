"""The user's own data in the text recipes (``hfgen.data.user_data``): ``--train_file`` / ``--validation_file``
(txt, jsonl, csv, parquet), ``--dataset_name`` (a local dataset folder), ``--streaming``, and the errors of bad
data flags.

The invariant: the same rows in the same order give the same model. The embedded data written to files by the
test, then read back through ``load_dataset``, must train weights identical (bitwise, same seed) to the default
path; a stream must train the weights of the same data in memory read in order (``train_sampling_strategy
sequential``: a stream is read in file order, while in memory the default sampler shuffles). Every run is a real
recipe run (``main(argv)`` of the script, in process) of 2 steps on a 1-layer, 32-wide model.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
TINY_TRAINER = ["--max_steps", "2", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4",
                "--max_eval_samples", "4", "--report_to", "none", "--save_strategy", "no", "--logging_steps", "1",
                "--disable_tqdm", "true"]
TINY_MODEL = ["--hidden_size", "32", "--intermediate_size", "64", "--num_hidden_layers", "1",
              "--num_attention_heads", "4"]
TINY = {
    "pretrain_causal_lm": [*TINY_TRAINER, *TINY_MODEL, "--num_key_value_heads", "1", "--block_size", "32"],
    "pretrain_masked_lm": [*TINY_TRAINER, *TINY_MODEL, "--block_size", "32"],
    "pretrain_span_corruption": [*TINY_TRAINER, *TINY_MODEL, "--block_size", "32"],
    "finetune_classification": [*TINY_TRAINER, *TINY_MODEL, "--max_length", "32", "--max_train_samples", "16"],
    "finetune_lora": [*TINY_TRAINER, "--block_size", "32", "--max_train_samples", "16"],
    "sft": ["--max_steps", "2", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4",
            "--logging_steps", "1", "--hidden_size", "32", "--num_hidden_layers", "1", "--max_length", "64",
            "--eval_max_new_tokens", "2", "--report_to", "none", "--disable_tqdm", "true"],
    "reward_model": ["--max_steps", "2", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8",
                     "--logging_steps", "1", "--hidden_size", "32", "--num_hidden_layers", "1", "--max_length", "96",
                     "--seed", "0", "--report_to", "none", "--disable_tqdm", "true"],
}
SAVED = {"finetune_lora": "adapter_model.safetensors"}  # the others save model.safetensors
SEQUENTIAL = ["--train_sampling_strategy", "sequential"]
FORMATS = ("jsonl", "csv", "parquet")


def recipe(name: str):
    spec = importlib.util.spec_from_file_location(f"recipe_data_{name}", REPO / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses in the script look their module up there
    spec.loader.exec_module(module)
    return module


def run(name: str, out: Path, *flags: str) -> dict[str, torch.Tensor]:
    """The recipe's saved weights after a tiny run with ``flags``."""
    recipe(name).main([*TINY[name], "--output_dir", str(out), *flags])
    return load_file(out / SAVED.get(name, "model.safetensors"))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [key for key in a if not torch.equal(a[key], b[key])]
    assert not different, f"{len(different)} of {len(a)} tensors differ, e.g. {different[:3]}"


def write(dataset, path: Path) -> Path:
    {"jsonl": dataset.to_json, "csv": lambda p: dataset.to_csv(p, index=False),
     "parquet": dataset.to_parquet}[path.suffix[1:]](str(path))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The embedded data of each recipe, written as the user's files: {kind: {format: (train, validation)}}."""
    from hfgen.data import load_corpus
    from hfgen.data.labelled import load_reference_manual_groups
    from hfgen.training.recipe_common import PretrainingDataArguments

    root = tmp_path_factory.mktemp("user_data")
    task = load_reference_manual_groups()
    sources = {"corpus": load_corpus(), "held_out": PretrainingDataArguments().load_text(),
               "labelled": {"train": task["train"].select_columns(["text", "label"]),
                            "validation": task["test"].select_columns(["text", "label"])}}
    from hfgen.data.instructions import instruction_dataset, preference_dataset

    # The reward recipe's defaults with seed 0: its pairs and its own topic split.
    pairs = recipe("reward_model").split_by_topic(preference_dataset(300, 0, 8), 0.25, 0)
    sources["pairs"] = {"train": pairs["train"], "validation": pairs["test"]}
    instructions = instruction_dataset("lengths", 300, 0)  # the SFT recipe's defaults, seed 0
    sources["instructions"] = {"train": instructions, "validation": instructions.select(range(8))}
    files = {}
    for kind, splits in sources.items():
        files[kind] = {fmt: tuple(write(splits[split], root / f"{kind}_{split}.{fmt}")
                                  for split in ("train", "validation")) for fmt in FORMATS}
    return files


def file_flags(pair: tuple[Path, Path]) -> list[str]:
    return ["--train_file", str(pair[0]), "--validation_file", str(pair[1])]


@pytest.fixture(scope="module")
def default_causal_lm_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("default") / "out"
    run("pretrain_causal_lm", out, *SEQUENTIAL)
    return out


@pytest.fixture(scope="module")
def default_causal_lm(default_causal_lm_folder):
    return load_file(default_causal_lm_folder / "model.safetensors")


@pytest.mark.parametrize("fmt", FORMATS)
def test_causal_lm_on_files_trains_the_default_model(fmt, data, default_causal_lm, tmp_path):
    weights = run("pretrain_causal_lm", tmp_path / "out", *SEQUENTIAL, *file_flags(data["corpus"][fmt]))
    assert_same_weights(weights, default_causal_lm)


def test_causal_lm_streaming_trains_the_in_memory_model(data, default_causal_lm, tmp_path):
    """Files streamed (cut into blocks as they stream, the remainder carried across batches) and the embedded
    corpus streamed both train the weights of the embedded corpus in memory, read in order."""
    streamed = run("pretrain_causal_lm", tmp_path / "files", *SEQUENTIAL, *file_flags(data["corpus"]["jsonl"]),
                   "--streaming", "true")
    assert_same_weights(streamed, default_causal_lm)
    assert_same_weights(run("pretrain_causal_lm", tmp_path / "embedded", "--streaming", "true"), default_causal_lm)
    results = json.loads((tmp_path / "files" / "all_results.json").read_text())
    assert "train_blocks" not in results and results["global_step"] == 2  # a stream has no length to report


@pytest.mark.slow
def test_stream_under_two_processes_trains_the_weights_of_one(data, tmp_path):
    """A stream under ``torchrun --nproc_per_node 2`` (accelerate dispatches it: process 0 reads each global batch
    and sends every process its half) trains the weights of one process on the same file in memory, read in order,
    with the doubled batch (tests/test_ddp_equivalence.py's comparison: up to the order of floating-point sums)."""
    from test_ddp_equivalence import assert_same_weights as assert_same_up_to_sum_order
    from test_ddp_equivalence import recipe_run

    files = file_flags(data["corpus"]["jsonl"])
    one = recipe_run("pretrain_causal_lm", tmp_path / "one", 1, extra=files)
    two = recipe_run("pretrain_causal_lm", tmp_path / "two", 2, extra=[*files, "--streaming", "true"])
    assert_same_up_to_sum_order(one, two, "a stream, 2 processes")


def test_txt_rows_are_lines(data, tmp_path):
    """A .txt file is read one row per line, the line break kept (run_clm's --keep_linebreaks): it trains the
    model of a jsonl file whose rows are those lines, written here with str.splitlines."""
    from datasets import Dataset

    text = "\n\n".join(Dataset.from_json(str(data["corpus"]["jsonl"][0]))["text"][:20])
    (tmp_path / "train.txt").write_text(text)
    lines = Dataset.from_dict({"text": text.splitlines(keepends=True)})
    write(lines, tmp_path / "train.jsonl")
    flags = [*SEQUENTIAL, "--validation_split_percentage", "10"]
    from_txt = run("pretrain_causal_lm", tmp_path / "txt", *flags, "--train_file", str(tmp_path / "train.txt"))
    from_jsonl = run("pretrain_causal_lm", tmp_path / "jsonl", *flags, "--train_file", str(tmp_path / "train.jsonl"))
    assert_same_weights(from_txt, from_jsonl)


def test_dataset_folder_and_validation_percentage(data, tmp_path):
    """--dataset_name with a local folder of data files, without a validation split: the first
    --validation_split_percentage % of train is held out (run_clm's train[:N%]), the rest trains. Same model as
    the two parts written as --train_file / --validation_file."""
    from datasets import Dataset

    rows = Dataset.from_json(str(data["corpus"]["jsonl"][0])).select(range(60))  # 10% = 6 rows exactly
    (tmp_path / "folder").mkdir()
    write(rows, tmp_path / "folder" / "train.jsonl")
    write(rows.select(range(6, 60)), tmp_path / "rest.jsonl")
    write(rows.select(range(6)), tmp_path / "first.jsonl")
    from_folder = run("pretrain_causal_lm", tmp_path / "a", *SEQUENTIAL, "--dataset_name", str(tmp_path / "folder"),
                      "--validation_split_percentage", "10")
    from_files = run("pretrain_causal_lm", tmp_path / "b", *SEQUENTIAL, "--train_file", str(tmp_path / "rest.jsonl"),
                     "--validation_file", str(tmp_path / "first.jsonl"))
    assert_same_weights(from_folder, from_files)


@pytest.mark.parametrize("name", ["pretrain_masked_lm", "pretrain_span_corruption"])
def test_encoder_recipes_on_files_and_streams(name, data, tmp_path):
    """The MLM and span-corruption recipes: the embedded text (its labelled-task test paragraphs cut out) written
    as jsonl trains the default model, in memory and streamed (their collators draw the same noise: the torch
    generator and a generator keyed by each block's tokens)."""
    default = run(name, tmp_path / "default", *SEQUENTIAL)
    files = file_flags(data["held_out"]["jsonl"])
    assert_same_weights(run(name, tmp_path / "files", *SEQUENTIAL, *files), default)
    assert_same_weights(run(name, tmp_path / "stream", *files, "--streaming", "true"), default)


def test_classification_on_files_trains_the_default_model(data, tmp_path):
    """The labelled task written as jsonl (class ids; the validation file is the task's test split) trains the
    default model; the classes are train's distinct labels, named as they appear in the file."""
    default = run("finetune_classification", tmp_path / "default")
    weights = run("finetune_classification", tmp_path / "files", *file_flags(data["labelled"]["jsonl"]))
    assert_same_weights(weights, default)
    config = json.loads((tmp_path / "files" / "config.json").read_text())
    assert config["id2label"] == {str(i): str(i) for i in range(7)}


def test_classification_string_labels_and_label_column(tmp_path):
    """Class names in a column of another name (--label_column_name, --text_column): the classes are the sorted
    names, the model is scored with the shipped evaluate module on the validation file."""
    rows = [{"body": f"{word} " * 12, "kind": word} for word in ("zeta", "alpha", "mid") * 8]
    for split in ("train", "validation"):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    run("finetune_classification", tmp_path / "out", "--train_file", str(tmp_path / "train.jsonl"),
        "--validation_file", str(tmp_path / "validation.jsonl"), "--text_column", "body", "--label_column_name",
        "kind")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["id2label"] == {"0": "alpha", "1": "mid", "2": "zeta"}
    results = json.loads((tmp_path / "out" / "all_results.json").read_text())
    assert results["eval_examples"] == 4 and 0 <= results["eval_accuracy"] <= 1


def test_lora_on_files_and_stream(data, default_causal_lm_folder, tmp_path):
    """The LoRA recipe on the embedded corpus written as parquet trains the default adapter; streamed, the adapter of
    the same corpus read in order."""
    base = ["--model_name_or_path", str(default_causal_lm_folder)]
    files = file_flags(data["corpus"]["parquet"])
    assert_same_weights(run("finetune_lora", tmp_path / "files", *base, *files), run("finetune_lora", tmp_path / "a",
                                                                                     *base))
    in_order = run("finetune_lora", tmp_path / "in_order", *base, *SEQUENTIAL)
    assert_same_weights(run("finetune_lora", tmp_path / "stream", *base, *files, "--streaming", "true"), in_order)


def test_sft_on_files_trains_the_default_model(data, tmp_path):
    """The SFT recipe's instruction pairs written as jsonl (conversational ``messages``) train the default model;
    the run reports validation loss (the embedded rule applies to the embedded task only)."""
    default = run("sft", tmp_path / "default")
    weights = run("sft", tmp_path / "files", *file_flags(data["instructions"]["jsonl"]))
    assert_same_weights(weights, default)
    results = json.loads((tmp_path / "files" / "sft_results.json").read_text())
    from datasets import Dataset

    assert results["rows"] == len(Dataset.from_json(str(data["instructions"]["jsonl"][0])))
    assert results["eval_loss"] < results["eval_loss_before"]


def test_sft_streams_plain_text(tmp_path):
    """A stream of a plain-text column (SFTTrainer's language-modelling layout) trains and saves a model that
    loads (a stream is read in order where the in-memory run shuffles: no weights to compare)."""
    from transformers import AutoModelForCausalLM

    for split in ("train", "validation"):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps({"text": f"row {i} of the {split} data."}) + "\n"
                                                         for i in range(12)))
    run("sft", tmp_path / "out", "--train_file", str(tmp_path / "train.jsonl"), "--validation_file",
        str(tmp_path / "validation.jsonl"), "--streaming", "true")
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "out").config.model_type == "hfgen_decoder"


def test_reward_model_on_files_trains_the_default_model(data, tmp_path):
    """The reward recipe's preference pairs (its own topic split) written as jsonl train the default model; plain
    text pairs (TRL's standard layout) train too and are scored by RewardTrainer's accuracy."""
    default = run("reward_model", tmp_path / "default")
    assert_same_weights(run("reward_model", tmp_path / "files", *file_flags(data["pairs"]["jsonl"])), default)
    rows = [{"chosen": f"A clear answer number {i}.", "rejected": f"no {i}"} for i in range(8)]
    for split in ("train", "validation"):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    run("reward_model", tmp_path / "plain", "--train_file", str(tmp_path / "train.jsonl"), "--validation_file",
        str(tmp_path / "validation.jsonl"))
    results = json.loads((tmp_path / "plain" / "reward_results.json").read_text())
    assert results["heldout_pairs"] == 8 and 0 <= results["heldout_accuracy_after"] <= 1
    # Streamed (read in file order, where the in-memory run shuffles: no weights to compare), it trains and saves.
    run("reward_model", tmp_path / "stream", "--train_file", str(tmp_path / "train.jsonl"), "--validation_file",
        str(tmp_path / "validation.jsonl"), "--streaming", "true")
    assert "heldout_pairs" not in json.loads((tmp_path / "stream" / "reward_results.json").read_text())


def test_trl_recipes_name_the_layouts_they_read(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"question": "a", "answer": "b"}\n')
    files = ["--train_file", str(tmp_path / "train.jsonl"), "--validation_file", str(tmp_path / "train.jsonl")]
    for name, layouts in (("sft", r"\(messages\) or \(prompt, completion\) or \(text\)"),
                          ("reward_model", r"\(chosen, rejected\)")):
        with pytest.raises(ValueError, match=rf"columns question, answer; this recipe reads {layouts}"):
            recipe(name).main([*TINY[name], "--output_dir", str(tmp_path / "out"), *files])
        assert not (tmp_path / "out").exists()


BAD_FLAGS = [
    (["--dataset_name", "x", "--train_file", "{train}"], "either --dataset_name"),
    (["--train_file", "{dir}/corpus.docx"], "valid extensions: .txt"),
    (["--train_file", "{dir}/missing.jsonl"], "no such file"),
    (["--validation_file", "{train}"], "needs --train_file"),
    (["--train_file", "{train}", "--validation_file", "{dir}/validation.csv"], "same format"),
    (["--train_file", "{train}", "--streaming", "true", "--max_steps", "-1"], "--streaming needs --max_steps"),
    (["--train_file", "{train}", "--validation_split_percentage", "0"], "validation_split_percentage"),
    (["--train_file", "{train}", "--text_column", "body"], "Column 'body' is not in the train split; its columns "
                                                           "are: text"),
    (["--train_file", "{train}", "--streaming", "true"], "needs a validation split"),
    (["--train_file", "{train}"], "--validation_split_percentage 5 of the 1 train rows leaves one part empty"),
    (["--dataset_name", "{dir}/not a dataset id"], "--dataset_name"),
]


@pytest.mark.parametrize("flags,message", BAD_FLAGS, ids=[m for _, m in BAD_FLAGS])
def test_bad_data_flags_fail_before_training(flags, message, tmp_path):
    (tmp_path / "train.jsonl").write_text('{"text": "a b c"}\n')
    (tmp_path / "validation.csv").write_text("text\na b c\n")
    flags = [flag.format(train=tmp_path / "train.jsonl", dir=tmp_path) for flag in flags]
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        recipe("pretrain_causal_lm").main([*TINY["pretrain_causal_lm"], "--output_dir", str(tmp_path / "out"),
                                           *flags])
    assert not (tmp_path / "out").exists()


def test_unreachable_hub_dataset_is_a_clear_error(tmp_path, monkeypatch):
    """A Hub id that cannot be loaded (here: offline, not in the cache) names --dataset_name, without retries."""
    import datasets
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="--dataset_name: cannot load 'hfgen-test/no-such-dataset'"):
        recipe("pretrain_causal_lm").main([*TINY["pretrain_causal_lm"], "--output_dir", str(tmp_path / "out"),
                                           "--dataset_name", "hfgen-test/no-such-dataset"])
    assert not (tmp_path / "out").exists()


def test_classification_streams_declared_classes(data, tmp_path):
    """A stream of parquet written by datasets (the label column a ClassLabel, kept in its schema) trains the
    weights of the same rows in memory read in order; the classes are the declared names."""
    from datasets import Dataset

    rows = Dataset.from_parquet(str(data["labelled"]["parquet"][0])).select(range(32))
    files = ["--train_file", str(write(rows, tmp_path / "train.parquet")), "--validation_file",
             str(data["labelled"]["parquet"][1])]
    flags = [flag for flag in TINY["finetune_classification"] if flag not in ("--max_train_samples", "16")]
    recipe("finetune_classification").main([*flags, "--output_dir", str(tmp_path / "memory"), *files, *SEQUENTIAL])
    recipe("finetune_classification").main([*flags, "--output_dir", str(tmp_path / "stream"), *files,
                                            "--streaming", "true"])
    weights = [load_file(tmp_path / out / "model.safetensors") for out in ("memory", "stream")]
    assert_same_weights(*weights)
    config = json.loads((tmp_path / "stream" / "config.json").read_text())
    assert config["id2label"] == {str(i): name for i, name in enumerate(rows.features["label"].names)}


def test_classification_refuses_undeclared_classes_in_a_stream_and_unknown_validation_labels(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"text": "a b c", "label": "x"}\n')
    (tmp_path / "validation.jsonl").write_text('{"text": "a b c", "label": "y"}\n')
    files = ["--train_file", str(tmp_path / "train.jsonl"), "--validation_file", str(tmp_path / "validation.jsonl")]
    for flags, message in ((["--streaming", "true"], "--streaming needs the classes declared"),
                           ([], r"labels that train has not: \['y'\]")):
        with pytest.raises(ValueError, match=message):
            recipe("finetune_classification").main([*TINY["finetune_classification"], "--output_dir",
                                                    str(tmp_path / "out"), *files, *flags])
        assert not (tmp_path / "out").exists()
