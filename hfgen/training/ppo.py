"""PPO for causal LMs (RLHF's feedback-tuning step, seed 001), in the shape of TRL's trainers.

TRL removed its PPO trainer (last in 0.12 under ``trl.experimental.ppo``); this one keeps its interface:
``PPOConfig`` extends ``transformers.TrainingArguments``; ``PPOTrainer`` subclasses ``transformers.Trainer`` for
Accelerate (DDP under ``torchrun`` / ``accelerate launch``), callbacks, logging (``state.log_history``) and
``save_model``, and replaces ``train()`` by the PPO loop. One step:

1. rollout: sample ``response_length`` tokens per prompt with ``generate``; everything after the first stop token
   (eos) is padding, and responses that never stop can be penalised (``missing_eos_penalty``);
2. score: a reward model (a sequence-classification model, e.g. ``HfGenDecoderForSequenceClassification``) or
   Python reward functions ``f(prompts, completions, completion_ids, **columns) -> list[float]``;
3. per-token rewards ``r_t = -beta KL_t`` plus the score on the last token, KL against a frozen reference
   (a copy of the initial policy, or the policy with its PEFT adapters disabled), ``k1`` or ``k3`` estimator,
   ``beta`` fixed or adaptive;
4. GAE advantages (whitened), returns;
5. ``num_ppo_epochs`` passes over the batch in ``num_mini_batches`` shuffled mini-batches, minimising the clipped
   policy loss plus ``vf_coef`` times the clipped value loss.

Under DDP the whitening statistics and the losses' token means cover every process's rows, so the same rollouts
give the update of one process (tests/test_ddp_equivalence.py). The rollouts are the same too: responses are sampled by
Gumbel-max with noise keyed by (seed, the prompt's index, step) (:mod:`hfgen.training.ppo_sampling`), not by a
process's random stream, and the mini-batches are cut from one permutation of the global batch.

The policy is an actor-critic model with a value head: :class:`hfgen.models.HfGenDecoderForCausalLMWithValueHead`
(load any hfgen or Llama causal-LM checkpoint into it), optionally wrapped by PEFT with ``modules_to_save=
["v_head"]``. The loss arithmetic lives in :mod:`hfgen.training.ppo_core`.
"""

from __future__ import annotations

