"""What every training recipe's command line shares: ``[config.yaml] [--flag value ...]`` parsed into
``HfArgumentParser`` dataclasses (``hfgen.training.arguments``) with CPU-safe defaults, and a check of the model
folder a flag names. The end of a run (metrics file, loss curve, Hub model card) is the training core's
(``hfgen.training.core.save_run``).

Used by ``recipes/pretrain_causal_lm.py``, ``recipes/pretrain_masked_lm.py``, ``recipes/pretrain_span_corruption.py``,
``recipes/finetune_classification.py`` and ``recipes/transfer_learning.py``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser

from .core import cpu_training_defaults

# Names that lived here before the training core (hfgen.training.core, .arguments) and stay importable from here.
from .arguments import PretrainingDataArguments  # noqa: F401
from .core import loss_history, save_run, variant_title  # noqa: F401

# Where every recipe writes by default (git-ignored): a path under it is always meant as a local folder.
OUTPUT_ROOT = "outputs"


def build_recipe_parser(dataclass_types: Sequence[type], description: str, epilog: str | None = None,
                        **defaults: Any) -> HfArgumentParser:
    """An ``HfArgumentParser`` over ``dataclass_types`` whose defaults are ``cpu_training_defaults()`` (where CUDA
    is absent), then ``defaults``."""
    parser = HfArgumentParser(tuple(dataclass_types), description=description, epilog=epilog)
    parser.set_defaults(**cpu_training_defaults(), **defaults)
    return parser


def parse_recipe_arguments(parser: HfArgumentParser, argv: Sequence[str]) -> tuple:
    """Parse ``[config.yaml] [--flag value ...]``: YAML values become defaults, flags override them.

    An unknown YAML key is an error (argparse exits, naming the keys and pointing to ``--help``)."""
    # Not TRL's TrlParser.parse_args_and_config: it reads the YAML only from a ``--config`` flag (every recipe, its
    # README line and the tests give it as the first positional argument), raises a ValueError traceback for an
    # unknown key instead of argparse's usage error, refuses an empty file, and copies an ``env:`` key into
    # os.environ; bridging those would take more lines than this function.
    argv = list(argv)
    if argv and argv[0].endswith((".yaml", ".yml")):
        values = yaml.safe_load(Path(argv[0]).read_text()) or {}
        known = {action.dest for action in parser._actions}
        unknown = sorted(set(values) - known)
        if unknown:
            parser.error(f"unknown keys in {argv[0]}: {', '.join(unknown)} (see --help for the valid ones)")
        # As argparse defaults, string values still pass through each flag's type (YAML reads 1e-3 as a string).
        parser.set_defaults(**values)
        argv = argv[1:]
    return parser.parse_args_into_dataclasses(args=argv)


def check_model_folder(value: str | None, argument: str, valid: str, *, hub: bool = True) -> None:
    """Raise ``ValueError`` ("no such folder") when ``value`` names no local folder and cannot be a Hub model.

    transformers treats any name that is not a local folder as a Hub id; where the Hub cannot be reached that ends,
    after several retries, in an ``OSError`` about the network that never names the argument. This check runs
    before the model is loaded: ``value`` passes when it is a folder, or (with ``hub``) a ``namespace/name`` id
    that the Hub answers for or whose files are in the Hub cache. A path under ``outputs/`` or under a folder that
    exists here, or any uncached name while ``HF_HUB_OFFLINE`` is set, is taken as a local folder without asking
    the Hub.

    Args:
        value: what the user gave; ``None`` (not given) passes.
        argument: the flag, e.g. ``"--model_name_or_path"``, named in the error.
        valid: what would be valid, e.g. ``"a folder written by recipes/pretrain_causal_lm.py
            (outputs/pretrain_tiny)"``, named in the error.
        hub: whether a Hub id is valid for this argument at all.
    """
    if value is None or os.path.isdir(os.path.expanduser(value)):
        return
    where = f"{value!r} is a file, not a folder" if os.path.exists(value) else \
        f"no such folder: {value!r} (relative to {os.getcwd()})"
    reason = _not_on_hub(value) if hub and not os.path.exists(value) else None
    if hub and reason is None:
        return
    valid_text = f"{valid}, or a Hub model id 'namespace/name'" if hub else valid
    raise ValueError(f"{argument}: {where}{f'; {reason}' if reason else ''}. Valid: {valid_text}.")


def _not_on_hub(value: str) -> str | None:
    """Why ``value`` is not a model on the Hub, or ``None`` where the Hub has it (or it may exist but is gated)."""
    from huggingface_hub import HfApi, constants, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(value)
    except HFValidationError:
        return "it is not a Hub model id either"
    top = value.split("/")[0]
    if top == OUTPUT_ROOT or os.path.isdir(top):
        return f"'{top}/' is a local folder, so this is read as a local path, not a Hub id"
    if isinstance(try_to_load_from_cache(value, "config.json"), str):
        return None  # downloaded before: transformers loads it from the cache, offline too
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set, so the Hub is not asked"
    try:  # one request with a short timeout, instead of from_pretrained's retries
        HfApi().model_info(value, timeout=10)
    except GatedRepoError:
        return None
    except RepositoryNotFoundError:
        return "the Hub has no model of that name either"
    except Exception as error:  # noqa: BLE001  (any network failure: the name cannot be a reachable Hub model)
        return f"the Hub could not be asked either ({type(error).__name__}: {error})"
    return None
