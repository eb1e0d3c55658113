"""Serve a saved hfgen checkpoint with ``transformers serve`` (transformers' OpenAI-compatible HTTP server).

``transformers serve`` (5.25) picks the model class as ``getattr(transformers, config.architectures[0])``, which
fails for every model whose code lives beside its weights (``HfGenDecoderForCausalLM`` is not in ``transformers``),
and loads a config that names no architecture with ``AutoModelForCausalLM`` (the path it takes for GGUF files).
:func:`prepare_for_serving` writes a copy of a checkpoint whose ``config.json`` names none, so the server loads it
through the ``auto_map`` that ``save_pretrained`` wrote — the model code saved with the checkpoint, run only when the
user passes ``--trust-remote-code`` to the server. Weights and tokenizer files are hard-linked where the file system
allows (a copy otherwise); nothing is pickled. ::

    python -m hfgen.serving path/to/checkpoint path/to/served
    transformers serve --trust-remote-code --continuous-batching path/to/served   # then any OpenAI client
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)


def prepare_for_serving(checkpoint: str | os.PathLike, output_dir: str | os.PathLike) -> Path:
    """Write ``output_dir``: the files of the saved causal-LM ``checkpoint`` (a folder written by
    ``save_pretrained``, its tokenizer beside it) with ``architectures`` removed from ``config.json``.

    Raises ``ValueError`` before writing anything when ``checkpoint`` has no ``config.json``, no tokenizer, or no
    ``auto_map["AutoModelForCausalLM"]`` (then the server could not find the model code), or when ``output_dir``
    is ``checkpoint`` itself. Returns ``output_dir``.
    """
    checkpoint, output_dir = Path(checkpoint), Path(output_dir)
    config_file = checkpoint / "config.json"
    if not config_file.is_file():
        raise ValueError(f"checkpoint={str(checkpoint)!r} has no config.json: pass a folder written by "
                         f"save_pretrained.")
    config = json.loads(config_file.read_text())
    if "AutoModelForCausalLM" not in config.get("auto_map", {}):
        raise ValueError(f"checkpoint={str(checkpoint)!r}: config.json's auto_map names no AutoModelForCausalLM "
                         f"(it has {sorted(config.get('auto_map', {}))}); save an hfgen causal LM "
                         f"(HfGenDecoderForCausalLM.save_pretrained), whose folder carries its code.")
    if not (checkpoint / "tokenizer_config.json").is_file():
        raise ValueError(f"checkpoint={str(checkpoint)!r} has no tokenizer_config.json: the server tokenizes with "
                         f"the checkpoint's tokenizer; save it beside the model (tokenizer.save_pretrained).")
    if output_dir.resolve() == checkpoint.resolve():
        raise ValueError(f"output_dir={str(output_dir)!r} is the checkpoint itself; pass another folder.")
    output_dir.mkdir(parents=True, exist_ok=True)
    for source in checkpoint.iterdir():
        if source.is_file() and source.name != "config.json":
            target = output_dir / source.name
            target.unlink(missing_ok=True)
            try:
                os.link(source, target)
            except OSError:  # another file system, or links not allowed
                shutil.copy2(source, target)
    config.pop("architectures", None)
    (output_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    logger.info("wrote %s; serve it with: transformers serve --trust-remote-code %s", output_dir, output_dir)
    return output_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m hfgen.serving",
        description="Copy a saved hfgen causal-LM checkpoint into a folder that `transformers serve "
                    "--trust-remote-code FOLDER` serves (config.json without `architectures`, so the server loads "
                    "the model through its auto_map).")
    parser.add_argument("checkpoint", help="folder written by save_pretrained (model and tokenizer)")
    parser.add_argument("output_dir", help="folder to write (files hard-linked where possible)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    prepare_for_serving(args.checkpoint, args.output_dir)


if __name__ == "__main__":
    main()
