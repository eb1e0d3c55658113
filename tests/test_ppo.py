"""hfgen.training.ppo end to end on a task with a known optimum (reward = share of one target token in the
response, best value 1), the value-head model's save/load paths, PEFT policies, reward models, bad input, and a
real two-process run under torchrun."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, TrainerCallback

from hfgen.models import (
    HfGenDecoderConfig,
    HfGenDecoderForCausalLM,
    HfGenDecoderForCausalLMWithValueHead,
    HfGenDecoderForSequenceClassification,
)
from hfgen.training.ppo import PPOConfig, PPOTrainer

WORDS = ["<pad>", "<eos>"] + list("abcdefghijklmn")
TARGET = "a"


def word_tokenizer() -> PreTrainedTokenizerFast:
    """16 tokens, one per letter: small enough that a random policy samples the target token often."""
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<pad>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>")


def tiny_config(**overrides) -> HfGenDecoderConfig:
    return HfGenDecoderConfig(**{**dict(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                        max_position_embeddings=64, pad_token_id=0, eos_token_id=1), **overrides})


def target_share(prompts, completions, completion_ids, **columns) -> list[float]:
    target = WORDS.index(TARGET)
    return [sum(t == target for t in ids) / max(len(ids), 1) for ids in completion_ids]


def prompts(count: int = 64, seed: int = 0) -> Dataset:
    generator = torch.Generator().manual_seed(seed)
    letters = torch.randint(2, len(WORDS), (count, 4), generator=generator)
    return Dataset.from_dict({"prompt": [" ".join(WORDS[i] for i in row) for row in letters.tolist()]})


def ppo_args(tmp_path, **overrides) -> PPOConfig:
    values = dict(output_dir=str(tmp_path / "ppo"), per_device_train_batch_size=16, num_mini_batches=2,
                  num_ppo_epochs=4, max_steps=3, learning_rate=3e-3, response_length=8, logging_steps=1,
                  kl_coef=0.01, disable_tqdm=True, seed=0)
    return PPOConfig(**{**values, **overrides})


class Recorder(TrainerCallback):
    def __init__(self):
        self.events = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.events.append("train_begin")

    def on_step_end(self, args, state, control, **kwargs):
        self.events.append("step_end")

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.events.append("log")

    def on_train_end(self, args, state, control, **kwargs):
        self.events.append("train_end")


def _scores(trainer) -> list[float]:
    return [entry["score"] for entry in trainer.state.log_history if "score" in entry]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("ppo_run")
    torch.manual_seed(0)
    model = HfGenDecoderForCausalLMWithValueHead(tiny_config())
    recorder = Recorder()
    trainer = PPOTrainer(args=ppo_args(tmp_path, max_steps=16), processing_class=word_tokenizer(), model=model,
                         train_dataset=prompts(), reward_funcs=target_share, callbacks=[recorder])
    trainer.train()
    return trainer, recorder, tmp_path


def test_reward_rises_towards_the_known_optimum(trained):
    trainer, _, _ = trained
    scores = _scores(trainer)
    assert len(scores) == 16
    # A random policy over 16 tokens samples the target about 1/16 of the time; the optimum is 1.
    first, last = sum(scores[:3]) / 3, sum(scores[-3:]) / 3
    assert first < 0.2 and last > 0.6, scores
    # The greedy policy now answers with the target token.
    tokenizer = word_tokenizer()
    prompt = tokenizer("b c d e", return_tensors="pt")
    with torch.no_grad():
        output = trainer.model.generate(**prompt, max_new_tokens=8, do_sample=False, eos_token_id=None)
    assert target_share(None, None, [output[0, 4:].tolist()])[0] >= 0.75


def test_kl_starts_at_zero_and_grows_with_the_policy(trained):
    trainer, _, _ = trained
    kls = [entry["objective/kl"] for entry in trainer.state.log_history if "objective/kl" in entry]
    assert kls[0] == pytest.approx(0.0, abs=1e-5)  # step 1 samples from the reference itself
    assert kls[-1] > 1.0  # moving to the target token costs KL against the frozen reference


def test_callbacks_logging_and_save_model(trained, tmp_path):
    trainer, recorder, _ = trained
    assert recorder.events[0] == "train_begin" and recorder.events[-1] == "train_end"
    assert recorder.events.count("step_end") == 16 and recorder.events.count("log") == 17  # 16 steps + summary
    entry = trainer.state.log_history[0]
    for key in ("objective/kl", "objective/entropy", "loss/policy_loss", "loss/value_loss", "policy/clipfrac",
                "objective/kl_coef", "time/rollout_s", "episode"):
        assert key in entry
    trainer.save_model(str(tmp_path / "saved"))
    reloaded = HfGenDecoderForCausalLMWithValueHead.from_pretrained(tmp_path / "saved").eval()
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        expected = trainer.model.eval()(input_ids=ids)
        got = reloaded(input_ids=ids)
    torch.testing.assert_close(got.logits, expected.logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(got.value, expected.value, rtol=0, atol=1e-6)


def _value_head_folder(tmp_path):
    torch.manual_seed(0)
    causal = HfGenDecoderForCausalLM(tiny_config()).eval()
    causal.save_pretrained(tmp_path / "causal")
    with_value = HfGenDecoderForCausalLMWithValueHead.from_pretrained(tmp_path / "causal").eval()
    with_value.save_pretrained(tmp_path / "value")
    return causal, with_value, tmp_path / "value"


def test_value_head_model_loads_causal_lm_checkpoints_and_reloads(tmp_path):
    causal, with_value, folder = _value_head_folder(tmp_path)
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForCausalLM"] == "modeling_hfgen_value_head.HfGenDecoderForCausalLMWithValueHead"
    assert (folder / "modeling_hfgen_value_head.py").is_file() and (folder / "modeling_hfgen_decoder.py").is_file()
    reloaded = HfGenDecoderForCausalLMWithValueHead.from_pretrained(folder).eval()
    with torch.no_grad():
        # The causal LM's weights carry over unchanged; only the value head is new.
        torch.testing.assert_close(with_value(input_ids=ids).logits, causal(input_ids=ids).logits, rtol=0, atol=0)
        expected, got = with_value(input_ids=ids), reloaded(input_ids=ids)
    torch.testing.assert_close(got.logits, expected.logits, rtol=0, atol=0)
    torch.testing.assert_close(got.value, expected.value, rtol=0, atol=0)
    assert expected.value.shape == ids.shape


@pytest.mark.slow
def test_value_head_folder_loads_without_hfgen(tmp_path):
    _, with_value, folder = _value_head_folder(tmp_path)
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    torch.save(ids, tmp_path / "ids.pt")
    with torch.no_grad():
        expected = with_value(input_ids=ids)
    # A fresh interpreter in which hfgen cannot be imported: only the folder's own code can serve.
    script = textwrap.dedent(f"""
        import sys
        sys.modules["hfgen"] = None
        import torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        assert type(model).__name__ == "HfGenDecoderForCausalLMWithValueHead", type(model)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        with torch.no_grad():
            out = model(input_ids=torch.load({str(tmp_path / 'ids.pt')!r}))
        torch.save((out.logits, out.value), {str(tmp_path / 'out.pt')!r})
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    logits, value = torch.load(tmp_path / "out.pt")
    torch.testing.assert_close(logits, expected.logits, rtol=0, atol=0)
    torch.testing.assert_close(value, expected.value, rtol=0, atol=0)