import copy
import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from torch import nn
from torch.utils.data import DataLoader
from transformers import (
    GenerationConfig,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.trainer_callback import TrainerState

from .ppo_sampling import KeyedGumbelNoise
from .ppo_core import (
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    compute_gae,
    entropy_from_logits,
    kl_estimate,
    logprobs_from_logits,
    masked_mean,
    masked_whiten,
    policy_loss,
    value_loss,
)

# Times the parts of a step in the logs (``time/generate_s``, ...); benchmarks/ppo.py swaps in the process's CPU
# clock, which other processes on a shared machine do not inflate.
step_clock: Callable[[], float] = time.perf_counter

RewardFunction = Callable[..., Sequence[float]]
# The dataset column holding each prompt's index: the key of its rollouts' sampling noise.
PROMPT_INDEX = "ppo_prompt_index"


def _help(text: str) -> dict[str, Any]:
    return {"metadata": {"help": text}}


@dataclass
class PPOConfig(TrainingArguments):
    """``TrainingArguments`` plus PPO's knobs. ``per_device_train_batch_size`` is the number of prompts per rollout
    on each process; ``max_steps`` counts rollouts (PPO steps); ``learning_rate`` defaults to 1e-5 as in TRL.

    Unlike TRL's configs nothing defaults to bf16: on a CPU (no CUDA) runs use fp32 on the CPU."""

    learning_rate: float = field(default=1e-5, **_help("AdamW learning rate."))
    response_length: int = field(default=32, **_help("Tokens sampled per response (max_new_tokens)."))
    temperature: float = field(default=1.0, **_help("Sampling temperature; log-probs use the same temperature."))
    stop_token_id: int | None = field(default=None, **_help(
        "Token that ends a response (default: the tokenizer's eos). Tokens after it are padding."))
    missing_eos_penalty: float | None = field(default=None, **_help(
        "Subtracted from the score of responses that never emit the stop token."))
    num_ppo_epochs: int = field(default=4, **_help("Passes over each rollout batch."))
    num_mini_batches: int = field(default=1, **_help("Mini-batches per pass (the batch must divide evenly)."))
    cliprange: float = field(default=0.2, **_help("epsilon of the clipped policy ratio."))
    cliprange_value: float = field(default=0.2, **_help("Clip range of the value update."))
    vf_coef: float = field(default=0.1, **_help("Weight of the value loss."))
    gamma: float = field(default=1.0, **_help("Discount factor."))
    lam: float = field(default=0.95, **_help("GAE lambda."))
    kl_coef: float = field(default=0.05, **_help("Initial KL penalty coefficient beta."))
    kl_estimator: str = field(default="k1", **_help(f"Per-token KL estimator: {', '.join(KL_ESTIMATORS)}."))
    adaptive_kl: bool = field(default=False, **_help("Adapt beta towards kl_target (Ziegler et al. 2019)."))
    kl_target: float = field(default=6.0, **_help("Target KL per response of the adaptive controller."))
    kl_horizon: int = field(default=10000, **_help("Horizon (episodes) of the adaptive controller."))
    whiten_rewards: bool = field(default=False, **_help("Whiten the per-token rewards before GAE."))
    whiten_advantages: bool = field(default=True, **_help("Whiten the advantages."))
    max_prompt_length: int | None = field(default=None, **_help(
        "Reject prompts longer than this many tokens (default: context length minus response_length)."))
    report_to: Any = field(default="none", **_help("Integrations to report to (default: none)."))
    save_strategy: Any = field(default="no", **_help("Checkpointing during training (default: no)."))

    def __post_init__(self):
        if not torch.cuda.is_available():
            self.use_cpu = True
            self.bf16 = self.fp16 = False
        super().__post_init__()
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"kl_estimator={self.kl_estimator!r}; valid choices: {', '.join(KL_ESTIMATORS)}.")
        for name in ("response_length", "num_ppo_epochs", "num_mini_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.per_device_train_batch_size % self.num_mini_batches:
            raise ValueError(f"per_device_train_batch_size ({self.per_device_train_batch_size}) must be divisible "
                             f"by num_mini_batches ({self.num_mini_batches}).")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}.")


@dataclass
class Rollout:
    """One batch of episodes, everything on the response positions ``[batch, response_length]``."""

    query_response: torch.Tensor  # [batch, prompt + response] token ids (left-padded prompt, padded response)
    attention_mask: torch.Tensor  # same shape
    context_length: int
    response_mask: torch.Tensor  # 1 on real response tokens (up to and including the stop token)
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    scores: torch.Tensor  # [batch]
    advantages: torch.Tensor = None
    returns: torch.Tensor = None


def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token (left padding)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _has_value_head(model: nn.Module) -> bool:
    return any(name.endswith("v_head") for name, _ in model.named_modules())


