"""The steps of the RLHF ladder on the embedded task, shared by ``recipes/sft.py``, ``recipes/reward_model.py`` and
``recipes/rlhf/``: instruction tuning with TRL's ``SFTTrainer``, a reward model with TRL's ``RewardTrainer`` on
``HfGenDecoderForSequenceClassification``, and an evaluation that measures a policy by the reward model *and* by
the rule the preference data was built on (:func:`hfgen.data.instructions.mentions_keyword`).

Seed 001: "The model is first trained on a dataset to establish a baseline level of performance. The model then
generates a response to a prompt ... Feedback ... is utilized to update the model's weights".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..data.instructions import mentions_keyword
from ..models import HfGenDecoderConfig, HfGenDecoderForSequenceClassification
from .ppo_core import logprobs_from_logits
from .pretrain import cpu_training_defaults
from .rlhf_feedback import score_conversations

IM_END = "<|im_end|>"


def trl_cpu_defaults() -> dict[str, Any]:
    """What TRL's configs need on a machine without CUDA (their bf16=True default fails there), and no gradient
    checkpointing (TRL turns it on; on tiny models it only costs time)."""
    defaults: dict[str, Any] = {"gradient_checkpointing": False, "report_to": "none", "save_strategy": "no"}
    defaults.update(cpu_training_defaults())
    return defaults


def chat_decoder_config(tokenizer: PreTrainedTokenizerBase, **overrides) -> HfGenDecoderConfig:
    """A decoder config for a chat model on ``tokenizer``: its vocabulary and pad id; generation ends at
    ``<|im_end|>`` (the end of an assistant turn in the ChatML template) or eos."""
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    eos = [im_end, tokenizer.eos_token_id] if im_end is not None and im_end != tokenizer.unk_token_id \
        else tokenizer.eos_token_id
    values = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=eos, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True)
    return HfGenDecoderConfig(**{**values, **overrides})


def reward_model_from(path_or_model: str | PreTrainedModel, tokenizer: PreTrainedTokenizerBase):
    """A one-score ``HfGenDecoderForSequenceClassification`` initialised from a causal-LM folder (its trunk; the
    score head starts fresh), as InstructGPT starts its reward model from the SFT model."""
    if isinstance(path_or_model, str):
        model = HfGenDecoderForSequenceClassification.from_pretrained(path_or_model, num_labels=1)
    else:
        model = HfGenDecoderForSequenceClassification(HfGenDecoderConfig(**{**path_or_model.config.to_dict(),
                                                                           "num_labels": 1}))
        model.model.load_state_dict(path_or_model.model.state_dict())
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


@dataclass
class PolicyEvaluation:
    """How a policy does on the prompts: responses, rule success, reward-model scores, KL to a reference."""

    responses: list[str]
    rule_success: float  # share of responses that name their keyword
    rule_scores: list[float]
    reward_scores: list[float] | None  # reward model score per response
    mean_reward: float | None
    kl_to_reference: float | None  # mean over responses of sum_t log pi(y_t) - log pi_ref(y_t), y ~ pi

    def as_dict(self) -> dict[str, Any]:
        return {"rule_success": self.rule_success, "mean_reward": self.mean_reward,
                "kl_to_reference": self.kl_to_reference}


@torch.no_grad()
def _response_logprob(model, ids: torch.Tensor, context: int) -> float:
    logits = model(input_ids=ids).logits[:, context - 1 : -1]
    return float(logprobs_from_logits(logits, ids[:, context:]).sum())


@torch.no_grad()
def evaluate_policy(policy: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Dataset,
                    reward_model: PreTrainedModel | None = None, reference: PreTrainedModel | None = None,
                    max_new_tokens: int = 32, seed: int = 0,
                    rule: Callable[..., list[float]] = mentions_keyword) -> PolicyEvaluation:
    """Sample one response per prompt (temperature 1, seeded, one prompt at a time so batching cannot change
    anything) and measure it.

    ``prompts`` holds ``prompt`` (chat messages) and ``keyword`` columns (:func:`prompt_dataset`). The KL is the
    sampled estimate ``sum_t log pi(y_t|.) - log pi_ref(y_t|.)`` averaged over prompts; its expectation is
    ``KL(pi || pi_ref)`` per response. The reward model scores each conversation as rendered by the chat template
    (:func:`score_conversations`, as in its training). ``rule`` scores the responses (a TRL-style reward function called with
    ``completions`` and the dataset's ``keyword`` column): :func:`mentions_keyword` or :func:`one_sentence`.
    """
    if len(prompts) == 0 or not {"prompt", "keyword"} <= set(prompts.column_names):
        raise ValueError(f"prompts must be a non-empty dataset with 'prompt' and 'keyword' columns; got "
                         f"{len(prompts)} rows with columns {prompts.column_names}.")
    policy.eval()
    device = next(policy.parameters()).device
    stop = policy.generation_config.eos_token_id
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    responses, kls, scores = [], [], []
    for row in prompts:
        text = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
        output = policy.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=0,
                                 top_p=1.0, temperature=1.0, max_new_tokens=max_new_tokens, eos_token_id=stop,
                                 pad_token_id=tokenizer.pad_token_id)
        response_ids = output[:, ids.shape[1]:]
        responses.append(tokenizer.decode(response_ids[0], skip_special_tokens=True))
        if reference is not None and response_ids.shape[1]:
            kls.append(_response_logprob(policy, output, ids.shape[1]) - _response_logprob(reference, output,
                                                                                            ids.shape[1]))
    torch.random.set_rng_state(generator_state)
    if reward_model is not None:
        scores = score_conversations(reward_model, tokenizer, prompts["prompt"], responses)
    rule = [float(score) for score in rule(completions=responses, keyword=prompts["keyword"])]
    return PolicyEvaluation(
        responses=responses, rule_success=sum(rule) / len(rule), rule_scores=rule,
        reward_scores=scores or None, mean_reward=sum(scores) / len(scores) if scores else None,
        kl_to_reference=sum(kls) / len(kls) if kls else None)


def win_rate(scores: list[float], baseline_scores: list[float]) -> float:
    """Share of prompts where ``scores`` beat ``baseline_scores`` (ties count one half)."""
    if len(scores) != len(baseline_scores) or not scores:
        raise ValueError(f"win_rate needs two equally long, non-empty score lists; got {len(scores)} and "
                         f"{len(baseline_scores)}.")
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(scores, baseline_scores)) / len(scores)