def test_peft_policy_reference_is_the_model_without_adapters(tmp_path):
    from peft import LoraConfig, get_peft_model

    from hfgen.training.peft_defaults import default_target_modules

    torch.manual_seed(0)
    base = HfGenDecoderForCausalLMWithValueHead(tiny_config())
    original = copy.deepcopy(base).eval()
    policy = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, modules_to_save=["v_head"],
                                             target_modules=default_target_modules(base)))
    trainer = PPOTrainer(args=ppo_args(tmp_path, max_steps=3), processing_class=word_tokenizer(), model=policy,
                         train_dataset=prompts(), reward_funcs=target_share)
    assert trainer.ref_model is None
    trainer.train()
    kls = [entry["objective/kl"] for entry in trainer.state.log_history if "objective/kl" in entry]
    assert kls[0] == pytest.approx(0.0, abs=1e-5)  # LoRA starts as the identity
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    with torch.no_grad():
        trained_logits = policy.eval()(input_ids=ids).logits
        with policy.disable_adapter():
            reference_logits = policy(input_ids=ids).logits
        torch.testing.assert_close(reference_logits, original(input_ids=ids).logits, rtol=0, atol=1e-6)
    assert not torch.allclose(trained_logits, reference_logits)
    value_head = [n for n, p in policy.named_parameters() if "v_head" in n and p.requires_grad]
    assert value_head, "the value head must train with a PEFT policy"


def test_reward_model_scores_equal_rows_alone(tmp_path):
    torch.manual_seed(0)
    reward_model = HfGenDecoderForSequenceClassification(tiny_config(num_labels=1)).eval()
    trainer = PPOTrainer(args=ppo_args(tmp_path, max_steps=1), processing_class=word_tokenizer(),
                         model=HfGenDecoderForCausalLMWithValueHead(tiny_config()), train_dataset=prompts(),
                         reward_model=reward_model)
    trainer.train()
    # The scorer sees a left-padded prompt and a right-padded response; each row alone has no padding at all.
    ids = torch.tensor([[0, 0, 3, 4, 5, 6, 1, 0], [7, 8, 9, 10, 11, 12, 13, 14]])
    mask = (ids != 0).long()
    scores = trainer._score(ids, mask, context_length=4, columns={})
    with torch.no_grad():
        alone = [reward_model(input_ids=row[m.bool()][None]).logits[0, 0] for row, m in zip(ids, mask)]
    torch.testing.assert_close(scores, torch.stack(alone), rtol=1e-5, atol=1e-5)


