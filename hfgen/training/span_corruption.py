"""Span-corruption pre-training of an hfgen encoder-decoder (T5's objective) on the embedded corpus: the core of
``recipes/pretrain_span_corruption.py``; with ``objective="bart_denoising"`` BART's objective instead (Lewis et al.
2020: text infilling and sentence permutation, the decoder writes the whole original block).

Seed 003: "a part of the input sequence is masked and replaced by a sentinel token. These sentinel tokens are
special tokens added to the vocabulary ... The decoder then has to reconstruct the sentence autoregressively."
The shipped tokenizer gets ``<extra_id_0>`` ... sentinels; blocks of the corpus are cut so that the corrupted input
is exactly ``block_size`` tokens (T5's ``random_spans_helper``), and
:class:`hfgen.data.denoising.DataCollatorForSpanCorruption` corrupts them (15% noise, mean span 3 by default).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase, Trainer, TrainerCallback, TrainingArguments, set_seed

from ..data.user_data import row_count, text_blocks
from ..hub import check_push_arguments
from ..data.denoising import (
    DataCollatorForBartDenoising,
    DataCollatorForSpanCorruption,
    DenoisingEpochCallback,
    add_sentinel_tokens,
    sentinel_token_ids,
    span_corruption_lengths,
)
from ..models import HfGenSeq2SeqConfig, HfGenSeq2SeqForConditionalGeneration
from .checkpoints import train_resumable
from .pretrain import ModelArguments, PretrainResult, build_config, perplexity
from .recipe_common import PretrainingDataArguments, loss_history, save_run, variant_title
from .start_evaluation import evaluate_then_train

logger = logging.getLogger(__name__)

DEFAULT_SENTINELS = 100  # T5's count
OBJECTIVES = ("span_corruption", "bart_denoising")
BART_MASK_TOKEN = "<mask>"


@dataclass
class SpanCorruptionDataArguments(PretrainingDataArguments):
    """Text, objective and noise of encoder-decoder pre-training. For span corruption ``block_size`` is the length
    of the corrupted encoder input (eos included; the raw blocks are longer by the noise tokens a sentinel
    replaces); for BART denoising it is the length of each original block (the target, eos added; the corrupted
    input is shorter)."""

    noise_density: float = field(default=0.15, metadata={"help": "Share of the tokens hidden in spans, in (0, 1)."})
    mean_noise_span_length: float = field(default=3.0, metadata={"help": "Mean length of a hidden span (>= 1)."})
    num_sentinel_tokens: int = field(default=DEFAULT_SENTINELS, metadata={"help": (
        "Sentinels <extra_id_0>, ... added to a fresh tokenizer (a pre-trained folder's tokenizer keeps its own). "
        "A block must need no more spans than there are sentinels.")})
    objective: str = field(default="span_corruption", metadata={"help": (
        "span_corruption (T5: sentinels in the input, the hidden spans as the target; noise_density, "
        "mean_noise_span_length) or bart_denoising (BART: spans of Poisson(3) tokens covering infilling_probability "
        "of the block each become one <mask>, sentences shuffled; the target is the whole block, of block_size "
        "tokens).")})
    infilling_probability: float = field(default=0.3, metadata={"help": (
        "bart_denoising: share of the tokens hidden by text infilling, in [0, 1) (BART: 0.3).")})
    permute_sentences: bool = field(default=True, metadata={"help": (
        "bart_denoising: shuffle the sentences of each block (BART: yes).")})


def load_span_corruption_tokenizer(path: str | None = None, num_sentinel_tokens: int = DEFAULT_SENTINELS,
                                   trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The tokenizer of a saved folder (running code its ``auto_map`` names only with ``trust_remote_code``), or
    hfgen's shipped tokenizer with ``num_sentinel_tokens`` sentinels added after its vocabulary (existing ids
    unchanged)."""
    if path is not None:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    from ..data import load_tokenizer

    tokenizer = load_tokenizer()
    add_sentinel_tokens(tokenizer, num_sentinel_tokens)
    return tokenizer


def check_noise_settings(data_args: SpanCorruptionDataArguments) -> None:
    """The objective and the noise fields' ranges, checked before the tokenizer is even loaded (the collator checks
    them again)."""
    if data_args.objective not in OBJECTIVES:
        raise ValueError(f"Unknown objective={data_args.objective!r}; valid choices are: "
                         f"{', '.join(map(repr, OBJECTIVES))}.")
    if data_args.objective == "bart_denoising":
        rate = data_args.infilling_probability
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
            raise ValueError(f"infilling_probability must be a number in [0, 1), got {rate!r}.")
        return
    density, mean, count = data_args.noise_density, data_args.mean_noise_span_length, data_args.num_sentinel_tokens
    if isinstance(density, bool) or not isinstance(density, (int, float)) or not 0 < density < 1:
        raise ValueError(f"noise_density must be a number in (0, 1), got {density!r}.")
    if isinstance(mean, bool) or not isinstance(mean, (int, float)) or not mean >= 1:
        raise ValueError(f"mean_noise_span_length must be a number >= 1, got {mean!r}.")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"num_sentinel_tokens must be a positive int, got {count!r}.")


