"""PPO's keyed sampling (hfgen.training.ppo_sampling): Gumbel-max with noise keyed by (seed, prompt index, step)
samples from softmax(logits / temperature) -- a chi-square test over many keys -- and a prompt's rollout is the same
whichever batch (so whichever process) holds it."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from scipy.stats import chisquare

from hfgen.models import HfGenDecoderForCausalLMWithValueHead
from hfgen.training.ppo import PPOTrainer
from hfgen.training.ppo_sampling import KeyedGumbelNoise
from test_ppo import WORDS, ppo_args, target_share, tiny_config, word_tokenizer


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_keyed_gumbel_max_samples_the_softmax(temperature):
    """argmax(logits / T + keyed Gumbel noise) over 20,000 keys: the counts of each token against
    softmax(logits / T) written out, Pearson's chi-square (p > 1e-3; measured: a wrong noise law fails by far,
    uniform noise gives p = 0.0 at both temperatures, the noise without the temperature at T = 0.6 too)."""
    logits = torch.tensor([[1.5, 0.2, -0.7, 0.9, 0.0, -2.0]])
    weights = torch.exp(logits[0].double() / temperature)
    probabilities = weights / weights.sum()
    draws = 20_000
    noise = KeyedGumbelNoise(seed=3, keys=range(draws), step=5, prompt_width=4, temperature=temperature)
    choices = noise(torch.zeros(draws, 6, dtype=torch.long), logits.expand(draws, -1)).argmax(-1)
    counts = torch.bincount(choices, minlength=logits.shape[1]).double()
    assert chisquare(counts.numpy(), (probabilities * draws).numpy()).pvalue > 1e-3
    # the noise is a function of the key and the position: the same row in another batch, and another position
    again = KeyedGumbelNoise(seed=3, keys=[7], step=5, prompt_width=4, temperature=temperature)
    torch.testing.assert_close(again(torch.zeros(1, 6, dtype=torch.long), logits)[0],
                               noise(torch.zeros(draws, 6, dtype=torch.long), logits.expand(draws, -1))[7])
    assert not torch.equal(again(torch.zeros(1, 7, dtype=torch.long), logits), again(torch.zeros(1, 6,
                                                                                              dtype=torch.long), logits))


def test_rollouts_are_the_same_whichever_batch_holds_the_prompt(tmp_path):
    """The rollout of 8 prompts of different lengths in one batch, and of its two halves each collated alone (other
    padding: what two processes hold): the same responses and rewards, and the same log-probs up to float noise."""
    torch.manual_seed(0)
    letters = WORDS[2:]
    rows = [" ".join(letters[(3 * i + j) % len(letters)] for j in range(1 + i % 5)) for i in range(8)]
    trainer = PPOTrainer(args=ppo_args(tmp_path, per_device_train_batch_size=8, num_mini_batches=1),
                         processing_class=word_tokenizer(), model=HfGenDecoderForCausalLMWithValueHead(tiny_config()),
                         train_dataset=Dataset.from_dict({"prompt": rows}), reward_funcs=target_share)
    dataset = [trainer.train_dataset[i] for i in range(8)]
    whole = trainer._rollout(trainer.model, trainer._collate(dataset))
    halves = [trainer._rollout(trainer.model, trainer._collate(dataset[start:start + 4])) for start in (0, 4)]
    width = whole.context_length
    responses = torch.cat([half.query_response[:, half.context_length:] for half in halves])
    assert torch.equal(responses, whole.query_response[:, width:])
    assert len(set(map(tuple, responses.tolist()))) > 4  # sampled, not one greedy answer
    assert torch.equal(torch.cat([half.scores for half in halves]), whole.scores)
    torch.testing.assert_close(torch.cat([half.logprobs for half in halves]), whole.logprobs)
    trainer.state.global_step = 1  # the next step draws other responses for the same prompts
    assert not torch.equal(trainer._rollout(trainer.model, trainer._collate(dataset)).query_response, whole.query_response)


def test_keyed_noise_bad_input():
    with pytest.raises(ValueError, match="temperature must be > 0, got 0"):
        KeyedGumbelNoise(seed=0, keys=[0], step=0, prompt_width=1, temperature=0)
    with pytest.raises(ValueError, match="non-negative.*keys=\\[-1\\]"):
        KeyedGumbelNoise(seed=0, keys=[-1], step=0, prompt_width=1)
    with pytest.raises(ValueError, match="1 keys for a batch of 2 rows"):
        KeyedGumbelNoise(seed=0, keys=[0], step=0, prompt_width=1)(torch.zeros(2, 3, dtype=torch.long),
                                                                   torch.zeros(2, 5))
