"""What every hfgen transformers model shares: the base ``PreTrainedModel``, weight initialisation of the variant
parameters, checkpoint checks before loading (the input checks: ``input_checks.py``)."""

from __future__ import annotations

import inspect
import json
import os
import struct

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init

from .attention import HfGenAttention
from .configuration_common import check_misspelt_keys
from .input_checks import check_inputs  # noqa: F401  (where the families import it from)
from .model_card import HfGenHubCardMixin
from .moe import KEEP_IN_FP32, init_moe_weights
from .positions import RotaryEmbedding


def last_token_indices(config, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None,
                       logits: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token: from the attention mask when given (any padding side), else the last
    token that is not ``pad_token_id``."""
    batch, length = logits.shape[:2]
    positions = torch.arange(length, device=logits.device)
    if attention_mask is not None and attention_mask.dim() == 2:
        return (positions * attention_mask[:, -length:].to(logits.device).long()).argmax(-1)
    if input_ids is not None and config.pad_token_id is not None:
        return (positions * (input_ids != config.pad_token_id).long()).argmax(-1)
    if batch > 1:
        raise ValueError("Cannot find each row's last token in a batch without attention_mask or pad_token_id.")
    return torch.full((batch,), length - 1, device=logits.device)


def causal_lm_logits_and_loss(model: PreTrainedModel, hidden_states: torch.Tensor, logits_to_keep: int | torch.Tensor,
                              labels: torch.Tensor | None, vocab_size: int,
                              **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``model.lm_head`` on the positions ``logits_to_keep`` selects (the last N, every one for 0, or a tensor of
    indices) and, given ``labels``, ``model.loss_function`` on them (transformers' causal-LM loss: the labels are
    shifted inside, -100 ignored)."""
    keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
    logits = model.lm_head(hidden_states[:, keep, :])
    if labels is None:
        return logits, None
    return logits, model.loss_function(logits=logits, labels=labels, vocab_size=vocab_size, **kwargs)


# The keyword arguments of PreTrainedModel.from_pretrained (and what it forwards to the Hub client): never taken for a
# misspelt config key.
FROM_PRETRAINED_KEYS = frozenset(inspect.signature(PreTrainedModel.from_pretrained).parameters) | {
    "trust_remote_code", "attn_implementation", "experts_implementation", "dtype", "torch_dtype", "device_map",
    "max_memory", "offload_folder", "offload_buffers", "offload_state_dict", "quantization_config", "subfolder",
    "variant", "revision", "token", "cache_dir", "local_files_only", "force_download", "proxies",
    "output_loading_info", "use_safetensors", "weights_only", "key_mapping", "adapter_name", "adapter_kwargs",
    "gguf_file", "tp_plan", "tp_size", "distributed_config", "generation_config", "use_kernels", "kernel_config",
    "low_cpu_mem_usage", "from_tf", "from_flax", "code_revision", "_from_auto", "_from_pipeline", "_commit_hash"}


def check_pretrained_kwargs(model_class: type, kwargs: dict) -> None:
    """``from_pretrained(path, softmax_varient=...)``: transformers sets the keys the config has and hands the
    others to the model's ``__init__``, which fails with a bare ``TypeError``. Name the config key meant instead."""
    config_class = getattr(model_class, "config_class", None)
    if config_class is not None and not isinstance(kwargs.get("config"), (str, os.PathLike)):
        check_misspelt_keys(config_class, kwargs, known=FROM_PRETRAINED_KEYS)


def check_checkpoint_folder(path: str | os.PathLike) -> None:
    """For a local folder: fail with a clear ``OSError`` when the weights are missing, truncated or corrupt,
    before transformers starts building the model."""
    path = os.fspath(path)
    if not os.path.isdir(path) or not os.path.isfile(os.path.join(path, "config.json")):
        return
    files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    if not files:
        raise OSError(
            f"{path} holds a config.json but no weights (*.safetensors); files present: {sorted(os.listdir(path))}. "
            f"Was the save interrupted?"
        )
    for name in files:
        file = os.path.join(path, name)
        size = os.path.getsize(file)
        try:
            with open(file, "rb") as handle:
                (header_length,) = struct.unpack("<Q", handle.read(8))
                if header_length > size - 8:
                    raise ValueError(f"header length {header_length} exceeds the file size {size}")
                header = json.loads(handle.read(header_length))
            end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        except (struct.error, ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
            raise OSError(f"Weights file {file} is corrupt (not a readable safetensors file: {error}).") from error
        if 8 + header_length + end != size:
            raise OSError(
                f"Weights file {file} is truncated or corrupt: its header describes {8 + header_length + end} bytes, "
                f"the file has {size}."
            )


class HfGenPreTrainedModel(HfGenHubCardMixin, PreTrainedModel):
    """Base class of the hfgen transformers models (Llama's layout: ``base_model_prefix = "model"``); its
    ``push_to_hub`` uploads hfgen's model card (``HfGenHubCardMixin``)."""

    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _skip_keys_device_placement = ["cache"]
    _supports_sdpa = True
    _supports_attention_backend = True
    _keep_in_fp32_modules_strict = KEEP_IN_FP32  # mixture-of-experts routers (moe.py)
    # Whole-graph torch.compile and the static cache work for every family on this base (RetNet has its own): the
    # value checks that read tensors back (token-id range, mask rows, image placeholders) run only outside
    # torch.compile, and generate runs its first step, the only one with a user's prompt, eagerly.
    _can_compile_fullgraph = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        forward = cls.__dict__.get("forward")
        if forward is not None and not hasattr(forward, "__signature__"):
            # generate() inspects the forward's signature at every decoding step for models with an auto class
            # (``is_remote_code``); a stored signature makes that lookup cheap instead of a rebuild per token.
            forward.__signature__ = inspect.signature(forward)

    def __init__(self, config, *inputs, **kwargs):
        # from_pretrained(path, softmax_variant=...) sets config attributes after the config's own checks ran:
        # check how the keys fit together again before any layer is built (each family's own checks).
        config.validate_architecture()
        super().__init__(config, *inputs, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        check_pretrained_kwargs(cls, kwargs)
        if pretrained_model_name_or_path is not None:
            check_checkpoint_folder(pretrained_model_name_or_path)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, HfGenAttention):
            module.scoring_entry.init_parameters(module, std)  # (scoring.py: general W_k = identity, ...)
            if hasattr(module, "head_gate"):
                init.normal_(module.head_gate.weight, mean=0.0, std=std)
                init.zeros_(module.head_gate.bias)
        elif isinstance(module, RotaryEmbedding):
            # Non-persistent buffer: garbage after a meta-device build unless recomputed here.
            init.copy_(module.inv_freq, module.compute_inv_freq(module.inv_freq.device))
        init_moe_weights(module, std)  # the router and the 3D expert weights (nothing for other modules)
