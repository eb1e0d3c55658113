"""TRL's DPO, GRPO and RLOO trainers on hfgen decoders: DPO on the embedded preference pairs starts at exactly
log 2 (policy = reference) and lowers its loss; GRPO and RLOO raise a reward with a known optimum (share of one
target token). The notes' traps are avoided as documented: bf16 off on CPU, an explicit reference model for DPO,
RLOO given a saved folder (it reloads its reference from the path)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from trl import DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

from hfgen import HfGenDecoderConfig, HfGenDecoderForCausalLM
from hfgen.data import load_tokenizer
from hfgen.data.instructions import preference_dataset
from test_ppo import prompts, target_share, tiny_config, word_tokenizer

CPU = dict(bf16=False, use_cpu=not torch.cuda.is_available(), gradient_checkpointing=False, report_to="none",
           save_strategy="no", disable_tqdm=True, logging_steps=1, seed=0)


def _rewards(trainer) -> list[float]:
    return [entry["reward"] for entry in trainer.state.log_history if "reward" in entry]


def test_dpo_on_embedded_preferences_starts_at_log2_and_learns(tmp_path):
    tokenizer = load_tokenizer()
    torch.manual_seed(0)
    config = HfGenDecoderConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    model = HfGenDecoderForCausalLM(config)
    pairs = preference_dataset(max_response_chars=120).select(range(8))
    args = DPOConfig(output_dir=str(tmp_path), max_steps=8, per_device_train_batch_size=8, learning_rate=5e-3,
                     max_length=96, beta=0.1, **CPU)
    trainer = DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=args, train_dataset=pairs,
                         processing_class=tokenizer)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    # -log sigmoid(beta * 0) while the policy still equals the reference.
    assert losses[0] == pytest.approx(math.log(2), abs=1e-4)
    assert losses[-1] < 0.5 * math.log(2), losses  # one batch of 8 pairs, seen 8 times
    margins = [entry["rewards/margins"] for entry in trainer.state.log_history if "rewards/margins" in entry]
    assert margins[-1] > margins[0]


def _grpo_like(trainer_class, config_class, tmp_path, model, steps: int):
    args = config_class(output_dir=str(tmp_path / trainer_class.__name__), max_steps=steps,
                        per_device_train_batch_size=16, num_generations=4, max_completion_length=8,
                        learning_rate=2e-2, temperature=1.0, beta=0.0, **CPU)
    trainer = trainer_class(model=model, reward_funcs=target_share, args=args, train_dataset=prompts(),
                            processing_class=word_tokenizer())
    trainer.train()
    return _rewards(trainer)


def test_grpo_raises_the_reward(tmp_path):
    torch.manual_seed(0)
    rewards = _grpo_like(GRPOTrainer, GRPOConfig, tmp_path, HfGenDecoderForCausalLM(tiny_config(eos_token_id=None)),
                         steps=20)
    # Random policy: about 1/16; the optimum is 1.
    assert sum(rewards[:3]) / 3 < 0.2 and sum(rewards[-3:]) / 3 > 0.4, rewards


def test_rloo_raises_the_reward_from_a_saved_folder(tmp_path):
    torch.manual_seed(0)
    HfGenDecoderForCausalLM(tiny_config(eos_token_id=None)).save_pretrained(tmp_path / "base")
    word_tokenizer().save_pretrained(tmp_path / "base")
    rewards = _grpo_like(RLOOTrainer, RLOOConfig, tmp_path, str(tmp_path / "base"), steps=20)
    assert sum(rewards[:3]) / 3 < 0.2 and sum(rewards[-3:]) / 3 > 0.4, rewards


@pytest.mark.parametrize("softcap", [None, 5.0])
def test_plain_logprobs_match_trls_chunked_kernel(softcap):
    """hfgen.training.trl_cpu.PlainLogProbFunction against TRL's own ChunkedLogProbFunction: every output and the
    gradients of log-probs + entropy, on random tensors with several vocabulary tiles."""
    from trl.kernels import ChunkedLogProbFunction

    from hfgen.training.trl_cpu import OPTIONAL_OUTPUTS, PlainLogProbFunction

    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(7, 16, generator=generator, dtype=torch.float64)
    weight = torch.randn(50, 16, generator=generator, dtype=torch.float64)
    bias = torch.randn(50, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, 50, (7,), generator=generator)
    results = []
    for function in (ChunkedLogProbFunction, PlainLogProbFunction):
        h, w, b = (x.clone().requires_grad_(True) for x in (hidden, weight, bias))
        out = function.apply(h, w, b, targets, 0.7, 16, softcap, 1.3, OPTIONAL_OUTPUTS)
        (out[0].sum() + 0.5 * out[1].sum()).backward()
        results.append(([x.detach().double() for x in out[:4]] + [out[4]], [h.grad, w.grad, b.grad]))
    (trl_out, trl_grads), (plain_out, plain_grads) = results
    for name, a, b in zip(("log_probs", "entropy", "log_sum_sq_probs", "mean_logits"), trl_out, plain_out):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5, msg=name)
    assert torch.equal(trl_out[4], plain_out[4])
    for a, b in zip(trl_grads, plain_grads):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
