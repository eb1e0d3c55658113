"""Fine-tuning for text classification on the labelled task of the embedded corpus (``hfgen.data.labelled``): the
core of ``recipes/finetune_classification.py`` and of the transfer-learning experiment.

Any hfgen family, from scratch or from a saved (pre-trained) folder:

* ``hfgen_encoder`` and ``hfgen_decoder`` through their ``...ForSequenceClassification`` heads (BERT's pooled first
  token; the decoder's last non-pad token), trained with cross-entropy over the classes;
* ``hfgen_seq2seq`` (``seq2seq_head``, default ``classification``) through
  ``HfGenSeq2SeqForSequenceClassification``, as transformers fine-tunes T5 and BART for classification
  (``T5ForSequenceClassification``): the input is the paragraph then eos (as the span-corruption encoder reads
  text), the decoder reads it shifted right, and a new head ``dense -> tanh -> out_proj`` scores the classes from the
  decoder's state at the eos, trained with cross-entropy over the classes. Or ``seq2seq_head="text_to_text"``:
  the LM head answers, in the span-corruption format (:func:`text_to_text_example`: input = paragraph,
  ``<extra_id_0>``, eos; target = ``<extra_id_0>``, then one word naming the class, :func:`label_token_ids`), the
  class scores being the decoder's logits of those words at the second step; that model stays an
  ``AutoModelForSeq2SeqLM``. Why the head is the default, measured with the transfer experiment's models (2 layers,
  hidden 128; 120 steps of 16 on 655 train paragraphs, scored on the validation split, learning rate 1e-3): text to
  text, the model from scratch and the span-corruption one both ended at the majority class (validation accuracy
  0.269 each): 120 steps mostly teach the LM head to put its mass on the 7 class words among 8,292 tokens (final
  training loss 7.65 from scratch); with the head, scratch reached 0.620.

With ``validation_fraction`` > 0 a validation split is carved out of the train split
(``hfgen.data.labelled.load_reference_manual_groups``): the model trains on the rest and is scored there, for
choosing settings without reading test; the metrics are then named ``validation_*``.

Accuracy and macro-F1 come from ``evaluate`` with the metric module hfgen ships (``hfgen.metrics``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import numpy as np
import torch
from transformers import (
    DataCollatorForSeq2Seq,
    DataCollatorWithPadding,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from ..data.user_data import TextDataArguments, first_rows, row_count
from ..models import (
    HfGenDecoderConfig,
    HfGenDecoderForSequenceClassification,
    HfGenEncoderConfig,
    HfGenEncoderForSequenceClassification,
    HfGenSeq2SeqConfig,
    HfGenSeq2SeqForConditionalGeneration,
    HfGenSeq2SeqForSequenceClassification,
)
from .arguments import EncoderModelArguments, build_config
from .core import (TrainedRun, check_sequence_length, load_model, log_run_start, loss_history, prepare_run, save_run,
                   train_and_evaluate, variant_title)

# model_type -> (config class, its sequence-classification model class): the families this objective fine-tunes
CLASSIFIER_CLASSES: dict[str, tuple[type[PreTrainedConfig], type[PreTrainedModel]]] = {
    "hfgen_encoder": (HfGenEncoderConfig, HfGenEncoderForSequenceClassification),
    "hfgen_decoder": (HfGenDecoderConfig, HfGenDecoderForSequenceClassification),
    "hfgen_seq2seq": (HfGenSeq2SeqConfig, HfGenSeq2SeqForSequenceClassification),
}
# How an encoder-decoder is fine-tuned: its classification head (default), or text to text with its LM head.
SEQ2SEQ_HEADS: dict[str, type[PreTrainedModel]] = {
    "classification": HfGenSeq2SeqForSequenceClassification,
    "text_to_text": HfGenSeq2SeqForConditionalGeneration,
}


@dataclass
class ClassificationModelArguments(EncoderModelArguments):
    """The pre-training recipes' model fields (``model_name_or_path`` = the pre-trained folder to start from), plus
    the family of a fresh model."""

    NOT_CONFIG_KEYS = ("model_type", "seq2seq_head")  # class attribute: the fields that are not config keys

    model_type: Literal[tuple(CLASSIFIER_CLASSES)] = field(default="hfgen_encoder", metadata={"help": (
        "Family of a model trained from scratch; with model_name_or_path the folder's config decides.")})
    seq2seq_head: Literal[tuple(SEQ2SEQ_HEADS)] = field(default="classification", metadata={"help": (
        "How hfgen_seq2seq is fine-tuned: 'classification' (HfGenSeq2SeqForSequenceClassification: the decoder's "
        "state at the input's eos, a new head, cross-entropy over the classes, as T5ForSequenceClassification) or "
        "'text_to_text' (the LM head answers a word naming the class).")})


@dataclass
class ClassificationDataArguments(TextDataArguments):
    """Which labelled examples to train and score on: the embedded task (``hfgen.data.labelled``), or the user's
    (``dataset_name`` / ``train_file`` with ``text_column`` and ``label_column_name``; scored on its validation
    split)."""

    label_column_name: str = field(default="label", metadata={"help": (
        "The column holding each example's class in the user's data (names or ids; the classes are the sorted "
        "distinct values of train, or the names of a ClassLabel column).")})

    max_length: int = field(default=128, metadata={"help": "Tokens per example (longer paragraphs are cut)."})
    max_train_samples: int | None = field(default=None, metadata={"help": (
        "Fine-tune on this many labelled examples: the first of a fixed shuffle (subset_seed) of the train split, so "
        "a smaller set is a subset of a larger one.")})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Score on the first N test examples."})
    subset_seed: int = field(default=0, metadata={"help": "Shuffle from which max_train_samples are taken."})
    test_fraction: float = field(default=0.25, metadata={"help": "Expected share of paragraphs in the test split."})
    min_characters: int = field(default=100, metadata={"help": "Shorter paragraphs are not examples."})
    validation_fraction: float = field(default=0.0, metadata={"help": (
        "When > 0: hold out this share of the train split as a validation split, train on the rest and score on "
        "the validation split instead of test (to choose settings, e.g. a learning rate, without seeing test).")})


@dataclass
class ClassificationResult:
    """What a fine-tuning run measured and where it saved the model."""

    output_dir: str
    eval_accuracy_before: float
    eval_accuracy: float
    eval_macro_f1: float
    train_examples: int | None  # None: a stream
    train_loss_history: list[tuple[int, float]]
    train_runtime: float
    metrics: dict[str, Any] = field(default_factory=dict)
    model: PreTrainedModel | None = field(default=None, repr=False)


def label_token_ids(tokenizer: PreTrainedTokenizerBase, labels: list[str] | tuple[str, ...]) -> list[int]:
    """The token a text-to-text classifier answers with for each class: the first token of ``" " + name``.

    Raises:
        ValueError: when two classes start with the same token (they could not be told apart).
    """
    ids = [tokenizer(" " + name, add_special_tokens=False)["input_ids"][0] for name in labels]
    if len(set(ids)) != len(ids):
        raise ValueError(f"The class names {list(labels)} do not start with distinct tokens "
                         f"({tokenizer.convert_ids_to_tokens(ids)}); rename them.")
    return ids


def text_to_text_example(tokenizer: PreTrainedTokenizerBase, text: str | list[str], max_length: int,
                         answer_id: int | None = None) -> dict[str, list[int]]:
    """One text-to-text classification example in the span-corruption format: ``input_ids`` = the tokens of
    ``text`` (cut to ``max_length - 2``), ``<extra_id_0>``, eos; with ``answer_id``, ``labels`` = ``<extra_id_0>``,
    the class word's token. The class is read from the decoder's second step.

    Raises:
        ValueError: when the tokenizer has no ``<extra_id_0>`` sentinel (see
            ``hfgen.training.span_corruption.load_span_corruption_tokenizer``).
    """
    from ..data.denoising import sentinel_token_ids

    sentinels = sentinel_token_ids(tokenizer)
    if not sentinels:
        raise ValueError("Text-to-text classification needs the sentinel <extra_id_0> in the tokenizer (span-"
                         "corruption format); use hfgen.training.span_corruption.load_span_corruption_tokenizer().")
    ids = tokenizer(text, truncation=True, max_length=max_length - 2, add_special_tokens=False)["input_ids"]
    example = {"input_ids": ids + [sentinels[0], tokenizer.eos_token_id], "attention_mask": [1] * (len(ids) + 2)}
    if answer_id is not None:
        example["labels"] = [sentinels[0], answer_id]
    return example


TEXT_TO_TEXT_ANSWER_STEP = 1  # the decoder step whose logits score the classes (step 0 is <extra_id_0>)


def _check_data_args(data_args: ClassificationDataArguments) -> None:
    for key in ("max_length", "max_train_samples", "max_eval_samples"):
        value = getattr(data_args, key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{key} must be a positive int{'' if key == 'max_length' else ' or None'}, "
                             f"got {value!r}.")
    if data_args.max_length < 4:
        raise ValueError(f"max_length must be at least 4, got {data_args.max_length}.")
    fraction = data_args.validation_fraction
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
        raise ValueError(f"validation_fraction must be a number in [0, 1), got {fraction!r}.")


def model_family(model_args: ClassificationModelArguments) -> str:
    """The ``model_type`` to fine-tune: the saved folder's, else ``model_args.model_type``."""
    if model_args.model_name_or_path is None:
        family = model_args.model_type
    else:
        family = PreTrainedConfig.get_config_dict(model_args.model_name_or_path)[0].get("model_type")
    if family not in CLASSIFIER_CLASSES:
        raise ValueError(f"Cannot fine-tune model_type {family!r} for classification; valid choices: "
                         f"{', '.join(CLASSIFIER_CLASSES)}.")
    return family


