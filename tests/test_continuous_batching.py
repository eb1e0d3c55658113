"""Continuous batching (transformers' ``generate_batch`` / ``ContinuousBatchingManager``: paged KV cache, every
request's tokens packed into one row per step) on the hfgen decoder: each request's tokens equal its own greedy
``generate``, and equal transformers' Llama in the same mode with the same weights. Variants whose bias depends on
token distances (relative bias, ALiBi) cannot read them from the packed row: they fail with a clear error."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import ContinuousBatchingConfig, GenerationConfig, LlamaConfig, LlamaForCausalLM

from conftest import LLAMA_KEYS, build, tiny_config
from hfgen import HfGenDecoderForCausalLM

NEW_TOKENS = 8
LENGTHS = (3, 11, 6, 17, 1)


@pytest.fixture(autouse=True)
def _quiet_manager():
    # the manager logs every failed request at ERROR; the refusal test expects failures
    logging.getLogger("ContinuousBatchingLogger").setLevel(logging.CRITICAL)


def prompts() -> list[list[int]]:
    generator = torch.Generator().manual_seed(3)
    return [torch.randint(1, LLAMA_KEYS["vocab_size"], (n,), generator=generator).tolist() for n in LENGTHS]


def greedy(**overrides) -> GenerationConfig:
    return GenerationConfig(**{"max_new_tokens": NEW_TOKENS, "do_sample": False, "eos_token_id": None,
                               "pad_token_id": 0, **overrides})


def batched(model, inputs: list[list[int]], config: GenerationConfig) -> list:
    # A cache sized for these prompts: left to itself the manager sizes it from the machine's memory, and filling
    # its static tensors then takes ~20 s on a CPU.
    paged = ContinuousBatchingConfig(page_size=16, num_blocks=16, max_batch_tokens=64)
    results = model.generate_batch(inputs, generation_config=config, continuous_batching_config=paged)
    return [results[f"req_{i}"] for i in range(len(inputs))]


def alone(model, prompt: list[int], config: GenerationConfig) -> list[int]:
    return model.generate(torch.tensor([prompt]), generation_config=config)[0, len(prompt):].tolist()


@pytest.mark.parametrize("overrides", [
    {}, {"softmax_variant": "off_by_one"}, {"softmax_variant": "adaptive_temperature"},
    {"softmax_variant": "clipped"}, {"attention_scoring": "additive"}, {"attention_gate": True},
    {"position_embedding": "learned"}, {"num_experts": 4, "num_experts_per_tok": 2},
], ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_each_request_equals_its_own_generate(overrides):
    model = build(HfGenDecoderForCausalLM, tiny_config(**overrides))
    inputs, config = prompts(), greedy()
    outputs = batched(model, inputs, config)
    assert [o.error for o in outputs] == [None] * len(inputs)
    assert [o.generated_tokens for o in outputs] == [alone(model, p, config) for p in inputs]


def test_eager_attention_runs_as_paged_eager_and_stops_at_eos():
    model = build(HfGenDecoderForCausalLM, tiny_config(softmax_variant="off_by_one"), attn_implementation="eager")
    inputs = prompts()
    free = batched(model, inputs, greedy())
    eos = free[1].generated_tokens[3]  # a token request 1 produces: it must stop there, the others wherever it occurs
    config = greedy(eos_token_id=eos)
    outputs = batched(model, inputs, config)
    assert [o.generated_tokens for o in outputs] == [alone(model, p, config) for p in inputs]
    assert outputs[1].generated_tokens[-1] == eos and len(outputs[1].generated_tokens) <= 4


def test_same_tokens_as_llama_in_the_same_mode():
    llama = build(LlamaForCausalLM, LlamaConfig(**LLAMA_KEYS))
    ours = build(HfGenDecoderForCausalLM, tiny_config(), seed=1)
    ours.load_state_dict(llama.state_dict(), strict=True)
    inputs, config = prompts(), greedy()
    theirs = [o.generated_tokens for o in batched(llama, inputs, config)]
    assert [o.generated_tokens for o in batched(ours, inputs, config)] == theirs
    assert theirs == [alone(llama, p, config) for p in inputs]


@pytest.mark.parametrize("position_embedding", ["alibi", "relative_bias"])
def test_distance_biases_are_refused_with_a_clear_error(position_embedding):
    model = build(HfGenDecoderForCausalLM, tiny_config(position_embedding=position_embedding))
    outputs = batched(model, prompts()[:2], greedy())
    for output in outputs:
        assert output.generated_tokens == []
        assert f"position_embedding={position_embedding!r} cannot run with continuous batching" in output.error
