"""The README's shell examples run as written, in order, and chain.

Every command of the README's ```bash blocks that runs a recipe (``.venv/bin/python recipes/...``,
``.venv/bin/torchrun ... recipes/...``) or the ``hfgen`` CLI (``.venv/bin/hfgen ...``) is taken in README order.

- ``test_readme_commands_chain`` (no training, seconds): every folder a command reads (``--model_name_or_path``,
  ``--vae``, ``--text_encoder``, ``--classifier``, ``--pretrained_dirs``, ``--merge_from``, ``hfgen push PATH``) is
  the output folder of an earlier command (or inside it), every YAML file exists, every output folder is under
  ``outputs/`` (git-ignored) and no command overwrites an earlier one's folder.
- ``test_readme_chain_runs`` (about 1-2 min on 2 cores) runs the pre-training -> fine-tuning chains (``hfgen
  demo``, causal LM -> LoRA, masked LM -> classification) as the README writes them, and
  ``test_readme_all_commands_run`` (``@pytest.mark.slow``) runs every command. Each runs in an empty working folder
  (only ``recipes`` linked in, ``HF_HUB_OFFLINE=1``), so a command whose input no earlier command wrote fails.

The tiny override: the flags in ``TINY_FLAGS`` for the command's script are appended to the README's command
(argparse keeps the last value of a flag, so they win over the README's flags and YAML values), e.g.
``--max_steps 2`` and a 1-layer, 32-wide model. They change sizes and step counts only, never a path. Commands
that need a Hub account (``hfgen push``, ``--push_to_hub``) are checked for chaining but not run; the round trip is
``tests/test_hub_roundtrip.py``'s. Each run must end with the log line ``saved to <its output folder>`` and leave
that folder non-empty.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
BIN = Path(sys.executable).parent  # the README's .venv/bin: the interpreter running the tests

# Flags whose value is a folder an earlier command must have written.
READ_FLAGS = ("--model_name_or_path", "--vae", "--text_encoder", "--classifier", "--pretrained_dirs", "--merge_from")
OUTPUT_FLAGS = ("--output_dir", "--output-dir")

_TINY_TRAINER = ("--max_steps", "2", "--logging_steps", "1", "--save_steps", "1", "--per_device_train_batch_size",
                 "4", "--per_device_eval_batch_size", "4", "--max_eval_samples", "4")
_TINY_MODEL = ("--hidden_size", "32", "--intermediate_size", "64", "--num_hidden_layers", "1",
               "--num_attention_heads", "4")
_TINY_IMAGES = ("--max_train_steps", "2", "--classifier_steps", "2", "--num_eval_samples", "8",
                "--save_images_steps", "1", "--save_steps", "1")
TINY_FLAGS: dict[str, tuple[str, ...]] = {
    "hfgen demo": ("--max-steps", "2", "--hidden-size", "32", "--num-hidden-layers", "1", "--num-attention-heads",
                   "4", "--num-key-value-heads", "1", "--intermediate-size", "64", "--block-size", "32",
                   "--batch-size", "4", "--max-eval-samples", "4", "--max-new-tokens", "5"),
    "recipes/pretrain_causal_lm.py": (*_TINY_TRAINER, *_TINY_MODEL, "--num_key_value_heads", "1", "--block_size",
                                      "32", "--max_train_samples", "16"),
    "recipes/pretrain_masked_lm.py": (*_TINY_TRAINER, *_TINY_MODEL, "--block_size", "32", "--max_train_samples",
                                      "16"),
    "recipes/pretrain_span_corruption.py": (*_TINY_TRAINER, *_TINY_MODEL, "--block_size", "32",
                                            "--max_train_samples", "16"),
    # A pre-trained folder's config decides the architecture; the model flags only size a model from scratch.
    "recipes/finetune_classification.py": (*_TINY_TRAINER, *_TINY_MODEL, "--max_length", "32",
                                           "--max_train_samples", "16"),
    "recipes/finetune_lora.py": (*_TINY_TRAINER, "--block_size", "32", "--max_train_samples", "8"),
    "recipes/transfer_learning.py": ("--families", "encoder", "--train_sizes", "32", "--finetune_seeds", "0",
                                     "--pretrain_steps", "2", "--finetune_steps", "2", "--finetune_learning_rates",
                                     "", "--learning_rate_per_size", "false", "--hidden_size", "32",
                                     "--intermediate_size", "64", "--num_hidden_layers", "1", "--block_size", "32",
                                     "--max_length", "32", "--max_eval_samples", "8"),
    "recipes/train_vae.py": _TINY_IMAGES,
    "recipes/train_gan.py": _TINY_IMAGES,
    "recipes/train_flow.py": _TINY_IMAGES,
    "recipes/train_diffusion.py": (*_TINY_IMAGES, "--num_inference_steps", "2"),
    "recipes/train_vqvae.py": ("--max_train_steps", "2", "--prior_steps", "2", "--classifier_steps", "2",
                               "--num_eval_samples", "8", "--save_steps", "1"),
    "recipes/sft.py": ("--max_steps", "2", "--logging_steps", "1"),
    "recipes/reward_model.py": ("--max_steps", "2", "--logging_steps", "1"),
    "recipes/rlhf/run.py": ("--sft_steps", "2", "--samples_per_prompt", "2", "--reward_steps", "2", "--rl_steps",
                            "2", "--eval_prompts", "4", "--max_new_tokens", "4"),
    # (--quick, where the README gives it, sets its own small sizes after these)
    "recipes/fusellm.py": ("--source_vocab_sizes", "300", "400", "--source_steps", "2", "--target_pretrain_steps", "2",
                           "--continue_steps", "2", "--eval_every", "1", "--eval_blocks", "4", "--hidden_size", "16"),
}
# The chains of the default (fast) run: pre-training and the fine-tuning that starts from its folder.
FAST_SCRIPTS = ("hfgen demo", "recipes/pretrain_causal_lm.py", "recipes/finetune_lora.py",
                "recipes/pretrain_masked_lm.py", "recipes/finetune_classification.py")


@dataclass
class Command:
    """One README command: its line as written, its argv, and the script or CLI subcommand it runs."""

    line: str
    argv: list[str]
    script: str  # "recipes/x.py" or "hfgen <subcommand>"
    args: list[str]  # the script's own arguments

    def flag(self, *names: str) -> str | None:
        """The last value given to any of ``names`` (argparse keeps the last), or None."""
        value = None
        for i, word in enumerate(self.args[:-1]):
            if word in names:
                value = self.args[i + 1]
        return value

    @property
    def yaml_values(self) -> dict:
        if self.args and self.args[0].endswith((".yaml", ".yml")):
            return yaml.safe_load((REPO / self.args[0]).read_text()) or {}
        return {}

    @property
    def is_help(self) -> bool:
        return "--help" in self.args or "-h" in self.args

    @property
    def needs_hub(self) -> bool:
        return self.script == "hfgen push" or "--push_to_hub" in self.args

    def output_dir(self) -> str | None:
        """The folder this command writes (None for --help and push)."""
        if self.is_help or self.script == "hfgen push":
            return None
        return self.flag(*OUTPUT_FLAGS) or self.yaml_values.get("output_dir") or _default_output_dir(self.script)

    def input_dirs(self) -> list[str]:
        """The folders this command reads."""
        values = [self.flag(name) for name in READ_FLAGS] + [self.yaml_values.get(n.lstrip("-")) for n in READ_FLAGS]
        folders = [folder.split("=", 1)[-1].strip() for value in values if value for folder in value.split(",")]
        if self.script == "hfgen push":
            folders.append(self.args[0])
        return [folder for folder in folders if folder]


def _default_output_dir(script: str) -> str | None:
    """The default ``output_dir`` of a script's parser (imported in process, nothing run)."""
    if script == "hfgen demo":
        import argparse

        from hfgen.cli import build_parser

        subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
        return subparsers.choices["demo"].get_default("output_dir")
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"readme_{Path(script).stem}", REPO / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_parser().get_default("output_dir")