def _is_peft(model: nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


class PPOTrainer(Trainer):
    """Proximal policy optimisation of a causal LM with a value head against a reward model or reward functions.

    Args:
        args: a :class:`PPOConfig`.
        processing_class: the policy's tokenizer (pad token required; prompts are left-padded).
        model: the policy, an actor-critic model with ``v_head`` (e.g. ``HfGenDecoderForCausalLMWithValueHead``),
            optionally a ``peft`` model that keeps ``v_head`` trainable (``modules_to_save=["v_head"]``).
        train_dataset: prompts, as a column ``prompt`` (text, or a list of chat messages rendered with the
            tokenizer's chat template and ``add_generation_prompt``), or ``input_ids``.
        reward_model: a sequence-classification model giving one score per sequence (``num_labels=1``).
        reward_processing_class: the reward model's tokenizer when it is not the policy's: texts are decoded and
            re-encoded with it (that is the mapping between the two vocabularies).
        reward_funcs: instead of a reward model, one function or a list, each called as
            ``f(prompts=..., completions=..., completion_ids=..., **other dataset columns)`` and returning one
            float per completion; their scores are summed.
        ref_model: the frozen reference of the KL penalty; default a copy of ``model`` as passed (for a PEFT
            policy: the policy itself with adapters disabled).
        callbacks: ``TrainerCallback``s (``on_train_begin``, ``on_step_end``, ``on_log``, ``on_train_end``).
    """

    def __init__(self, args: PPOConfig, processing_class: PreTrainedTokenizerBase, model: PreTrainedModel,
                 train_dataset: Dataset, reward_model: PreTrainedModel | None = None,
                 reward_processing_class: PreTrainedTokenizerBase | None = None,
                 reward_funcs: RewardFunction | list[RewardFunction] | None = None,
                 ref_model: PreTrainedModel | None = None, callbacks: list[TrainerCallback] | None = None):
        if not isinstance(args, PPOConfig):
            raise ValueError(f"args must be a PPOConfig, got {type(args).__name__}.")
        if (reward_model is None) == (reward_funcs is None):
            raise ValueError("Pass exactly one of reward_model or reward_funcs.")
        if not _has_value_head(model):
            raise ValueError(f"The policy {type(model).__name__} has no value head (v_head). Load it as "
                             f"HfGenDecoderForCausalLMWithValueHead.from_pretrained(path) (any hfgen or Llama "
                             f"causal-LM checkpoint loads; the value head starts fresh).")
        self.is_peft_policy = _is_peft(model)
        if self.is_peft_policy:
            saved = model.peft_config[model.active_adapter].modules_to_save or []
            if "v_head" not in saved:
                raise ValueError("A PEFT policy must train and save its value head: add modules_to_save=['v_head'] "
                                 "to the PEFT config.")
            if ref_model is not None:
                raise ValueError("A PEFT policy's reference is the model with adapters disabled; do not pass "
                                 "ref_model.")
        if processing_class.pad_token_id is None:
            raise ValueError("The tokenizer has no pad token; set one (e.g. tokenizer.pad_token = "
                             "tokenizer.eos_token) so prompts can be batched.")
        self.reward_model = reward_model
        self.reward_processing_class = reward_processing_class
        self.reward_funcs = ([reward_funcs] if callable(reward_funcs) else list(reward_funcs)) \
            if reward_funcs is not None else []
        if reward_model is not None:
            self._check_reward_model(reward_model, processing_class, reward_processing_class)
        self.stop_token_id = args.stop_token_id if args.stop_token_id is not None else processing_class.eos_token_id
        dataset = self._prepare_dataset(train_dataset, processing_class, model, args)

        if ref_model is None and not self.is_peft_policy:
            ref_model = copy.deepcopy(model)
        self.ref_model = ref_model
        for frozen in (self.ref_model, self.reward_model):
            if frozen is not None:
                frozen.eval().requires_grad_(False)

        super().__init__(model=model, args=args, train_dataset=dataset, processing_class=processing_class,
                         callbacks=callbacks)
        if self.is_peft_policy:  # Trainer does not know that modules_to_save must train
            for name, param in self.model.named_parameters():
                if "v_head" in name and "modules_to_save" in name:
                    param.requires_grad_(True)
        for frozen in (self.ref_model, self.reward_model):
            if frozen is not None:
                frozen.to(self.args.device)
        self.kl_controller = (AdaptiveKLController(args.kl_coef, args.kl_target, args.kl_horizon)
                              if args.adaptive_kl else FixedKLController(args.kl_coef))

    # ----------------------------------------------------------------------------------------------- checks
    @staticmethod
    def _check_reward_model(reward_model, tokenizer, reward_tokenizer) -> None:
        if reward_tokenizer is not None:
            return
        vocab = getattr(reward_model.config, "vocab_size", None)
        same = vocab is not None and vocab >= len(tokenizer) and \
            getattr(reward_model.config, "pad_token_id", tokenizer.pad_token_id) in (None, tokenizer.pad_token_id)
        if not same or vocab - len(tokenizer) > 1024:
            raise ValueError(
                f"The reward model's vocabulary ({vocab} tokens, pad id "
                f"{getattr(reward_model.config, 'pad_token_id', None)}) does not fit the policy's tokenizer "
                f"({len(tokenizer)} tokens, pad id {tokenizer.pad_token_id}): pass reward_processing_class= the "
                f"reward model's tokenizer, so responses are decoded and re-encoded for it.")

    def _prepare_dataset(self, dataset: Dataset, tokenizer, model, args: PPOConfig) -> Dataset:
        if not isinstance(dataset, Dataset):
            raise ValueError(f"train_dataset must be a datasets.Dataset, got {type(dataset).__name__}.")
        if len(dataset) == 0:
            raise ValueError("train_dataset is empty: PPO needs prompts.")
        if "input_ids" not in dataset.column_names:
            if "prompt" not in dataset.column_names:
                raise ValueError(f"train_dataset needs a 'prompt' column (text or chat messages) or 'input_ids'; "
                                 f"its columns are {dataset.column_names}.")

            def encode(row):
                prompt = row["prompt"]
                if isinstance(prompt, list):  # conversational: [{"role": ..., "content": ...}, ...]
                    prompt = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
                elif not isinstance(prompt, str):
                    raise ValueError(f"A 'prompt' must be a str or a list of messages, got {type(prompt).__name__}.")
                return {"input_ids": tokenizer(prompt, add_special_tokens=False)["input_ids"]}

            dataset = dataset.map(encode, desc="tokenize prompts")
        lengths = [len(ids) for ids in dataset["input_ids"]]
        if min(lengths) == 0:
            raise ValueError(f"Prompt {lengths.index(0)} is empty: every prompt needs at least one token.")
        config = model.get_base_model().config if _is_peft(model) else model.config
        context = getattr(config, "max_position_embeddings", None)
        limit = args.max_prompt_length
        if limit is None and context is not None:
            limit = context - args.response_length
        if limit is not None and max(lengths) > limit:
            index = lengths.index(max(lengths))
            raise ValueError(
                f"Prompt {index} has {lengths[index]} tokens; with response_length={args.response_length} the "
                f"limit is {limit} (the model's context is {context} tokens). Shorten or filter the prompts, or "
                f"lower response_length.")
        if PROMPT_INDEX in dataset.column_names:
            dataset = dataset.remove_columns(PROMPT_INDEX)
        return dataset.add_column(PROMPT_INDEX, list(range(len(dataset))))

    # ------------------------------------------------------------------------------------------- data
    def _collate(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        tokenizer = self.processing_class
        width = max(len(row["input_ids"]) for row in rows)
        pad = tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(r["input_ids"])) + list(r["input_ids"]) for r in rows])
        mask = torch.tensor([[0] * (width - len(r["input_ids"])) + [1] * len(r["input_ids"]) for r in rows])
        extra = {key: [row[key] for row in rows] for key in rows[0]
                 if key not in ("input_ids", "attention_mask", PROMPT_INDEX)}
        return {"input_ids": ids, "attention_mask": mask, "columns": extra,
                "prompt_index": torch.tensor([row[PROMPT_INDEX] for row in rows])}

    def get_train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.args.seed)
        loader = DataLoader(self.train_dataset, batch_size=self.args.per_device_train_batch_size, shuffle=True,
                            drop_last=True, collate_fn=self._collate, generator=generator)
        return self.accelerator.prepare(loader)

    # ------------------------------------------------------------------------------------------- rollout
    def _forward(self, model, query_response, attention_mask, context_length):
        """Log-probs (at the sampling temperature), values (None without a value head) and logits of the
        response tokens."""
        output = model(input_ids=query_response, attention_mask=attention_mask,
                       position_ids=_positions(attention_mask), use_cache=False)
        logits = output.logits[:, context_length - 1 : -1]
        logprobs = logprobs_from_logits(logits, query_response[:, context_length:], self.args.temperature)
        values = getattr(output, "value", None)
        if values is not None:
            values = values[:, context_length - 1 : -1].float()
        return logprobs, values, logits

    def _response_mask(self, responses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mask up to and including the first stop token, whether a stop token occurred) per row."""
        is_stop = responses == self.stop_token_id
        has_stop = is_stop.any(-1)
        positions = torch.arange(responses.shape[1], device=responses.device)
        first_stop = torch.where(has_stop, is_stop.float().argmax(-1), responses.shape[1] - 1)
        return (positions[None] <= first_stop[:, None]).long(), has_stop

    @torch.no_grad()
    def _score(self, query_response, attention_mask, context_length, columns) -> torch.Tensor:
        tokenizer = self.processing_class
        prompts = tokenizer.batch_decode(query_response[:, :context_length], skip_special_tokens=True)
        responses = query_response[:, context_length:]
        response_mask = attention_mask[:, context_length:]
        completion_ids = [row[mask.bool()].tolist() for row, mask in zip(responses, response_mask)]
        completions = tokenizer.batch_decode(
            [[t for t in ids if t != self.stop_token_id] for ids in completion_ids], skip_special_tokens=True)
        device = query_response.device
        if self.reward_model is not None:
            if self.reward_processing_class is None:
                logits = self.reward_model(input_ids=query_response, attention_mask=attention_mask,
                                           position_ids=_positions(attention_mask)).logits
            else:
                encoded = self.reward_processing_class([p + c for p, c in zip(prompts, completions)],
                                                       padding=True, return_tensors="pt").to(device)
                logits = self.reward_model(**encoded).logits
            return logits[:, 0].float()
        total = torch.zeros(len(prompts), device=device)
        for function in self.reward_funcs:
            scores = function(prompts=prompts, completions=completions, completion_ids=completion_ids, **columns)
            scores = torch.as_tensor([float("nan") if s is None else s for s in scores], dtype=torch.float,
                                     device=device)
            if scores.shape != total.shape:
                raise ValueError(f"Reward function {getattr(function, '__name__', function)} returned "
                                 f"{scores.numel()} scores for {len(prompts)} completions.")
            total += scores
        return total

    @torch.no_grad()
    def _rollout(self, model, batch) -> Rollout:
        args = self.args
        unwrapped = self.accelerator.unwrap_model(model)
        unwrapped.eval()
        prompt_ids, prompt_mask = batch["input_ids"], batch["attention_mask"]
        context_length = prompt_ids.shape[1]
        # Gumbel-max with noise keyed by (seed, prompt index, step): softmax(logits / temperature) sampling whose
        # draws do not depend on which process holds the prompt (hfgen.training.ppo_sampling).
        noise = KeyedGumbelNoise(args.seed, batch["prompt_index"].tolist(), self.state.global_step, context_length,
                                 args.temperature)
        generation_config = GenerationConfig(
            max_new_tokens=args.response_length, do_sample=False, pad_token_id=self.processing_class.pad_token_id,
            eos_token_id=None)  # fixed length; the stop token is applied below, identically on every process
        start = step_clock()
        query_response = unwrapped.generate(input_ids=prompt_ids, attention_mask=prompt_mask,
                                            generation_config=generation_config,
                                            logits_processor=LogitsProcessorList([noise]))
        generated = step_clock()
        responses = query_response[:, context_length:]
        response_mask, has_stop = self._response_mask(responses)
        responses = torch.where(response_mask.bool(), responses, self.processing_class.pad_token_id)
        query_response = torch.cat([prompt_ids, responses], dim=1)
        attention_mask = torch.cat([prompt_mask, response_mask], dim=1)

        logprobs, values, _ = self._forward(unwrapped, query_response, attention_mask, context_length)
        if self.is_peft_policy:
            with unwrapped.disable_adapter():
                ref_logprobs, _, _ = self._forward(unwrapped, query_response, attention_mask, context_length)
        else:
            ref_logprobs, _, _ = self._forward(self.ref_model, query_response, attention_mask, context_length)
        scores = self._score(query_response, attention_mask, context_length, batch["columns"])
        if args.missing_eos_penalty is not None:
            scores = scores - args.missing_eos_penalty * (~has_stop).float()
        unwrapped.train()
        # Generation, then scoring: the policy's and the reference's log-probs, values, and the reward.
        self.timings = {"time/generate_s": generated - start, "time/score_s": step_clock() - generated}
        return Rollout(query_response, attention_mask, context_length, response_mask.float(), logprobs,
                       ref_logprobs, values, scores)

    def _total(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the processes (each holds its share of the batch's rows)."""
        return self.accelerator.reduce(tensor, "sum") if self.accelerator.num_processes > 1 else tensor

    def _advantages(self, rollout: Rollout) -> dict[str, torch.Tensor]:
        """Per-token rewards (KL penalty + score on the last real token), GAE, whitening; fills the rollout."""
        args, mask = self.args, rollout.response_mask
        kl = kl_estimate(rollout.logprobs, rollout.ref_logprobs, args.kl_estimator) * mask
        rewards = -self.kl_controller.value * kl
        last = (mask.sum(-1).long() - 1).clamp(min=0)
        rows = torch.arange(mask.shape[0], device=mask.device)
        rewards[rows, last] += rollout.scores
        if args.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False, total=self._total)
        advantages, returns = compute_gae(rewards, rollout.values, mask, args.gamma, args.lam)
        if args.whiten_advantages:
            advantages = masked_whiten(advantages, mask, total=self._total)
        rollout.advantages, rollout.returns = advantages, returns
        return {"kl": kl.sum(-1).mean(), "non_score_reward": (-self.kl_controller.value * kl).sum(-1).mean(),
                "rlhf_reward": (rollout.scores - self.kl_controller.value * kl.sum(-1)).mean()}

    # ------------------------------------------------------------------------------------------- training
    def _optimise(self, model, rollout: Rollout) -> dict[str, float]:
        args = self.args
        stats = defaultdict(list)
        for epoch in range(args.num_ppo_epochs):
            for index, weight in self._mini_batches(rollout.query_response.shape[0], epoch):
                index = index.to(rollout.query_response.device)
                mask = rollout.response_mask[index] * weight
                logprobs, values, logits = self._forward(model, rollout.query_response[index],
                                                         rollout.attention_mask[index], rollout.context_length)
                # The token means of the losses are over the tokens of every process's mini-batch: DDP averages
                # the processes' gradients, so each divides its token sum by (all tokens / processes).
                count = (self._total(mask.sum()) / self.accelerator.num_processes).clamp(min=1)
                pg_loss, pg_stats = policy_loss(logprobs, rollout.logprobs[index], rollout.advantages[index], mask,
                                                args.cliprange, count=count)
                vf_loss, vf_stats = value_loss(values, rollout.values[index], rollout.returns[index], mask,
                                               args.cliprange_value, count=count)
                loss = pg_loss + args.vf_coef * vf_loss
                self.accelerator.backward(loss)
                if args.max_grad_norm is not None and args.max_grad_norm > 0:
                    self.accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                self.optimizer.step()
                self.lr_scheduler.step()
                self.optimizer.zero_grad()
                with torch.no_grad():
                    stats["policy_loss"].append(pg_loss.detach())
                    stats["value_loss"].append(vf_loss.detach())
                    stats["entropy"].append(masked_mean(entropy_from_logits(logits, args.temperature), mask))
                    for key, value in {**pg_stats, **vf_stats}.items():
                        stats[key].append(value.detach())
        return {key: torch.stack(values).mean() for key, values in stats.items()}

    def _mini_batches(self, batch_size: int, epoch: int):
        """This process's rows of each mini-batch, and a weight (1; 0 for a stand-in row): one permutation of the
        global batch (``batch_size`` rows per process, process ``r`` holding rows ``r * batch_size ...``), keyed by
        (seed, step, epoch), cut into ``num_mini_batches``, so N processes optimise on the mini-batches of one
        process. A process holding no row of a mini-batch still runs one row with a zero mask: DDP needs every
        process's backward."""
        processes, first = self.accelerator.num_processes, self.accelerator.process_index * batch_size
        seed = np.random.default_rng([self.args.seed, self.state.global_step, epoch]).integers(2**62)
        order = torch.randperm(batch_size * processes, generator=torch.Generator().manual_seed(int(seed)))
        mini = batch_size * processes // self.args.num_mini_batches
        for start in range(0, batch_size * processes, mini):
            rows = order[start:start + mini]
            rows = rows[(rows >= first) & (rows < first + batch_size)] - first
            yield (rows, 1.0) if len(rows) else (torch.zeros(1, dtype=torch.long), 0.0)

    def _begin_training(self, max_steps: int, batches_per_epoch: int):
        """Optimizer, schedule and the model prepared by the accelerator (DDP under several processes), a fresh
        ``TrainerState``, and the callbacks' ``on_train_begin``. Returns the prepared model."""
        args = self.args
        self.create_optimizer_and_scheduler(num_training_steps=max_steps * args.num_ppo_epochs *
                                            args.num_mini_batches)
        model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        self.model_wrapped = model
        self.state = TrainerState(max_steps=max_steps, logging_steps=args.logging_steps, save_steps=args.save_steps,
                                  num_train_epochs=math.ceil(max_steps / batches_per_epoch))
        self.state.is_local_process_zero = self.is_local_process_zero()
        self.state.is_world_process_zero = self.is_world_process_zero()
        self.control = self.callback_handler.on_train_begin(args, self.state, self.control)
        return model

    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        """Run ``max_steps`` PPO steps (or ``num_train_epochs`` passes over the prompts when ``max_steps`` is not
        set). Returns ``state.log_history``'s last entry as a dict."""
        if resume_from_checkpoint is not None:
            raise ValueError("PPOTrainer does not resume from checkpoints; start from a saved model instead.")
        args = self.args
        dataloader = self.get_train_dataloader()
        if len(dataloader) == 0:
            raise ValueError(f"train_dataset has {len(self.train_dataset)} prompts, fewer than one batch of "
                             f"{args.per_device_train_batch_size * args.world_size}.")
        max_steps = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * len(dataloader))
        model = self._begin_training(max_steps, len(dataloader))
        model.train()
        start = time.time()
        batches = iter(dataloader)
        episodes = 0
        for step in range(1, max_steps + 1):
            try:
                batch = next(batches)
            except StopIteration:
                batches = iter(dataloader)
                batch = next(batches)
            self.control = self.callback_handler.on_step_begin(args, self.state, self.control)
            t0 = step_clock()
            rollout = self._rollout(model, batch)
            t1 = step_clock()
            with torch.no_grad():
                reward_stats = self._advantages(rollout)
            stats = self._optimise(model, rollout)
            t2 = step_clock()
            episodes += rollout.query_response.shape[0] * args.world_size
            mean = {key: self.accelerator.reduce(value.detach().float(), "mean").item()
                    for key, value in {**reward_stats, **stats, "score": rollout.scores.mean(),
                                       "response_length": rollout.response_mask.sum(-1).mean()}.items()}
            kl_coef = self.kl_controller.value  # the beta this step's rewards used; updated for the next step
            self.kl_controller.update(mean["kl"], rollout.query_response.shape[0] * args.world_size)
            self.state.global_step = step
            self.state.epoch = step / len(dataloader)
            if step % max(1, int(args.logging_steps)) == 0 or step == max_steps:
                self.log({**_step_logs(mean), "objective/kl_coef": kl_coef, "episode": episodes,
                          "learning_rate": self.lr_scheduler.get_last_lr()[0], **self.timings,
                          "time/rollout_s": t1 - t0, "time/optimise_s": t2 - t1})
            self.control = self.callback_handler.on_step_end(args, self.state, self.control)
            if self.control.should_training_stop:
                break
        self.accelerator.wait_for_everyone()
        metrics = {"train_runtime": time.time() - start, "global_step": self.state.global_step,
                   "episodes": episodes}
        self.log(metrics)
        self.control = self.callback_handler.on_train_end(args, self.state, self.control)
        return metrics


def _step_logs(mean: dict[str, float]) -> dict[str, float]:
    """A PPO step's means, grouped by name (objective/, loss/, policy/) as TRL's former PPO trainer grouped its logs."""
    def name(key: str) -> str:
        if key in ("kl", "non_score_reward", "rlhf_reward", "entropy"):
            return f"objective/{key}"
        if key.endswith("_loss"):
            return f"loss/{key}"
        return f"policy/{key}" if key in ("clipfrac", "approxkl") else key

    return {name(key): value for key, value in mean.items()}