def test_bad_input_fails_before_training(tmp_path):
    tokenizer, args = word_tokenizer(), ppo_args(tmp_path)
    policy = HfGenDecoderForCausalLMWithValueHead(tiny_config())

    def make(**kwargs):
        values = dict(args=args, processing_class=tokenizer, model=policy, train_dataset=prompts(),
                      reward_funcs=target_share)
        return PPOTrainer(**{**values, **kwargs})

    with pytest.raises(ValueError, match=r"needs a 'prompt' column.*\['text'\]"):
        make(train_dataset=Dataset.from_dict({"text": ["a b"]}))
    with pytest.raises(ValueError, match="train_dataset is empty"):
        make(train_dataset=Dataset.from_dict({"prompt": []}))
    with pytest.raises(ValueError, match=r"Prompt 1 has 60 tokens; with response_length=8 the limit is 56"):
        make(train_dataset=Dataset.from_dict({"prompt": ["a b", " ".join(["c"] * 60)]}))
    with pytest.raises(ValueError, match="no value head"):
        make(model=HfGenDecoderForCausalLM(tiny_config()))
    with pytest.raises(ValueError, match="exactly one of reward_model or reward_funcs"):
        make(reward_funcs=None)
    other_vocab = HfGenDecoderForSequenceClassification(tiny_config(vocab_size=8192, num_labels=1))
    with pytest.raises(ValueError, match="pass reward_processing_class"):
        make(reward_funcs=None, reward_model=other_vocab)
    from peft import LoraConfig, get_peft_model

    no_value_head_saved = get_peft_model(HfGenDecoderForCausalLMWithValueHead(tiny_config()),
                                         LoraConfig(task_type="CAUSAL_LM", target_modules=["q_proj", "v_proj"]))
    with pytest.raises(ValueError, match=r"modules_to_save=\['v_head'\]"):
        make(model=no_value_head_saved)
    with pytest.raises(ValueError, match="valid choices: k1, k3"):
        ppo_args(tmp_path, kl_estimator="k2")
    with pytest.raises(ValueError, match="divisible by num_mini_batches"):
        ppo_args(tmp_path, per_device_train_batch_size=6, num_mini_batches=4)


DDP_SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r})
from test_ppo import HfGenDecoderForCausalLMWithValueHead, PPOTrainer, ppo_args, prompts, target_share, tiny_config
from test_ppo import word_tokenizer
from pathlib import Path
torch.manual_seed(0)
args = ppo_args(Path({out!r}), max_steps=2, per_device_train_batch_size=8, ddp_backend="gloo")
trainer = PPOTrainer(args=args, processing_class=word_tokenizer(),
                     model=HfGenDecoderForCausalLMWithValueHead(tiny_config()), train_dataset=prompts(),
                     reward_funcs=target_share)
trainer.train()
print(f"[rank {{args.process_index}} of {{args.world_size}}] episodes {{trainer.state.log_history[-1]['episodes']}}",
      flush=True)
digest = sum(p.double().sum().item() for p in trainer.model.parameters())
print(f"[rank {{args.process_index}}] digest {{digest:.10f}}", flush=True)
"""


@pytest.mark.slow
def test_two_process_run_under_torchrun(tmp_path):
    script = tmp_path / "ddp_ppo.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT.format(tests=str(Path(__file__).parent), out=str(tmp_path))))
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                             "2", str(script)], capture_output=True, text=True, timeout=300,
                            env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    # 2 steps x 8 prompts x 2 processes; DDP keeps the replicas identical.
    assert "[rank 0 of 2] episodes 32" in log and "[rank 1 of 2] episodes 32" in log, log[-3000:]
    digests = {line.split("digest ")[1] for line in log.splitlines() if "digest" in line}
    assert len(digests) == 1, log[-3000:]


def test_response_ends_at_the_first_stop_token(trained):
    trainer, _, _ = trained
    eos = trainer.stop_token_id
    responses = torch.tensor([[5, eos, 7, eos], [5, 6, 7, 8], [eos, 3, 3, 3]])
    mask, has_stop = trainer._response_mask(responses)
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]  # the stop token itself is scored
    assert has_stop.tolist() == [True, False, True]


def test_adaptive_kl_coefficient_follows_the_controller(tmp_path):
    torch.manual_seed(0)
    args = ppo_args(tmp_path, max_steps=3, adaptive_kl=True, kl_coef=0.2, kl_target=0.01, kl_horizon=64,
                    missing_eos_penalty=1.0)
    trainer = PPOTrainer(args=args, processing_class=word_tokenizer(),
                         model=HfGenDecoderForCausalLMWithValueHead(tiny_config()), train_dataset=prompts(),
                         reward_funcs=target_share)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "objective/kl" in entry]
    # Each step's rewards use beta, then beta <- beta (1 + clip(KL / target - 1, -0.2, 0.2) * 16 / horizon).
    coef = 0.2
    for entry in logs:
        assert entry["objective/kl_coef"] == pytest.approx(coef, rel=1e-6)
        coef *= 1 + min(max(entry["objective/kl"] / 0.01 - 1, -0.2), 0.2) * 16 / 64
    assert logs[-1]["objective/kl_coef"] != 0.2
