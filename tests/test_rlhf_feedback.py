"""Feedback for the RLHF ladder (hfgen.training.rlhf_feedback): reward-model scores of batched conversations equal
the scores of each conversation alone, rendered exactly as RewardTrainer renders them; preference pairs sampled from
a policy obey the rule that labelled them and come from the policy's own seeded samples."""

from __future__ import annotations

import pytest
import torch

from hfgen.data import load_tokenizer
from hfgen.data.instructions import prompt_dataset
from hfgen.models import HfGenDecoderForCausalLM, HfGenDecoderForSequenceClassification
from hfgen.training.rlhf import chat_decoder_config
from hfgen.training.rlhf_feedback import (
    RewardModelFunction,
    sample_responses,
    sampled_preference_dataset,
    score_conversations,
)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def _has_e(completions, **kwargs):
    return [1.0 if "e" in text else 0.0 for text in completions]


def test_batched_scores_equal_each_conversation_alone(tokenizer):
    torch.manual_seed(0)
    model = HfGenDecoderForSequenceClassification(chat_decoder_config(tokenizer, hidden_size=32, num_hidden_layers=1,
                                                                      num_labels=1)).eval()
    prompts = prompt_dataset()["prompt"][:3]
    responses = ["A short one.", "A much longer answer that goes on for a while, with commas.",
                 [{"role": "assistant", "content": "Messages work too."}]]
    batched = score_conversations(model, tokenizer, prompts, responses, batch_size=3)
    for prompt, response, score in zip(prompts, responses, batched):
        content = response if isinstance(response, str) else response[0]["content"]
        text = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": content}], tokenize=False)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            alone = float(model(input_ids=ids).logits[0, 0])
        assert score == pytest.approx(alone, abs=1e-5)
    function = RewardModelFunction(model, tokenizer)
    assert function(prompts=["decoded text"] * 3, completions=responses, prompt=prompts) == pytest.approx(batched)
    with pytest.raises(ValueError, match="chat messages"):
        function(prompts=["text only"] * 3, completions=responses)
    with pytest.raises(ValueError, match="3 prompts but 2 responses"):
        score_conversations(model, tokenizer, prompts, responses[:2])


def test_sampled_pairs_obey_the_rule_and_come_from_the_policys_samples(tokenizer):
    torch.manual_seed(0)
    policy = HfGenDecoderForCausalLM(chat_decoder_config(tokenizer, hidden_size=32, num_hidden_layers=1)).eval()
    prompts = prompt_dataset().select(range(4))
    pairs = sampled_preference_dataset(policy, tokenizer, prompts, _has_e, samples_per_prompt=6, pairs_per_prompt=3,
                                       max_new_tokens=4, seed=5)
    samples = sample_responses(policy, tokenizer, prompts["prompt"], 6, 4, seed=5)
    assert len(pairs) > 0 and set(pairs.column_names) == {"prompt", "chosen", "rejected", "topic", "keyword"}
    by_topic = dict(zip(prompts["topic"], samples))
    for row in pairs:
        chosen, rejected = row["chosen"][0]["content"], row["rejected"][0]["content"]
        assert _has_e([chosen]) == [1.0] and _has_e([rejected]) == [0.0]
        assert chosen in by_topic[row["topic"]] and rejected in by_topic[row["topic"]]
        assert row["prompt"] == prompts[prompts["topic"].index(row["topic"])]["prompt"]
    assert max(pairs["topic"].count(topic) for topic in set(pairs["topic"])) <= 3
    with pytest.raises(ValueError, match="'prompt' and 'keyword' columns"):
        sampled_preference_dataset(policy, tokenizer, prompts.remove_columns("keyword"), _has_e)
    with pytest.raises(ValueError, match="samples_per_prompt must be >= 1"):
        sampled_preference_dataset(policy, tokenizer, prompts, _has_e, samples_per_prompt=0)
