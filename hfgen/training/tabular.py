"""Training the tabular generator on Trainer, and the "rows as text" route (GReaT, Borisov et al. 2023).

``hfgen_tabular``: every batch draws a new random column order per row (:class:`RandomOrderCollator`), so the
model learns every conditional ``p(cell | any subset of the row)``; the loss is the mean negative log-likelihood
per cell. Early stopping keeps the step with the best held-out loss (Trainer's ``load_best_model_at_end``).

GReaT: rows are written as ``"column is value, column is value, ..."`` in a random column order, a causal language
model (SmolLM2 through ``hfgen.pretrained``, LoRA adapters) is fine-tuned on them, and sampled rows are parsed back
(rows that do not parse into every column with a valid value are dropped and drawn again).
"""

from __future__ import annotations

import functools
import logging
import math
import re
from collections.abc import Mapping, Sequence

import pandas as pd
import torch
from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

from hfgen.data.denoising import DenoisingEpochCallback, ExampleKeyedNoise
from hfgen.models import HfGenTabularConfig, HfGenTabularForGeneration
from hfgen.models.processing_hfgen_tabular import HfGenTabularProcessor, fit_columns, is_missing

logger = logging.getLogger(__name__)


def tabular_config(frame: pd.DataFrame, num_bins: int = 32, num_fine_bins: int = 16, categorical: Sequence[str] = (),
                   **decoder_keys) -> HfGenTabularConfig:
    """A config whose schema is fitted on ``frame`` (``processing_hfgen_tabular.fit_columns``)."""
    columns = fit_columns(frame, num_bins=num_bins, categorical=categorical)
    return HfGenTabularConfig(columns=columns, num_fine_bins=num_fine_bins, **decoder_keys)


