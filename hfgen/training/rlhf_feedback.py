"""Feedback for the RLHF ladder: preference pairs from the policy's own sampled responses, labelled by a rule, and
a reward model scoring conversations exactly as ``RewardTrainer`` saw them.

Seed 003, "Generating training data with LLMs": "preference pairs from response comparisons" -- here the responses
to compare are sampled from the SFT model itself (so the reward model learns on the distribution PPO will show it)
and the comparison is a rule anyone can check (e.g. :func:`hfgen.data.instructions.one_sentence`). Seed 001,
"Feedback Tuning": "Different outputs from a prompt are ranked and the rankings (rewards) are used to prioritize how
the model generates responses".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase


def _content(completion) -> str:
    if isinstance(completion, list):  # conversational: [{"role": "assistant", "content": ...}]
        return " ".join(message.get("content", "") for message in completion)
    return str(completion)


@torch.no_grad()
def score_conversations(reward_model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                        prompts: Sequence[list[dict]], responses: Sequence, batch_size: int = 32) -> list[float]:
    """The reward model's score of each (prompt messages, response) conversation, rendered by the tokenizer's chat
    template as ``RewardTrainer`` renders its pairs (so a response scores the same here as in training, whether it
    stopped or was cut off by a length limit). ``responses`` are texts or assistant-message lists."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses.")
    reward_model.eval()
    texts = [tokenizer.apply_chat_template(list(prompt) + [{"role": "assistant", "content": _content(response)}],
                                           tokenize=False) for prompt, response in zip(prompts, responses)]
    scores: list[float] = []
    side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    try:
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start : start + batch_size], add_special_tokens=False, padding=True,
                              return_tensors="pt").to(reward_model.device)
            scores.extend(reward_model(**batch).logits[:, 0].float().tolist())
    finally:
        tokenizer.padding_side = side
    return scores


class RewardModelFunction:
    """A reward model as a TRL-style reward function ``f(prompts=..., completions=..., **columns)``: scores with
    :func:`score_conversations`. The prompt messages are taken from the dataset's ``prompt`` column when the caller
    passes it (hfgen's PPOTrainer decodes ``prompts`` to text but passes the columns), else from ``prompts``
    (TRL's GRPO passes the messages)."""

    def __init__(self, reward_model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, batch_size: int = 32):
        self.reward_model, self.tokenizer, self.batch_size = reward_model, tokenizer, batch_size
        self.__name__ = "reward_model"

    def __call__(self, prompts=None, completions=None, prompt=None, **kwargs) -> list[float]:
        messages = prompt if prompt is not None else prompts
        if messages is None or completions is None or not all(isinstance(m, list) for m in messages):
            raise ValueError("RewardModelFunction needs the prompts as chat messages (a 'prompt' column of message "
                             "lists) and the completions.")
        return score_conversations(self.reward_model, self.tokenizer, messages, completions, self.batch_size)


@torch.no_grad()
def sample_responses(policy: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[list[dict]],
                     samples_per_prompt: int, max_new_tokens: int, seed: int = 0) -> list[list[str]]:
    """``samples_per_prompt`` responses per prompt (chat messages), sampled at temperature 1 (no top-k / top-p),
    decoded without special tokens; seeded, and the global random state is restored afterwards."""
    policy.eval()
    device = next(policy.parameters()).device
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        out = []
        for prompt in prompts:
            text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
            generated = policy.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=0,
                                        top_p=1.0, temperature=1.0, max_new_tokens=max_new_tokens,
                                        num_return_sequences=samples_per_prompt,
                                        eos_token_id=policy.generation_config.eos_token_id,
                                        pad_token_id=tokenizer.pad_token_id)
            out.append(tokenizer.batch_decode(generated[:, ids.shape[1]:], skip_special_tokens=True))
    finally:
        torch.random.set_rng_state(state)
    return out


def sampled_preference_dataset(policy: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Dataset,
                               rule: Callable[..., list[float]], samples_per_prompt: int = 8,
                               pairs_per_prompt: int = 4, max_new_tokens: int = 32, seed: int = 0) -> Dataset:
    """Preference pairs from comparisons of the policy's own responses, labelled by ``rule``.

    For each prompt, ``samples_per_prompt`` responses are sampled (:func:`sample_responses`) and scored by
    ``rule(completions=..., keyword=...)``; distinct responses the rule accepts are paired with distinct ones it
    rejects, cycling through both lists, up to ``pairs_per_prompt`` pairs. Prompts whose samples all pass or all fail
    give no pair. Returns TRL's conversational preference format (``prompt``, ``chosen``, ``rejected``) plus the
    prompts' other columns (``topic``, ``keyword``).
    """
    if len(prompts) == 0 or not {"prompt", "keyword"} <= set(prompts.column_names):
        raise ValueError(f"prompts must be a non-empty dataset with 'prompt' and 'keyword' columns; got "
                         f"{len(prompts)} rows with columns {prompts.column_names}.")
    for name, value in (("samples_per_prompt", samples_per_prompt), ("pairs_per_prompt", pairs_per_prompt),
                        ("max_new_tokens", max_new_tokens)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}.")
    samples = sample_responses(policy, tokenizer, prompts["prompt"], samples_per_prompt, max_new_tokens, seed)
    extra = [name for name in prompts.column_names if name != "prompt"]
    rows: dict[str, list] = {"prompt": [], "chosen": [], "rejected": [], **{name: [] for name in extra}}
    for index, responses in enumerate(samples):
        keyword = prompts[index]["keyword"]
        scores = rule(completions=responses, keyword=[keyword] * len(responses))
        good = list(dict.fromkeys(r for r, s in zip(responses, scores) if s > 0.5))
        bad = list(dict.fromkeys(r for r, s in zip(responses, scores) if s <= 0.5))
        if not good or not bad:
            continue
        for k in range(min(pairs_per_prompt, max(len(good), len(bad)))):
            rows["prompt"].append(prompts[index]["prompt"])
            rows["chosen"].append([{"role": "assistant", "content": good[k % len(good)]}])
            rows["rejected"].append([{"role": "assistant", "content": bad[k % len(bad)]}])
            for name in extra:
                rows[name].append(prompts[index][name])
    return Dataset.from_dict(rows)
