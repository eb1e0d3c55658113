"""Causal-LM pre-training of an hfgen decoder on the embedded corpus: the objective of
``recipes/pretrain_causal_lm.py`` and ``hfgen demo``, on the training core (``hfgen.training.core``).

Plain ``transformers.Trainer`` does the work (progress bars, logging, DDP under ``torchrun``); the core adds
perplexity before and after training and a Hub-ready output folder with the model code, the tokenizer, a loss curve
and a model card. The model's config is built from the tokenizer and a few flags (``hfgen.training.arguments``:
any config key settable through ``config_overrides``).
"""

from __future__ import annotations

import os

from transformers import (
    DataCollatorForLanguageModeling,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from ..data.user_data import row_count, text_blocks
from ..models import HfGenDecoderForCausalLM
from .arguments import DataArguments, ModelArguments, build_config
from .core import (PretrainResult, check_sequence_length, finish_pretraining, load_model, log_run_start, prepare_run,
                   tokenized_splits, train_and_evaluate, variant_title)

# Names that lived here before the training core (hfgen.training.core, .arguments) and stay importable from here.
from .arguments import parse_config_overrides, valid_config_keys  # noqa: F401
from .core import LOSS_CURVE_FILE, cpu_training_defaults, perplexity, write_loss_curve  # noqa: F401


def _load_tokenizer(model_args: ModelArguments) -> PreTrainedTokenizerBase:
    from ..data import load_tokenizer

    path = model_args.model_name_or_path
    if path is None or (os.path.isdir(path) and not os.path.exists(os.path.join(path, "tokenizer_config.json"))):
        return load_tokenizer()  # the tokenizer shipped with hfgen
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, trust_remote_code=model_args.trust_remote_code)


def pretrain(model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments,
             callbacks: list[TrainerCallback] | None = None) -> PretrainResult:
    """Pre-train (or continue training) a decoder with causal language modelling and save a Hub-ready folder.

    Works in one process and under ``torchrun --nproc_per_node N`` (DDP; gloo on CPU). Every process trains;
    the main one saves ``training_args.output_dir``: weights, config with ``auto_map`` and the model code (loads
    with ``trust_remote_code=True`` where hfgen is not installed), tokenizer, ``loss_curve.png``, ``README.md``.

    Args:
        callbacks: extra ``TrainerCallback`` objects for the ``Trainer`` (e.g. a ``TimeLimitCallback``).

    Returns:
        Validation perplexity before and after training, the logged training losses and the training time.
    """
    prepare_run(training_args, data_args)
    tokenizer = _load_tokenizer(model_args)
    config = build_config(model_args, tokenizer)  # fails fast on a bad key, before the data is tokenized
    check_sequence_length(config, data_args.block_size, "block_size", learned_only=False)
    model = load_model(HfGenDecoderForCausalLM, config, model_args.model_name_or_path)
    train, validation = tokenized_splits(training_args, data_args, text_blocks, tokenizer, data_args.block_size)
    log_run_start(training_args, f"{row_count(train) or 'streamed'} training blocks of {data_args.block_size} "
                                 f"tokens, {model.num_parameters():,} parameters")
    trainer = Trainer(model=model, args=training_args, train_dataset=train, eval_dataset=validation,
                      processing_class=tokenizer,
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False), callbacks=callbacks)
    run = train_and_evaluate(trainer)
    return finish_pretraining(run, config, model_args.model_name_or_path, {"block_size": data_args.block_size},
                              task="causal-lm", title=variant_title(config),
                              commit_message="End of training (hfgen pretrain)")
