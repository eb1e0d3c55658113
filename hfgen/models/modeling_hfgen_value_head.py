"""A decoder with both a language-modelling head and a scalar value head: the actor-critic model of PPO (seed 001,
"Feedback Tuning ... PPO = proximal policy optimization").

The policy (``lm_head``) and the value function (``v_head``) share the decoder trunk, as in TRL's former
``AutoModelForCausalLMWithValueHead``. Parameter names are the causal LM's plus ``v_head.*``, so a trained
``HfGenDecoderForCausalLM`` (or Llama) checkpoint loads into it -- only the value head starts fresh -- and the
policy part of a saved value-head folder loads back as a plain causal LM.

Code on the Hub: ``save_pretrained`` copies this file and writes ``auto_map["AutoModelForCausalLM"]`` pointing here,
so ``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`` returns this class where hfgen is not
installed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.utils import ModelOutput, can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg

from .configuration_hfgen_decoder import HfGenDecoderConfig
from .input_checks import HfGenGenerationMixin
from .kv_cache import PreallocatedCacheMixin
from .modeling_common import causal_lm_logits_and_loss
from .modeling_hfgen_decoder import HfGenDecoderModel, HfGenDecoderPreTrainedModel
# The trunk may hold experts: transformers offers experts_implementation only if this file names
# `@use_experts_implementation` (as the decoder's file does; moe.py's decorator).


@dataclass
class CausalLMOutputWithValue(ModelOutput):
    """Causal-LM output plus one value estimate per position.

    Args:
        loss: language-modelling loss when ``labels`` were given.
        logits: ``[batch, kept positions, vocab]`` next-token scores.
        value: ``[batch, positions]`` the value head's estimate ``V(s_t)`` of the state after token t. (Named
            ``value``, not ``values``: a ModelOutput is a dict, and a ``values`` field would shadow ``dict.values``,
            which DDP calls on every output.)
        cache: the KV cache when ``use_cache``.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    value: torch.FloatTensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class HfGenValueHead(nn.Module):
    """``V(h) = w^T dropout(h) + b``: one scalar per hidden state."""

    def __init__(self, config: HfGenDecoderConfig):
        super().__init__()
        self.dropout = nn.Dropout(getattr(config, "value_head_dropout", 0.0))
        self.summary = nn.Linear(config.hidden_size, 1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # The head runs in float32 whatever the trunk's dtype: values are regression targets of the squared loss.
        hidden_states = self.dropout(hidden_states).to(self.summary.weight.dtype)
        return self.summary(hidden_states).squeeze(-1)


class HfGenDecoderForCausalLMWithValueHead(PreallocatedCacheMixin, HfGenDecoderPreTrainedModel, HfGenGenerationMixin):
    """``HfGenDecoderForCausalLM`` plus ``v_head`` (:class:`HfGenValueHead`): ``forward`` returns
    :class:`CausalLMOutputWithValue` with ``logits`` and per-position ``value``; ``generate`` works as for the
    causal LM."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    # save_pretrained writes auto_map["AutoModelForCausalLM"] = this class (register_for_auto_class's attribute).
    _auto_class = "AutoModelForCausalLM"

    def __init__(self, config: HfGenDecoderConfig):
        super().__init__(config)
        self.model = HfGenDecoderModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.v_head = HfGenValueHead(config)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, HfGenValueHead):
            # Small values at the start: the first advantages are then driven by the rewards, not by noise.
            init.normal_(module.summary.weight, mean=0.0, std=self.config.initializer_range)
            init.zeros_(module.summary.bias)

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")  # transformers >= 5.24 calls it cache
    @can_return_tuple
    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, cache: Cache | None = None,
                inputs_embeds: torch.Tensor | None = None, labels: torch.LongTensor | None = None,
                use_cache: bool | None = None, logits_to_keep: int | torch.Tensor = 0,
                **kwargs) -> CausalLMOutputWithValue:
        """As ``HfGenDecoderForCausalLM.forward``; ``value`` covers every position (``logits_to_keep`` trims only
        the logits)."""
        outputs: BaseModelOutputWithPast = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            cache=cache, inputs_embeds=inputs_embeds, use_cache=use_cache, **kwargs)
        hidden_states = outputs.last_hidden_state
        logits, loss = causal_lm_logits_and_loss(self, hidden_states, logits_to_keep, labels, self.config.vocab_size,
                                                 **kwargs)
        value = self.v_head(hidden_states)
        return CausalLMOutputWithValue(loss=loss, logits=logits, value=value, cache=outputs.cache,
                                       hidden_states=outputs.hidden_states, attentions=outputs.attentions)