def readme_commands() -> list[Command]:
    """The recipe and CLI commands of the README's ```bash blocks, in order (comments and ``\\`` joins handled)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if not argv or not argv[0].startswith(".venv/bin/"):
                continue
            program = argv[0].removeprefix(".venv/bin/")
            if program == "hfgen":
                commands.append(Command(line.strip(), argv, f"hfgen {argv[1]}", argv[2:]))
                continue
            scripts = [i for i, word in enumerate(argv) if word.startswith("recipes/") and word.endswith(".py")]
            if scripts:
                commands.append(Command(line.strip(), argv, argv[scripts[0]], argv[scripts[0] + 1:]))
    return commands


def test_readme_has_the_chains():
    """The parser finds what the README shows: the guard against a test that silently checks nothing."""
    scripts = [c.script for c in readme_commands()]
    for script in FAST_SCRIPTS + ("recipes/train_vae.py", "recipes/transfer_learning.py", "hfgen push"):
        assert script in scripts, script
    assert scripts.index("recipes/pretrain_causal_lm.py") < scripts.index("recipes/finetune_lora.py")


def test_readme_commands_chain():
    written: list[tuple[str, str]] = []  # (folder, the line that writes it)
    problems = []
    for command in readme_commands():
        if command.yaml_values == {} and command.args and command.args[0].endswith(".yaml"):
            problems.append(f"{command.line}: empty or missing {command.args[0]}")
        for folder in command.input_dirs():
            if not any(Path(folder) == Path(out) or Path(out) in Path(folder).parents for out, _ in written):
                problems.append(f"{command.line}: reads {folder!r}, which no earlier command writes "
                                f"(written so far: {[out for out, _ in written]})")
        out = command.output_dir()
        if out is not None:
            if not Path(out).parts[0] == "outputs":
                problems.append(f"{command.line}: writes {out!r}, not under outputs/")
            # A push re-saves the same run to upload it; any other command writing an earlier one's folder
            # would replace what a later command may read.
            earlier = [line for folder, line in written if Path(folder) == Path(out)]
            if earlier and not command.needs_hub:
                problems.append(f"{command.line}: overwrites {out!r}, written by {earlier[0]}")
            written.append((out, command.line))
    assert not problems, "\n".join(problems)


def _run(command: Command, workdir: Path) -> None:
    program = command.argv[0].removeprefix(".venv/bin/")
    argv = [str(BIN / program), *command.argv[1:]]
    if not command.is_help:
        argv += TINY_FLAGS[command.script]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg",
           "TOKENIZERS_PARALLELISM": "false"}
    start = time.monotonic()
    result = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    logger.info("%.1f s: %s", time.monotonic() - start, command.line)  # shown with --log-cli-level INFO
    log = result.stdout[-4000:] + result.stderr[-4000:]
    assert result.returncode == 0, f"{command.line}\n-> {shlex.join(argv)}\n{log}"
    out = command.output_dir()
    if out is not None:
        assert (workdir / out).is_dir() and any((workdir / out).iterdir()), f"{command.line}: {out} empty\n{log}"
        assert re.search(rf"saved to {re.escape(out)}/?\b", result.stdout + result.stderr), \
            f"{command.line}: no 'saved to {out}' line\n{log}"
        if command.yaml_values.get("save_strategy") == "steps":  # a run stopped early leaves a loadable model
            checkpoints = sorted((workdir / out).glob("checkpoint-*"))
            assert checkpoints, f"{command.line}: no checkpoint in {out}"
            assert {"config.json", "model.safetensors"} <= {p.name for p in checkpoints[-1].iterdir()}


def _run_in_order(commands: list[Command], workdir: Path) -> None:
    (workdir / "recipes").symlink_to(REPO / "recipes")
    for command in commands:
        _run(command, workdir)


def test_readme_chain_runs(tmp_path):
    commands = [c for c in readme_commands() if c.script in FAST_SCRIPTS and not c.is_help and not c.needs_hub
                and c.argv[0].endswith(("python", "hfgen"))]
    # Every input of the fast subset is written inside it (else the subset could not run in an empty folder).
    assert {"recipes/finetune_lora.py", "recipes/finetune_classification.py"} <= {c.script for c in commands}
    _run_in_order(commands, tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(3600)  # about 20 commands of 10-60 s each; 15 min was not enough on a loaded machine
def test_readme_all_commands_run(tmp_path):
    _run_in_order([c for c in readme_commands() if not c.needs_hub], tmp_path)
