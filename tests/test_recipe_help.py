"""Every flag of every recipe and of the ``hfgen`` CLI says what it does and shows its default in ``--help``, and
``hfgen --help`` answers without importing torch.

The recipes' parsers are built in process (``build_parser()``, nothing trained) and each flag's help line is
rendered by the parser's own formatter: that rendered text, what a user sees, must be non-empty and carry
"default". One recipe is also run as ``--help`` in a subprocess, to check the rendering end to end.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
# Scripts that build their parser inside main() / parse_args(): checked through the parser they parse with.
BUILT_IN_MAIN = ("sft.py",)
EXPERIMENTS = sorted(p.name for p in (RECIPES / "experiments").glob("*.py"))
SCRIPTS = sorted(p.name for p in RECIPES.glob("*.py") if p.name != "image_common.py" and p.name not in BUILT_IN_MAIN)


def load_recipe(name: str):
    spec = importlib.util.spec_from_file_location(f"help_{Path(name).stem.replace('/', '_')}", RECIPES / name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses in the script look their module up there
    spec.loader.exec_module(module)
    return module


def undocumented_flags(parser: argparse.ArgumentParser) -> list[str]:
    """The option strings whose rendered help is empty or does not show the default."""
    formatter = parser._get_formatter()
    missing = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) or not action.option_strings:
            continue
        if action.help == argparse.SUPPRESS:
            continue
        text = formatter._expand_help(action) if action.help else ""
        if not text.strip() or "default" not in text:
            missing.append(f"{action.option_strings[-1]} (help: {text!r})")
    return missing


def test_every_recipe_is_checked():
    # The glob is the list: a new script is checked without editing this file.
    assert {"pretrain_causal_lm.py", "finetune_lora.py", "train_vae.py", "transfer_learning.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("name", SCRIPTS)
def test_recipe_flags_have_help_and_default(name):
    parser = load_recipe(name).build_parser()
    assert undocumented_flags(parser) == []


@pytest.mark.parametrize("name", [*BUILT_IN_MAIN, *(f"experiments/{name}" for name in EXPERIMENTS)])
def test_flags_of_scripts_parsing_in_main_have_help_and_default(name, monkeypatch):
    """sft.py and the experiments build their parser where they parse: the parser is caught at its first parse."""
    parsers = []

    def catch(self, args=None, namespace=None):
        parsers.append(self)
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", catch)
    module = load_recipe(name)
    entry = getattr(module, "parse_args", None) or module.main
    with pytest.raises(SystemExit):
        entry([])
    assert parsers and undocumented_flags(parsers[0]) == []


def test_cli_flags_have_help_and_default():
    from hfgen.cli import build_parser

    parser = build_parser()
    [subparsers] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, subparser in subparsers.choices.items():
        assert undocumented_flags(subparser) == [], name


def test_recipe_help_in_a_subprocess_shows_defaults():
    result = subprocess.run([sys.executable, str(RECIPES / "train_vae.py"), "--help"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    text = " ".join(result.stdout.split())  # argparse wraps lines at the terminal width
    assert "--max_train_steps" in text and "(default: outputs/vae)" in text


def test_cli_help_does_not_import_torch():
    # `hfgen --help` must answer in well under a second: the console script runs hfgen_cli (outside the package,
    # whose __init__ imports every model) and the heavy stack is imported by a subcommand's handler.
    from importlib.metadata import entry_points

    [script] = [ep for ep in entry_points(group="console_scripts") if ep.name == "hfgen"]
    assert script.value == "hfgen_cli:main"
    code = ("import sys\nfrom hfgen_cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = sorted(m for m in ('torch', 'transformers', 'diffusers', 'peft', 'trl') if m in sys.modules)\n"
            "print('IMPORTED', heavy)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage: hfgen" in result.stdout
    assert "IMPORTED []" in result.stdout, result.stdout[-500:]
