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

from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase, Trainer, TrainerCallback, TrainingArguments

from ..data.denoising import (
    DataCollatorForBartDenoising,
    DataCollatorForSpanCorruption,
    add_sentinel_tokens,
    sentinel_token_ids,
    span_corruption_lengths,
)
from ..data.user_data import row_count, text_blocks
from ..models import HfGenSeq2SeqConfig, HfGenSeq2SeqForConditionalGeneration
from .arguments import ModelArguments, PretrainingDataArguments, build_config
from .core import (PretrainResult, check_sequence_length, finish_pretraining, load_model,
                   log_run_start, prepare_run, tokenized_splits, train_and_evaluate_with_noise, variant_title)

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
    prepare_run(training_args, data_args)
    denoising = data_args.objective == "bart_denoising"
    tokenizer = load_span_corruption_tokenizer(model_args.model_name_or_path, data_args.num_sentinel_tokens,
                                               model_args.trust_remote_code)
    collator, raw_length, target_length = _denoising_collator(data_args, tokenizer, training_args.seed,
                                                              fresh_tokenizer=model_args.model_name_or_path is None)
    config = build_config(model_args, tokenizer, HfGenSeq2SeqConfig)
    check_sequence_length(config, max(data_args.block_size, target_length), "the longest sequence")
    model = load_model(HfGenSeq2SeqForConditionalGeneration, config, model_args.model_name_or_path)
    train, validation = tokenized_splits(training_args, data_args, text_blocks, tokenizer, raw_length)
    shape = ("targets are the blocks" if denoising else
             f"{data_args.block_size} after corruption, targets of {target_length}")
    log_run_start(training_args, f"{row_count(train) or 'streamed'} training blocks of {raw_length} tokens "
                                 f"({data_args.objective}: {shape}), {model.num_parameters():,} parameters")
    run = train_and_evaluate_with_noise(Trainer, collator, callbacks, model=model, args=training_args,
                                        train_dataset=train, eval_dataset=validation, processing_class=tokenizer)
    # Does the decoder read its encoder (about 0 when it does not).
    gap = encoder_use_gap(run.trainer.model, collator, validation, training_args.per_device_eval_batch_size,
                          seed=training_args.seed + 1) if len(validation) >= 2 else {}
    return finish_pretraining(run, config, model_args.model_name_or_path,
                              _noise_settings(data_args, raw_length, target_length), scores=gap,
                              task="denoising" if denoising else "span-corruption",
                              title=variant_title(config, "BART denoising" if denoising else "span corruption"))


def _denoising_collator(data_args: SpanCorruptionDataArguments, tokenizer: PreTrainedTokenizerBase, seed: int,
                        fresh_tokenizer: bool) -> tuple[DataCollatorForSpanCorruption | DataCollatorForBartDenoising,
                                                        int, int]:
    """``(collator, raw tokens per block, target length)`` of ``data_args.objective``; BART's ``<mask>`` is added to
    a fresh tokenizer. The collator checks the noise settings (and, for BART, that a mask token exists)."""
    if data_args.objective == "bart_denoising":
        if tokenizer.mask_token is None and fresh_tokenizer:
            tokenizer.add_special_tokens({"mask_token": BART_MASK_TOKEN})
        collator = DataCollatorForBartDenoising(tokenizer, permute_sentences=data_args.permute_sentences,
                                                infilling_probability=data_args.infilling_probability, seed=seed)
        return collator, data_args.block_size, data_args.block_size + 1  # target: the block, then eos
    collator = DataCollatorForSpanCorruption(tokenizer, data_args.noise_density, data_args.mean_noise_span_length,
                                             seed=seed)
    return (collator, *check_sentinels(data_args, tokenizer))


def _noise_settings(data_args: SpanCorruptionDataArguments, raw_length: int, target_length: int) -> dict:
    """The lengths and noise settings a span-corruption or denoising run reports."""
    if data_args.objective == "bart_denoising":
        noise = {"infilling_probability": data_args.infilling_probability,
                 "permute_sentences": data_args.permute_sentences}
    else:
        noise = {"noise_density": data_args.noise_density, "mean_noise_span_length": data_args.mean_noise_span_length}
    return {"block_size": data_args.block_size, "raw_block_size": raw_length, "target_length": target_length,
            "objective": data_args.objective, **noise}