class RandomOrderCollator(ExampleKeyedNoise):
    """Stacks encoded rows and draws a random column order for each (a numerical column's bin before its fine
    cell), unless the row carries its own ``order``; every cell is a label. A row's order is a function of
    ``(seed, epoch, the row's index)`` (its ``index``, else its tokens): the same under any number of processes
    and after a resume (:class:`~hfgen.data.denoising.DenoisingEpochCallback` keeps ``epoch``)."""

    def __init__(self, processor: HfGenTabularProcessor, seed: int | None = None):
        self.processor = processor
        self.seed = self.resolve_seed(seed)

    def __call__(self, features: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        input_ids = torch.stack([f["input_ids"] for f in features])
        if "order" in features[0]:
            order = torch.stack([f["order"] for f in features])
        else:
            keys = [[int(f["index"])] if "index" in f else f["input_ids"].tolist() for f in features]
            columns = torch.stack([torch.from_numpy(self.example_rng(key).permutation(len(self.processor.columns)))
                                   for key in keys])
            order = self.processor.cells_in_column_order(columns)
        return {"input_ids": input_ids, "order": order, "labels": input_ids.clone()}


def encoded_rows(processor: HfGenTabularProcessor, frame: pd.DataFrame,
                 order_seed: int | None = None) -> list[dict[str, torch.Tensor]]:
    """One ``{"input_ids", "index"}`` per row (a list: Trainer batches any sequence; the index keys the row's
    random order); with ``order_seed`` also a fixed random ``order`` per row, so that a held-out loss compares
    from one evaluation to the next."""
    input_ids = processor.encode(frame)["input_ids"]
    rows = [{"input_ids": row, "index": torch.tensor(i)} for i, row in enumerate(input_ids)]
    if order_seed is not None:
        generator = torch.Generator().manual_seed(order_seed)
        columns = torch.rand(len(rows), len(processor.columns), generator=generator).argsort(dim=1)
        for row, order in zip(rows, processor.cells_in_column_order(columns)):
            row["order"] = order
    return rows


def train_tabular(model: HfGenTabularForGeneration, train: pd.DataFrame, evaluation: pd.DataFrame,
                  output_dir: str, max_steps: int = 2000, batch_size: int = 64, learning_rate: float = 1e-3,
                  eval_steps: int = 100, seed: int = 0, report_to: str | list[str] = "none") -> Trainer:
    """Train with random orders; keep the step with the lowest held-out loss. Returns the Trainer (its model is
    the best one, its ``state.log_history`` the losses)."""
    args = TrainingArguments(
        output_dir=output_dir, max_steps=max_steps, per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=256, learning_rate=learning_rate, weight_decay=0.01, warmup_steps=max_steps // 20,
        lr_scheduler_type="cosine", eval_strategy="steps", eval_steps=eval_steps, save_strategy="steps",
        save_steps=eval_steps, save_total_limit=1, load_best_model_at_end=True, metric_for_best_model="eval_loss",
        logging_steps=max(1, eval_steps // 2), report_to=report_to, use_cpu=True, seed=seed,
        remove_unused_columns=False, dataloader_num_workers=0)
    collator = RandomOrderCollator(model.processor, seed=seed)
    trainer = Trainer(model=model, args=args, train_dataset=encoded_rows(model.processor, train),
                      eval_dataset=encoded_rows(model.processor, encodable_rows(model.processor, evaluation),
                                               order_seed=seed),
                      data_collator=collator, callbacks=[DenoisingEpochCallback(collator)])
    trainer.train()
    return trainer


@torch.no_grad()
def held_out_nll(model: HfGenTabularForGeneration, frame: pd.DataFrame, orders: int = 4, seed: int = 0) -> float:
    """Mean negative log-likelihood per row (nats, tokens only) over ``orders`` random column orders, on the rows
    the schema can encode (:func:`encodable_rows`)."""
    frame = encodable_rows(model.processor, frame)
    model.eval()
    input_ids = model.processor.encode(frame)["input_ids"]
    generator = torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(orders):
        columns = torch.rand(len(frame), len(model.processor.columns), generator=generator).argsort(dim=1)
        logits = model(input_ids, order=model.processor.cells_in_column_order(columns)).logits
        total += -torch.log_softmax(logits, -1).gather(-1, input_ids[..., None]).sum().item()
    return total / orders / len(frame)


def encodable_rows(processor: HfGenTabularProcessor, frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``frame`` the schema can encode: a held-out value outside the training range or categories has
    no token."""
    return frame[[_encodes(processor, row) for row in frame.to_dict("records")]]


def _encodes(processor: HfGenTabularProcessor, row: dict) -> bool:
    try:
        processor.encode({k: [v] for k, v in row.items()})
    except ValueError:
        return False
    return True


def sample_table(model: HfGenTabularForGeneration, num_rows: int, batch_size: int = 500, seed: int = 0,
                 **kwargs) -> pd.DataFrame:
    """``num_rows`` generated rows as a DataFrame, drawn in batches."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    parts = [pd.DataFrame(model.generate_rows(min(batch_size, num_rows - start), generator=generator, **kwargs))
             for start in range(0, num_rows, batch_size)]
    return pd.concat(parts, ignore_index=True)


# ---- rows as text (GReaT) -------------------------------------------------------------------------------------

def format_value(value: object) -> str:
    """A cell as text: floats with Python's shortest exact repr, missing cells as ``None``."""
    return "None" if is_missing(value) else repr(value) if isinstance(value, float) else str(value)


def serialize_rows(frame: pd.DataFrame, seed: int | None = 0) -> list[str]:
    """GReaT's text encoding, ``"a is 1.5, b is x"``, each row in its own random column order (``seed`` None:
    the table's order)."""
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    columns = list(frame.columns)
    texts = []
    for row in frame.itertuples(index=False):
        order = torch.randperm(len(columns), generator=generator).tolist() if generator else range(len(columns))
        texts.append(", ".join(f"{columns[i]} is {format_value(row[i])}" for i in order))
    return texts


@functools.lru_cache(maxsize=8)
def _cell_pattern(names: tuple[str, ...]) -> re.Pattern:
    longest_first = sorted(names, key=len, reverse=True)  # "mean radius" before "radius"
    return re.compile(r"(?:^|, )(" + "|".join(map(re.escape, longest_first)) + r") is ")


def parse_row(text: str, processor: HfGenTabularProcessor) -> dict | None:
    """One generated line back into ``{column: value}``, or None when a column is missing, repeated or holds a
    value the schema refuses (unknown category, not a number, outside the fitted range)."""
    matches = list(_cell_pattern(tuple(processor.names)).finditer(text))
    row = {}
    for match, following in zip(matches, [*matches[1:], None]):
        if match.group(1) in row:
            return None
        row[match.group(1)] = text[match.end():following.start() if following else len(text)].strip()
    if set(row) != set(processor.names):
        return None
    return _typed_row(row, processor)


def _typed_row(row: dict, processor: HfGenTabularProcessor) -> dict | None:
    typed = {}
    for column in processor.columns:
        text = row[column["name"]]
        if column["type"] == "categorical":
            lookup = {format_value(c): c for c in column["categories"]}
            if text not in lookup:
                return None
            typed[column["name"]] = lookup[text]
            continue
        try:
            value = float(text)
        except ValueError:
            return None
        if not column["edges"][0] <= value <= column["edges"][-1]:  # (NaN fails too)
            return None
        typed[column["name"]] = value
    return typed


def great_model(max_length: int = 512, lora_rank: int = 16):
    """SmolLM2-135M (hfgen decoder, ``hfgen.pretrained``) with LoRA adapters on every linear layer, and its
    tokenizer."""
    from peft import LoraConfig, get_peft_model

    from hfgen.pretrained import load_smollm2
    from hfgen.training.peft_defaults import default_target_modules

    model, tokenizer = load_smollm2()
    tokenizer.model_max_length = max_length
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    lora = LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, lora_dropout=0.05,
                      target_modules=default_target_modules(model), task_type="CAUSAL_LM")
    return get_peft_model(model, lora), tokenizer


def train_great(frame: pd.DataFrame, output_dir: str, max_steps: int = 300, batch_size: int = 8,
                learning_rate: float = 1e-3, seed: int = 0, epochs_of_orders: int = 4):
    """Fine-tune SmolLM2 + LoRA on ``frame`` as text (each row in ``epochs_of_orders`` random column orders).
    Returns ``(model, tokenizer)``."""
    model, tokenizer = great_model()
    texts = [t for k in range(epochs_of_orders) for t in serialize_rows(frame, seed=seed + k)]
    dataset = [tokenizer(t + tokenizer.eos_token, truncation=True) for t in texts]
    args = TrainingArguments(output_dir=output_dir, max_steps=max_steps, per_device_train_batch_size=batch_size,
                             learning_rate=learning_rate, lr_scheduler_type="cosine", warmup_steps=max_steps // 20,
                             logging_steps=max(1, max_steps // 10), save_strategy="no", report_to="none",
                             use_cpu=True, seed=seed, remove_unused_columns=False)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator).train()
    return model.eval(), tokenizer


@torch.no_grad()
def sample_great(model, tokenizer, processor: HfGenTabularProcessor, num_rows: int, seed: int = 0,
                 batch_size: int = 32, max_new_tokens: int = 400, max_tries: int = 20) -> tuple[pd.DataFrame, float]:
    """``num_rows`` parsed rows and the fraction of generated lines that parsed. Each line starts from a random
    column's name (GReaT's "random feature" start), then the model writes the rest."""
    torch.manual_seed(seed)
    rows, generated = [], 0
    for _ in range(max_tries * math.ceil(num_rows / batch_size)):
        if len(rows) >= num_rows:
            break
        starts = [processor.names[i] + " is" for i in torch.randint(len(processor.names), (batch_size,)).tolist()]
        tokenizer.padding_side = "left"
        inputs = tokenizer(starts, return_tensors="pt", padding=True)
        output = model.generate(**inputs, do_sample=True, temperature=1.0, top_k=0, max_new_tokens=max_new_tokens,
                                pad_token_id=tokenizer.pad_token_id)
        texts = tokenizer.batch_decode(output, skip_special_tokens=True)
        generated += len(texts)
        rows += [row for row in (parse_row(t.strip(), processor) for t in texts) if row is not None]
    if len(rows) < num_rows:
        logger.warning("GReaT: only %d of %d rows parsed after %d lines", len(rows), num_rows, generated)
    return pd.DataFrame(rows[:num_rows]), len(rows) / max(generated, 1)


# ---- evaluation ------------------------------------------------------------------------------------------------

def _features(frames: Sequence[pd.DataFrame], target: str) -> list[pd.DataFrame]:
    """One-hot categorical columns, the same dummy columns for every frame."""
    joined = pd.concat([f.drop(columns=[target]) for f in frames], keys=range(len(frames)))
    encoded = pd.get_dummies(joined, dtype=float).fillna(0.0)
    return [encoded.xs(i) for i in range(len(frames))]


def machine_learning_efficacy(train: pd.DataFrame, test: pd.DataFrame, target: str, task: str,
                              seed: int = 0) -> float:
    """Train a random forest on ``train``, score it on the real ``test`` rows: macro F1 (classification) or R^2
    (regression). With synthetic ``train`` this is "train on synthetic, test on real"."""
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
    from sklearn.metrics import f1_score, r2_score

    x_train, x_test = _features([train, test], target)
    if task == "classification":
        model = RandomForestClassifier(n_estimators=200, random_state=seed, n_jobs=1)
        model.fit(x_train, train[target].astype(str))
        return float(f1_score(test[target].astype(str), model.predict(x_test), average="macro"))
    model = RandomForestRegressor(n_estimators=200, random_state=seed, n_jobs=1)
    model.fit(x_train, train[target].astype(float))
    return float(r2_score(test[target].astype(float), model.predict(x_test)))


def distance_to_closest_record(synthetic: pd.DataFrame, real: pd.DataFrame) -> float:
    """Median over ``synthetic`` rows of the Euclidean distance to the closest ``real`` row, every numeric column
    scaled to [0, 1] by the real rows' range, other columns one-hot (sdmetrics' DCR convention). (A two-valued
    numeric column such as diabetes' ``sex`` stays numeric: a generator that models it as a number is not charged
    a whole one-hot mismatch for a value next to a real one.)"""
    from sklearn.neighbors import NearestNeighbors

    synthetic, real = synthetic[list(real.columns)], real.copy()
    numeric = [c for c in real.columns if pd.api.types.is_numeric_dtype(real[c])]
    low, span = real[numeric].min(), (real[numeric].max() - real[numeric].min()).replace(0, 1)
    frames = [f.assign(**{c: (f[c].astype(float) - low[c]) / span[c] for c in numeric}).astype(
        {c: str for c in real.columns if c not in numeric}) for f in (synthetic, real)]
    encoded = pd.get_dummies(pd.concat(frames, keys=(0, 1)), dtype=float).fillna(0.0)
    neighbours = NearestNeighbors(n_neighbors=1).fit(encoded.xs(1).to_numpy())
    distances, _ = neighbours.kneighbors(encoded.xs(0).to_numpy())
    return float(pd.Series(distances[:, 0]).median())