def load_classification_tokenizer(family: str, path: str | None = None,
                                  trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """A saved folder's tokenizer (running code its ``auto_map`` names only with ``trust_remote_code``), or the one
    the family's pre-training recipe starts from (so that a model from scratch has the same vocabulary as a
    pre-trained one)."""
    if path is not None and os.path.exists(os.path.join(path, "tokenizer_config.json")):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if family == "hfgen_encoder":
        from ..data import load_encoder_tokenizer

        return load_encoder_tokenizer()
    if family == "hfgen_seq2seq":
        from .span_corruption import load_span_corruption_tokenizer

        return load_span_corruption_tokenizer()
    from ..data import load_tokenizer

    return load_tokenizer()


def load_user_labelled(data_args: ClassificationDataArguments):
    """``(train, validation, class names)`` of the user's data, with columns "text" and "label" (a class id).

    The classes are the names of a ``ClassLabel`` label column, else the sorted distinct values of train's (as
    ``run_classification.py`` takes them).

    With ``streaming`` train stays a stream and the classes must be declared (a ``ClassLabel`` column: a stream
    cannot be read whole before training); the validation split is read into memory.

    Raises:
        ValueError: with ``streaming`` and a label column that is no ``ClassLabel``, or for a validation label that
            train does not have.
    """
    from datasets import ClassLabel, Dataset

    text, label = data_args.text_column, data_args.label_column_name
    data = data_args.load([text, label])
    renames = {old: new for old, new in ((text, "text"), (label, "label")) if old != new}  # a stream refuses a->a
    data = {split: dataset.select_columns([text, label]).rename_columns(renames) for split, dataset in data.items()}
    feature = (data["train"].features or {}).get("label")
    if data_args.streaming and not isinstance(feature, ClassLabel):
        raise ValueError(f"--streaming needs the classes declared before training: a ClassLabel column (e.g. "
                         f"parquet written by datasets with its features, or a Hub dataset that declares them); the "
                         f"label column {label!r} is {feature!r}. Load the data in memory (drop --streaming) to take "
                         f"the classes from train's values.")
    if data_args.streaming:
        validation = first_rows(data["validation"], data_args.max_eval_samples)
        return data["train"], Dataset.from_list(list(validation), features=validation.features), tuple(feature.names)
    if isinstance(feature, ClassLabel):
        return data["train"], data["validation"], tuple(feature.names)
    values = sorted(set(data["train"]["label"]))
    unknown = sorted(set(data["validation"]["label"]) - set(values), key=str)
    if unknown:
        raise ValueError(f"The validation split has labels that train has not: {unknown[:10]} (train's classes: "
                         f"{values[:20]}).")
    index = {value: i for i, value in enumerate(values)}
    names = tuple(str(value) for value in values)

    def to_ids(dataset):
        features = dataset.features.copy()
        features["label"] = ClassLabel(names=list(names))
        return dataset.map(lambda batch: {"label": [index[value] for value in batch["label"]]}, batched=True,
                           features=features, desc="class ids")

    return to_ids(data["train"]), to_ids(data["validation"]), names


def load_labelled_splits(data_args: ClassificationDataArguments, splits: tuple | None = None):
    """``(train, scored)`` of the labelled task, cut to ``max_train_samples`` / ``max_eval_samples``: the scored
    split is "test", or "validation" (carved out of "train") when ``data_args.validation_fraction`` > 0. ``splits``
    (``(train, scored)``, e.g. of :func:`load_user_labelled`) replaces the labelled task."""
    from ..data.labelled import load_reference_manual_groups

    if splits is not None:
        train, test = splits
    else:
        task = load_reference_manual_groups(data_args.test_fraction, min_characters=data_args.min_characters,
                                            validation_fraction=data_args.validation_fraction)
        train, test = task["train"], task["validation" if data_args.validation_fraction > 0 else "test"]
    if data_args.max_train_samples is not None and row_count(train) is None:  # a stream: its first rows
        train = first_rows(train, data_args.max_train_samples)
    elif data_args.max_train_samples is not None:
        if data_args.max_train_samples > len(train):
            raise ValueError(f"max_train_samples={data_args.max_train_samples} exceeds the {len(train)} labelled "
                             f"training examples.")
        train = train.shuffle(seed=data_args.subset_seed).select(range(data_args.max_train_samples))
    if data_args.max_eval_samples is not None:
        test = test.select(range(min(data_args.max_eval_samples, len(test))))
    return train, test


def finetune_classification(model_args: ClassificationModelArguments, data_args: ClassificationDataArguments,
                            training_args: TrainingArguments, callbacks: list[TrainerCallback] | None = None,
                            save: bool = True) -> ClassificationResult:
    """Fine-tune (or train from scratch) a classifier of the labelled task and save a Hub-ready folder.

    Works in one process and under ``torchrun``. The main process saves ``training_args.output_dir`` (with
    ``save``): weights, config (with ``id2label``) and model code -- loadable with
    ``AutoModelForSequenceClassification`` (``AutoModelForSeq2SeqLM`` for seq2seq text to text) -- tokenizer,
    ``all_results.json``, ``loss_curve.png`` and ``README.md``.

    Returns:
        Test accuracy before and after fine-tuning, test macro-F1, the number of labelled examples used, the
        logged training losses.
    """
    from ..metrics import load_metric

    _check_data_args(data_args)
    prepare_run(training_args, data_args)
    labels, user_splits = _classes_and_user_data(data_args, training_args)
    classifier = _build_classifier(model_args, data_args.max_length, labels)
    metric = load_metric("classification_report")
    classifier.model = load_model(classifier.model_class, classifier.config, model_args.model_name_or_path)
    if classifier.family == "hfgen_decoder" and classifier.config.pad_token_id is None:
        raise ValueError("The decoder's config has no pad_token_id: the classifier pools the last non-pad token.")
    with training_args.main_process_first(desc="tokenize the labelled task"):
        train, test = load_labelled_splits(data_args, user_splits)
        train, test = classifier.tokenize(train, test, data_args.preprocessing_num_workers)
    trainer = Trainer(model=classifier.model, args=training_args, train_dataset=train, eval_dataset=test,
                      processing_class=classifier.tokenizer, data_collator=classifier.collator(), callbacks=callbacks,
                      compute_metrics=classifier.metrics_function(metric, len(labels)),
                      preprocess_logits_for_metrics=classifier.class_scores)
    origin = "from " + model_args.model_name_or_path if model_args.model_name_or_path else "from scratch"
    log_run_start(training_args, f"fine-tuning {classifier.family} ({origin}) on {row_count(train) or 'streamed'} "
                                 f"labelled examples, scored on {len(test)}")
    run = train_and_evaluate(trainer)
    metrics = _scored_metrics(run, data_args.validation_fraction)
    if save:
        save_run(trainer, classifier.config, metrics, title=variant_title(classifier.config, "classification"),
                 task="text2text-classification" if classifier.text_to_text else "text-classification",
                 base_model=model_args.model_name_or_path, eval_points=run.eval_points())
    return ClassificationResult(
        output_dir=str(training_args.output_dir), eval_accuracy_before=run.before["eval_accuracy"],
        eval_accuracy=run.after["eval_accuracy"], eval_macro_f1=run.after["eval_macro_f1"],
        train_examples=row_count(train), train_loss_history=loss_history(trainer), train_runtime=run.train_runtime,
        metrics=metrics, model=trainer.model)


def _classes_and_user_data(data_args: ClassificationDataArguments, training_args: TrainingArguments):
    """``(class names, user splits or None)``: the user's data is opened before the model is built, since its
    classes come from the data; the embedded task's classes are ``hfgen.data.labelled.LABELS``."""
    if not data_args.uses_user_data:
        from ..data.labelled import LABELS

        return LABELS, None
    with training_args.main_process_first(desc="read the labelled data"):
        *user_splits, labels = load_user_labelled(data_args)
    return labels, user_splits


def _build_classifier(model_args: ClassificationModelArguments, max_length: int,
                      labels: tuple[str, ...]) -> _Classifier:
    """The family, tokenizer and config (with the classes) to fine-tune, checked before any weight is made."""
    family = model_family(model_args)
    if model_args.seq2seq_head not in SEQ2SEQ_HEADS:
        raise ValueError(f"seq2seq_head must be one of {', '.join(SEQ2SEQ_HEADS)}, got {model_args.seq2seq_head!r}.")
    config_class, model_class = CLASSIFIER_CLASSES[family]
    text_to_text = family == "hfgen_seq2seq" and model_args.seq2seq_head == "text_to_text"
    if family == "hfgen_seq2seq":
        model_class = SEQ2SEQ_HEADS[model_args.seq2seq_head]
    tokenizer = load_classification_tokenizer(family, model_args.model_name_or_path, model_args.trust_remote_code)
    config = build_config(model_args, tokenizer, config_class)
    config.id2label = dict(enumerate(labels))
    config.label2id = {name: index for index, name in enumerate(labels)}
    check_sequence_length(config, max_length, "max_length")
    answer_ids = None
    if text_to_text:
        answer_ids = label_token_ids(tokenizer, labels)
        text_to_text_example(tokenizer, "", max_length)  # the sentinel exists: fails before any weight
    return _Classifier(family, model_class, tokenizer, config, max_length, answer_ids)


@dataclass
class _Classifier:
    """A classifier being fine-tuned: how it reads examples, pads them and scores the classes."""

    family: str
    model_class: type[PreTrainedModel]
    tokenizer: PreTrainedTokenizerBase
    config: PreTrainedConfig
    max_length: int
    answer_ids: list[int] | None = None  # text to text: the token answering each class
    model: PreTrainedModel | None = None

    @property
    def text_to_text(self) -> bool:
        return self.answer_ids is not None

    def encode(self, batch: dict[str, list]) -> dict[str, list]:
        """Tokenized examples of a batch of ``text`` and ``label``, with ``labels`` as the model trains on them."""
        tokenizer, max_length = self.tokenizer, self.max_length
        if self.text_to_text:  # as span-corruption examples: text, <extra_id_0>, eos -> <extra_id_0>, class word
            examples = [text_to_text_example(tokenizer, text, max_length, self.answer_ids[label])
                        for text, label in zip(batch["text"], batch["label"])]
            return {key: [example[key] for example in examples] for key in ("input_ids", "attention_mask", "labels")}
        if self.family == "hfgen_seq2seq":  # as the span-corruption encoder reads text: eos last
            ids = tokenizer(batch["text"], truncation=True, max_length=max_length - 1,
                            add_special_tokens=False)["input_ids"]
            return {"input_ids": [row + [tokenizer.eos_token_id] for row in ids],
                    "attention_mask": [[1] * (len(row) + 1) for row in ids], "labels": batch["label"]}
        return {**tokenizer(batch["text"], truncation=True, max_length=max_length), "labels": batch["label"]}

    def tokenize(self, train, test, workers: int | None):
        """``train`` (a dataset, or a stream) and ``test`` mapped through :meth:`encode`."""
        columns = train.column_names
        in_memory = {"num_proc": workers, "desc": "tokenize train"} if row_count(train) is not None else {}
        train = train.map(self.encode, batched=True, remove_columns=columns, **in_memory)
        test = test.map(self.encode, batched=True, remove_columns=columns, num_proc=workers, desc="tokenize test")
        return train, test

    def collator(self) -> DataCollatorForSeq2Seq | DataCollatorWithPadding:
        return DataCollatorForSeq2Seq(self.tokenizer) if self.text_to_text else DataCollatorWithPadding(self.tokenizer)

    def class_scores(self, logits: Any, labels: torch.Tensor) -> torch.Tensor:
        """The (batch, classes) scores of a model output: the class words' logits at the answer step for text to
        text, else the logits."""
        logits = logits[0] if isinstance(logits, (tuple, list)) else logits
        return logits[:, TEXT_TO_TEXT_ANSWER_STEP, self.answer_ids] if self.text_to_text else logits

    def metrics_function(self, metric: Any, num_labels: int) -> Callable[[Any], dict[str, float]]:
        """Trainer's ``compute_metrics``: accuracy and macro-F1 of the class scores."""
        def compute_metrics(prediction) -> dict[str, float]:
            references = np.asarray(prediction.label_ids)
            if self.text_to_text:  # the class word's token id -> the class index
                references = np.asarray([self.answer_ids.index(int(token))
                                         for token in references[:, TEXT_TO_TEXT_ANSWER_STEP]])
            scores = np.asarray(prediction.predictions)
            result = metric.compute(predictions=scores.argmax(-1), references=references, num_labels=num_labels)
            return {"accuracy": result["accuracy"], "macro_f1": result["macro_f1"]}

        return compute_metrics


def _scored_metrics(run: TrainedRun, validation_fraction: float) -> dict[str, Any]:
    """The metrics a fine-tuning run reports; scored on a validation split, its scores are named ``validation_*``
    (the model card reports test accuracy only)."""
    metrics = run.metrics({"eval_accuracy": run.after["eval_accuracy"], "eval_macro_f1": run.after["eval_macro_f1"],
                           "eval_accuracy_before": run.before["eval_accuracy"], "eval_loss": run.after["eval_loss"]},
                          unit="examples")
    if validation_fraction <= 0:
        return metrics
    renamed = ("eval_macro_f1", "eval_loss", "eval_examples")
    return {(f"validation_{key.removeprefix('eval_')}" if key.startswith("eval_accuracy") or key in renamed
             else key): value for key, value in metrics.items()}