def check_sentinels(data_args: SpanCorruptionDataArguments, tokenizer: PreTrainedTokenizerBase) -> tuple[int, int]:
    """``(raw tokens per block, target length)``; raises when a block needs more spans than the tokenizer has
    sentinels, before any data is tokenized."""
    from ..data.denoising import span_counts

    raw, target = span_corruption_lengths(data_args.block_size, data_args.noise_density,
                                          data_args.mean_noise_span_length)
    spans = span_counts(raw, data_args.noise_density, data_args.mean_noise_span_length)[1]
    available = len(sentinel_token_ids(tokenizer))
    if spans > available:
        raise ValueError(
            f"block_size={data_args.block_size} means {raw} raw tokens with {spans} noise spans, but the tokenizer "
            f"has {available} sentinel tokens: raise num_sentinel_tokens to at least {spans} or lower block_size.")
    return raw, target


def encoder_use_gap(model: HfGenSeq2SeqForConditionalGeneration, collator: DataCollatorForSpanCorruption,
                    blocks, batch_size: int = 64, seed: int = 1) -> dict[str, float]:
    """How much the decoder reads its encoder: the loss on ``blocks`` (corrupted by ``collator`` with
    ``collator.fixed_noise(seed)``) with each row's own encoder input, and with the next row's (the batch rolled by
    one: a real corrupted input, of another block). Token-weighted means over the targets; the collator's own seed
    and epoch are restored afterwards.

    Returns:
        ``eval_loss_own_encoder``, ``eval_loss_shuffled_encoder`` and ``encoder_use_gap`` (shuffled minus own, in
        nats per target token): about 0 for a decoder that ignores its encoder, whatever its loss.
    """
    import torch

    if len(blocks) < 2:
        raise ValueError(f"encoder_use_gap needs at least 2 blocks to swap encoder inputs, got {len(blocks)}.")
    was_training = model.training
    model.eval()
    totals, tokens = [0.0, 0.0], 0
    try:
        with torch.no_grad(), collator.fixed_noise(seed):
            for start in range(0, len(blocks), batch_size):
                batch = collator([blocks[i] for i in range(start, min(start + batch_size, len(blocks)))])
                if batch["input_ids"].shape[0] < 2:  # a last batch of one row has no other row to swap in
                    continue
                batch = {key: value.to(model.device) for key, value in batch.items()}
                count = int((batch["labels"] != -100).sum())
                swapped = {**batch, "input_ids": batch["input_ids"].roll(1, 0),
                           "attention_mask": batch["attention_mask"].roll(1, 0)}
                for k, inputs in enumerate((batch, swapped)):
                    totals[k] += float(model(**inputs).loss) * count
                tokens += count
    finally:
        model.train(was_training)
    own, shuffled = totals[0] / tokens, totals[1] / tokens
    return {"eval_loss_own_encoder": own, "eval_loss_shuffled_encoder": shuffled, "encoder_use_gap": shuffled - own}


