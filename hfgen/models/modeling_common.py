"""What every hfgen transformers model shares: the base ``PreTrainedModel``, weight initialisation of the variant
parameters, input checks that fail early with a clear message, and checkpoint checks before loading."""

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
from .model_card import HfGenHubCardMixin
from .positions import RotaryEmbedding
from .variants import validate_attention_config


def check_inputs(config, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None,
                 attention_mask: torch.Tensor | None, past_length: int) -> None:
    """Raise a ``ValueError`` for token ids outside the vocabulary or a mask that does not fit the input, before
    any state (cache, weights) is touched -- instead of an index error deep inside torch, or silent garbage."""
    if input_ids is not None:
        if input_ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise ValueError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}.")
        if input_ids.numel() and not torch.compiler.is_compiling():
            low, high = torch.stack(torch.aminmax(input_ids)).tolist()  # one kernel, one device sync
            if low < 0 or high >= config.vocab_size:
                raise ValueError(
                    f"Token ids must lie in [0, {config.vocab_size}) (vocab_size); got ids from {low} to {high}. "
                    f"Was the input encoded with a different tokenizer?"
                )
    reference = input_ids if input_ids is not None else inputs_embeds
    batch, length = reference.shape[:2]
    if attention_mask is None:
        return
    if attention_mask.dim() == 2:
        expected = (batch, past_length + length)
        if tuple(attention_mask.shape) != expected:
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}, expected {expected}: one row per sequence "
                f"and one column per token seen so far ({past_length} cached + {length} new)."
            )
    elif attention_mask.dim() == 4:
        if attention_mask.shape[0] not in (1, batch) or attention_mask.shape[2] != length:
            raise ValueError(
                f"A 4D attention_mask must have shape [batch|1, 1|heads, {length}, keys]; got "
                f"{tuple(attention_mask.shape)} for a batch of {batch}."
            )
    else:
        raise ValueError(f"attention_mask must be 2D [batch, keys] or 4D, got {attention_mask.dim()} dimensions.")


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
    _can_compile_fullgraph = False  # the token-id range check syncs with the device outside torch.compile

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        forward = cls.__dict__.get("forward")
        if forward is not None and not hasattr(forward, "__signature__"):
            # generate() inspects the forward's signature at every decoding step for models with an auto class
            # (``is_remote_code``); a stored signature makes that lookup cheap instead of a rebuild per token.
            forward.__signature__ = inspect.signature(forward)

    def __init__(self, config, *inputs, **kwargs):
        # from_pretrained(path, softmax_variant=...) sets config attributes after the config's own checks ran:
        # check again before any layer is built, or a misspelt variant would silently run the default math.
        validate_attention_config(config)
        super().__init__(config, *inputs, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        if pretrained_model_name_or_path is not None:
            check_checkpoint_folder(pretrained_model_name_or_path)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, HfGenAttention):
            if hasattr(module, "score_weight"):  # general scoring starts as plain dot product
                init.copy_(module.score_weight, torch.eye(module.head_dim).expand_as(module.score_weight))
            if hasattr(module, "score_vector"):
                init.normal_(module.score_vector, mean=0.0, std=std)
            if hasattr(module, "head_gate"):
                init.normal_(module.head_gate.weight, mean=0.0, std=std)
                init.zeros_(module.head_gate.bias)
        elif isinstance(module, RotaryEmbedding):
            # Non-persistent buffer: garbage after a meta-device build unless recomputed here.
            init.copy_(module.inv_freq, module.compute_inv_freq(module.inv_freq.device))