def pretrain_span_corruption(model_args: ModelArguments, data_args: SpanCorruptionDataArguments,
                             training_args: TrainingArguments,
                             callbacks: list[TrainerCallback] | None = None) -> PretrainResult:
    """Pre-train (or continue training) an encoder-decoder with span corruption (or, with
    ``data_args.objective="bart_denoising"``, BART's denoising) and save a Hub-ready folder.

    Works in one process and under ``torchrun --nproc_per_node N``. The main process saves
    ``training_args.output_dir``: weights, config with ``auto_map`` and the model code (loads with
    ``AutoModelForSeq2SeqLM.from_pretrained(..., trust_remote_code=True)`` where hfgen is not installed), the
    tokenizer with its sentinels, ``loss_curve.png``, ``README.md``.

    Returns:
        Validation perplexity on the targets before and after training (the same corruption both times), the
        logged training losses and the training time.

    Raises:
        ValueError: for noise settings out of range, too few sentinels for ``block_size``, an unknown config key
            -- before any data is tokenized or weight is made.
    """
    check_noise_settings(data_args)
    check_push_arguments(training_args)  # a bad repo id fails now, not after training; no pickle is uploaded
    data_args.check(training_args.max_steps)  # data flags that cannot work fail before anything is built
    set_seed(training_args.seed)
    denoising = data_args.objective == "bart_denoising"
    tokenizer = load_span_corruption_tokenizer(model_args.model_name_or_path, data_args.num_sentinel_tokens,
                                               model_args.trust_remote_code)
    if denoising:
        if tokenizer.mask_token is None and model_args.model_name_or_path is None:  # a fresh tokenizer: add it
            tokenizer.add_special_tokens({"mask_token": BART_MASK_TOKEN})
        collator = DataCollatorForBartDenoising(tokenizer, permute_sentences=data_args.permute_sentences,
                                                infilling_probability=data_args.infilling_probability,
                                                seed=training_args.seed)  # no mask token: a clear error
        raw_length, target_length = data_args.block_size, data_args.block_size + 1  # target: the block, then eos
    else:
        collator = DataCollatorForSpanCorruption(tokenizer, data_args.noise_density,
                                                 data_args.mean_noise_span_length,
                                                 seed=training_args.seed)  # checks the noise settings
        raw_length, target_length = check_sentinels(data_args, tokenizer)
    config = build_config(model_args, tokenizer, HfGenSeq2SeqConfig)
    longest = max(data_args.block_size, target_length)
    if config.position_embedding == "learned" and longest > config.max_position_embeddings:
        raise ValueError(f"Sequences of {longest} tokens exceed max_position_embeddings "
                         f"({config.max_position_embeddings}) of learned positions; raise it with config_overrides.")
    if model_args.model_name_or_path is None:
        model = HfGenSeq2SeqForConditionalGeneration(config)
    else:
        model = HfGenSeq2SeqForConditionalGeneration.from_pretrained(model_args.model_name_or_path, config=config)

    with training_args.main_process_first(desc="tokenize the corpus"):
        blocks = text_blocks(data_args.load_text(), tokenizer, raw_length,
                             num_proc=data_args.preprocessing_num_workers, max_eval_samples=data_args.max_eval_samples)
    train, validation = data_args.select(blocks["train"], blocks["validation"])
    shape = ("targets are the blocks" if denoising else
             f"{data_args.block_size} after corruption, targets of {target_length}")
    logger.info("[hfgen] process %d of %d on %s: %s training blocks of %d tokens (%s: %s), %s parameters",
                training_args.process_index, training_args.world_size, training_args.device,
                row_count(train) or "streamed", raw_length, data_args.objective, shape,
                f"{model.num_parameters():,}")

    # Each block's noise is keyed by (seed, epoch, its tokens): a resumed run and N processes corrupt it as one
    # uninterrupted process does; the callback moves the epoch on.
    trainer = Trainer(model=model, args=training_args, train_dataset=train, eval_dataset=validation,
                      processing_class=tokenizer, data_collator=collator,
                      callbacks=[*(callbacks or []), DenoisingEpochCallback(collator)])

    def evaluate() -> dict:
        with collator.fixed_noise(training_args.seed + 1):  # the same corruption before and after
            return trainer.evaluate()

    # "before" is measured once train() has wrapped the model: trainer.evaluate() first would leave DDP off.
    # --resume_from_checkpoint last/true: the newest complete checkpoint; totals cover the steps before it too.
    before_metrics, (train_output, totals) = evaluate_then_train(
        trainer, lambda: train_resumable(trainer, training_args.resume_from_checkpoint), evaluate)
    before = before_metrics["eval_loss"]
    start_step = totals.get("resumed_from_step", 0)  # where "before" was measured (a resume: the checkpoint)
    after_metrics = evaluate()
    after = after_metrics["eval_loss"]
    gap = encoder_use_gap(trainer.model, collator, validation, training_args.per_device_eval_batch_size,
                          seed=training_args.seed + 1) if len(validation) >= 2 else {}
    trainer.log_metrics("train", train_output.metrics)
    trainer.log_metrics("eval", after_metrics)

    metrics = {
        "eval_perplexity_before": perplexity(before),
        "eval_perplexity": perplexity(after),
        "eval_loss": after,
        "train_loss": totals["train_loss"],
        **gap,  # does the decoder read its encoder (about 0 when it does not)
        "train_runtime_s": totals["train_runtime_s"],
        "resumed_from_step": totals.get("resumed_from_step"),
        "global_step": trainer.state.global_step,
        "total_train_batch_size": (training_args.per_device_train_batch_size * training_args.world_size
                                   * training_args.gradient_accumulation_steps),
        "block_size": data_args.block_size,
        "raw_block_size": raw_length,
        "target_length": target_length,
        "objective": data_args.objective,
        **({"infilling_probability": data_args.infilling_probability,
            "permute_sentences": data_args.permute_sentences} if denoising else
           {"noise_density": data_args.noise_density, "mean_noise_span_length": data_args.mean_noise_span_length}),
        "train_blocks": row_count(train),
        "eval_blocks": len(validation),
        "learning_rate": training_args.learning_rate,
        "world_size": training_args.world_size,
        "num_parameters": model.num_parameters(),
    }
    metrics = {key: value for key, value in metrics.items() if value is not None}
    save_run(trainer, config, metrics, task="denoising" if denoising else "span-corruption",
             title=variant_title(config, "BART denoising" if denoising else "span corruption"),
             base_model=model_args.model_name_or_path,
             eval_points=[(start_step, before), (trainer.state.global_step, after)])
    return PretrainResult(
        output_dir=str(training_args.output_dir), eval_perplexity_before=perplexity(before),
        eval_perplexity_after=perplexity(after), train_loss_history=loss_history(trainer),
        train_runtime=float(totals["train_runtime_s"] or 0.0), world_size=training_args.world_size,
        metrics=metrics, model=trainer.model)
