"""hfgen_tabular: tokenization of scikit-learn's bundled tables, any-order generation, conditions, imputation,
save -> load, Auto classes and bad input. Tiny models (hidden 32, 2 layers): every test runs in about a second."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import AutoConfig, AutoModel

from hfgen import HfGenTabularConfig, HfGenTabularForGeneration
from hfgen.data.tables import SKLEARN_TABLES, load_sklearn_table
from hfgen.models.processing_hfgen_tabular import HfGenTabularProcessor, fit_columns

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_fine_bins=8)


def mixed_table() -> pd.DataFrame:
    """Strings, integers, a nullable number and a number with many decimals."""
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(40, generator=generator).double().tolist()
    return pd.DataFrame({
        "colour": ["red", "green", "blue", "red"] * 10,
        "count": [int(v * 10) % 7 for v in values],
        "size": [v if i % 5 else math.nan for i, v in enumerate(values)],
        "weight": [round(abs(v) * 100, 3) + i for i, v in enumerate(values)],
    })


def build_model(frame: pd.DataFrame, seed: int = 0, **overrides) -> HfGenTabularForGeneration:
    torch.manual_seed(seed)
    config = HfGenTabularConfig(columns=fit_columns(frame, num_bins=8), **{**TINY, **overrides})
    return HfGenTabularForGeneration(config).eval()


@pytest.fixture(scope="module")
def iris():
    return load_sklearn_table("iris").frame


@pytest.fixture(scope="module")
def iris_model(iris):
    return build_model(iris)


@pytest.mark.parametrize("name", SKLEARN_TABLES)
def test_tokenization_round_trip_is_exact_for_every_column(name):
    frame = load_sklearn_table(name).frame
    columns = fit_columns(frame)
    processor = HfGenTabularProcessor(columns, num_fine_bins=16)
    encoded = processor.encode(frame)
    decoded = processor.decode(**encoded)
    for column in frame.columns:
        assert list(decoded[column]) == list(frame[column]), column  # bit for bit
    # The tokens alone name the value's slice: drawn inside it, a number is within one slice width of the truth.
    drawn = processor.decode(encoded["input_ids"], generator=torch.Generator().manual_seed(0))
    for spec in columns:
        if spec["type"] == "numerical":
            widths = torch.tensor(spec["edges"]).diff() / 16
            error = (torch.tensor(drawn[spec["name"]]) - torch.tensor(frame[spec["name"]].to_numpy())).abs()
            assert (error <= widths.max() + 10.0 ** -(spec["decimals"] or 0)).all(), spec["name"]


def test_round_trip_of_strings_integers_and_missing_values():
    frame = mixed_table()
    processor = HfGenTabularProcessor(fit_columns(frame, num_bins=8), num_fine_bins=4)
    assert [c["type"] for c in processor.columns] == ["categorical", "categorical", "numerical", "numerical"]
    assert processor.columns[2]["nullable"] and not processor.columns[3]["nullable"]
    decoded = processor.decode(**processor.encode(frame))
    assert decoded["colour"] == list(frame["colour"]) and decoded["count"] == list(frame["count"])
    assert decoded["weight"] == list(frame["weight"])
    assert [v if v == v else "nan" for v in decoded["size"]] == [v if v == v else "nan" for v in frame["size"]]


def drawn_log_probs(model, sequences, order, known=None):
    """Sum of log p(cell | cells before it in order) from one teacher-forced forward (no cache)."""
    with torch.no_grad():
        logits = model(sequences, order=order).logits
    per_cell = torch.log_softmax(logits, -1).gather(-1, sequences[..., None])[..., 0]
    return per_cell.masked_fill(known, 0.0).sum(-1) if known is not None else per_cell.sum(-1)


@pytest.mark.parametrize("order", ["random", "chosen"])
def test_sampled_rows_log_prob_equals_the_product_of_the_conditionals(iris_model, iris, order):
    names = list(iris.columns)
    chosen = None if order == "random" else [names[i] for i in (4, 2, 0, 3, 1)]
    known = torch.zeros(6, iris_model.config.num_cells, dtype=torch.bool)
    cell_order = iris_model.cell_order(known, chosen or "random", torch.Generator().manual_seed(1))
    out = iris_model.sample(num_rows=6, order=cell_order, generator=torch.Generator().manual_seed(2))
    assert torch.equal(out.order, cell_order)
    if chosen:
        assert cell_order[0].tolist() == [8, 4, 5, 0, 1, 6, 7, 2, 3]  # target, petal length (bin, fine), ...
    assert torch.allclose(out.log_probs, drawn_log_probs(iris_model, out.sequences, cell_order), atol=1e-4)
    # Different orders give different factorizations of one row: the invariant is per order, not across them.
    assert len({tuple(o) for o in cell_order.tolist()}) > 1 or chosen


def test_conditional_generation_keeps_the_fixed_columns(iris_model, iris):
    conditions = {"target": ["virginica", "setosa", "setosa"], "sepal width (cm)": [3.0, 4.4, 2.0]}
    rows = iris_model.generate_rows(conditions=conditions, generator=torch.Generator().manual_seed(0))
    assert rows["target"] == conditions["target"] and rows["sepal width (cm)"] == conditions["sepal width (cm)"]
    assert len(rows["petal length (cm)"]) == 3
    iris_model.processor.encode(rows)  # every drawn value is a valid one
    single = iris_model.generate_rows(5, conditions={"target": "setosa"}, generator=torch.Generator().manual_seed(0))
    assert single["target"] == ["setosa"] * 5


def test_given_cells_are_not_counted_and_come_first(iris_model, iris):
    encoded = iris_model.processor.encode(iris.head(4), partial=False)
    known = torch.zeros_like(encoded["known"])
    known[:, [0, 1, 8]] = True  # sepal length (bin, fine) and the target
    order = iris_model.cell_order(known, "random", torch.Generator().manual_seed(3))
    assert set(order[:, :3].flatten().tolist()) == {0, 1, 8}
    out = iris_model.sample(encoded["input_ids"], known, order, generator=torch.Generator().manual_seed(4))
    assert torch.equal(out.sequences[known], encoded["input_ids"][known])
    assert torch.allclose(out.log_probs, drawn_log_probs(iris_model, out.sequences, order, known), atol=1e-4)


def test_imputation_fills_only_the_missing_cells():
    frame = mixed_table().head(12)
    model = build_model(mixed_table())
    holes = frame.copy().astype(object)
    holes.loc[[0, 3, 7], "weight"] = None
    holes.loc[[1, 3], "colour"] = None
    filled = model.impute(holes, generator=torch.Generator().manual_seed(0))
    for column in frame.columns:
        for row in range(len(frame)):
            given, value = holes.loc[row, column], filled[column][row]
            if given is None or (isinstance(given, float) and math.isnan(given)):
                # drawn; only the nullable column may draw its "missing" token again
                assert column == "size" or not (value is None or (isinstance(value, float) and math.isnan(value)))
            else:
                assert value == given, (column, row)
    model.processor.encode(filled)


def test_save_load_gives_identical_logits_through_the_auto_classes(iris_model, iris, tmp_path):
    iris_model.save_pretrained(tmp_path)
    assert {"configuration_hfgen_tabular.py", "modeling_hfgen_tabular.py", "processing_hfgen_tabular.py"} <= {
        p.name for p in tmp_path.iterdir()}
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, HfGenTabularConfig) and config.columns == iris_model.config.columns
    reloaded = AutoModel.from_pretrained(tmp_path)
    assert type(reloaded) is HfGenTabularForGeneration
    ids = iris_model.processor.encode(iris.head(5))["input_ids"]
    order = torch.stack([torch.randperm(9, generator=torch.Generator().manual_seed(i)) for i in range(5)])
    with torch.no_grad():
        assert torch.equal(iris_model(ids, order=order).logits, reloaded(ids, order=order).logits)
    a = iris_model.generate_rows(4, generator=torch.Generator().manual_seed(0))
    b = reloaded.generate_rows(4, generator=torch.Generator().manual_seed(0))
    assert a == b


def test_loss_is_the_mean_per_cell_negative_log_likelihood(iris_model, iris):
    ids = iris_model.processor.encode(iris.head(3))["input_ids"]
    out = iris_model(ids, labels=ids)
    assert torch.allclose(out.loss, -drawn_log_probs(iris_model, ids, None).sum() / ids.numel(), atol=1e-5)


def test_training_on_trainer_lowers_the_held_out_likelihood(iris, tmp_path):
    from hfgen.data.tables import split_table
    from hfgen.training.tabular import held_out_nll, train_tabular

    train, test = split_table(iris, 0.2, 0)
    model = build_model(train)
    before = held_out_nll(model, test)
    trainer = train_tabular(copy.deepcopy(model), train, test, str(tmp_path), max_steps=60, batch_size=32,
                            learning_rate=3e-3, eval_steps=30)
    after = held_out_nll(trainer.model, test)
    assert after < before - 3.0, (before, after)  # nats per row


@pytest.mark.parametrize("table, match", [
    ({"colour": ["red"], "count": [1], "size": [0.1], "weight": [5.0], "shape": ["round"]}, "Unknown column"),
    ({"colour": ["purple"], "count": [1], "size": [0.1], "weight": [5.0]}, "not one of its categories"),
    ({"colour": ["red"], "count": [1], "size": [0.1], "weight": ["heavy"]}, "expected a number"),
    ({"colour": ["red"], "count": [1], "size": [0.1], "weight": [math.nan]}, "not nullable"),
    ({"colour": ["red"], "count": [1], "size": [0.1], "weight": [1e9]}, "outside the range"),
    ({"colour": ["red"], "count": [1], "size": [0.1]}, "lacks the column"),
    ({"colour": ["red", "blue"], "count": [1], "size": [0.1], "weight": [5.0]}, "differ in length"),
])
def test_bad_tables_are_named(table, match):
    processor = HfGenTabularProcessor(fit_columns(mixed_table(), num_bins=8), num_fine_bins=4)
    with pytest.raises(ValueError, match=match):
        processor.encode(table)


def test_bad_model_input_is_named(iris_model, iris):
    ids = iris_model.processor.encode(iris.head(2))["input_ids"]
    with pytest.raises(ValueError, match="outside cell 8's tokens"):
        iris_model(ids.clone().index_fill_(1, torch.tensor([8]), 1))
    with pytest.raises(ValueError, match=r"integer tensor \[batch, 9\]"):
        iris_model(ids[:, :5])
    with pytest.raises(ValueError, match="permutation of the 9 cells"):
        iris_model(ids, order=torch.zeros(9, dtype=torch.long))
    with pytest.raises(ValueError, match="every column name once"):
        iris_model.generate_rows(2, order=["target"])
    with pytest.raises(ValueError, match="temperature"):
        iris_model.generate_rows(2, temperature=0.0)
    with pytest.raises(ValueError, match="num_rows"):
        iris_model.generate_rows(0)
    with pytest.raises(ValueError, match="not one of its categories"):
        iris_model.generate_rows(conditions={"target": ["daisy"]})


@pytest.mark.parametrize("columns, match", [
    ([{"name": "a", "type": "ordinal"}], "unknown type"),
    ([{"name": "a", "type": "numerical", "edges": [1.0, 1.0]}], "strictly increasing"),
    ([{"name": "a", "type": "categorical", "categories": []}], "non-empty list"),
    ([{"name": "a", "type": "categorical", "categories": [1]}] * 2, "twice"),
    ([{"name": "a", "type": "numerical", "edges": [0.0, 1.0], "decimals": 40}], "decimals"),
])
def test_bad_schemas_are_named(columns, match):
    with pytest.raises(ValueError, match=match):
        HfGenTabularConfig(columns=columns)


def test_a_config_without_columns_builds_no_model():
    with pytest.raises(ValueError, match="no columns"):
        HfGenTabularForGeneration(HfGenTabularConfig())


CHILD = """
import importlib.util, sys
import torch
from transformers import AutoModel
assert importlib.util.find_spec("hfgen") is None
model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
inputs = torch.load(sys.argv[2])
with torch.no_grad():
    logits = model(inputs["input_ids"], order=inputs["order"]).logits
rows = model.generate_rows(3, conditions={"target": "setosa"}, generator=torch.Generator().manual_seed(0))
torch.save({"logits": logits, "rows": rows, "module": type(model).__module__}, sys.argv[3])
"""


@pytest.mark.slow
def test_saved_folder_loads_and_generates_without_hfgen(iris_model, iris, tmp_path):
    """Code on the Hub: the folder loads with trust_remote_code where hfgen cannot be imported, same logits, same
    conditional rows from the same seed."""
    import os
    import subprocess
    import sys

    from test_hub_portability import isolated_pythonpath

    iris_model.save_pretrained(tmp_path / "model")
    ids = iris_model.processor.encode(iris.head(4))["input_ids"]
    inputs = {"input_ids": ids, "order": torch.stack([torch.randperm(9) for _ in range(4)])}
    torch.save(inputs, tmp_path / "inputs.pt")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "HF_", "TRANSFORMERS"))}
    env.update(PYTHONPATH=isolated_pythonpath(tmp_path), HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS=str(torch.get_num_threads()))
    (tmp_path / "cwd").mkdir()
    result = subprocess.run([sys.executable, "-S", "-c", CHILD, str(tmp_path / "model"), str(tmp_path / "inputs.pt"),
                             str(tmp_path / "out.pt")], cwd=tmp_path / "cwd", env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    remote = torch.load(tmp_path / "out.pt")
    assert remote["module"].startswith("transformers_modules")
    with torch.no_grad():
        assert torch.equal(remote["logits"], iris_model(**inputs).logits)
    local = iris_model.generate_rows(3, conditions={"target": "setosa"}, generator=torch.Generator().manual_seed(0))
    assert remote["rows"] == local


@pytest.mark.parametrize("name", SKLEARN_TABLES)
def test_rows_as_text_parse_back_exactly(name):
    """GReaT's serialization ("column is value, ...", random column order) parses back to the same row for every
    row of the table; a line with a missing column, an unknown category or text for a number parses to None."""
    from hfgen.training.tabular import parse_row, serialize_rows

    frame = load_sklearn_table(name).frame
    processor = HfGenTabularProcessor(fit_columns(frame), num_fine_bins=16)
    texts = serialize_rows(frame, seed=0)
    assert texts[0] != serialize_rows(frame, seed=1)[0]  # the column order is drawn per row
    assert [parse_row(t, processor) for t in texts] == frame.to_dict("records")
    first = texts[0].split(", ")
    assert parse_row(", ".join(first[1:]), processor) is None
    assert parse_row(", ".join(first + first[:1]), processor) is None
    column = processor.columns[0]["name"]
    assert parse_row(", ".join(f"{column} is many" if p.startswith(f"{column} is") else p for p in first),
                     processor) is None


def collated_orders(collator, indices, ids) -> list[tuple[int, ...]]:
    return [tuple(o) for o in collator([{"input_ids": ids, "index": torch.tensor(i)} for i in indices])["order"]
            .tolist()]


def test_random_orders_are_uniform_and_keyed_by_seed_epoch_and_row_index():
    """Three one-cell (string) columns: each of the 3! orders is equally likely over 6,000 row indices
    (chi-square, 5 degrees of freedom, p = 1e-4), and a row's order depends on (seed, epoch, index) only."""
    from scipy.stats import chi2

    from hfgen.training.tabular import RandomOrderCollator

    frame = pd.DataFrame({"a": ["x", "y"] * 4, "b": ["u", "v", "w", "u"] * 2, "c": ["p", "q"] * 4})
    processor = build_model(frame).processor
    ids = processor.encode(frame)["input_ids"][0]
    collator = RandomOrderCollator(processor, seed=3)
    orders = collated_orders(collator, range(6000), ids)
    counts = torch.tensor([orders.count(p) for p in set(orders)], dtype=torch.float64)
    assert len(counts) == 6 and sorted(orders[0]) == [0, 1, 2]
    statistic = ((counts - 1000) ** 2 / 1000).sum().item()
    assert statistic < chi2.ppf(1 - 1e-4, 5), counts
    # the batch a row lands in does not matter (2 processes see other batches than 1), the epoch and seed do
    assert collated_orders(collator, [7, 11], ids) == [orders[7], orders[11]]
    assert collated_orders(collator, range(100, 110), ids) == orders[100:110]
    collator.epoch = 1
    assert collated_orders(collator, range(60), ids) != orders[:60]
    assert collated_orders(RandomOrderCollator(processor, seed=4), range(60), ids) != orders[:60]


@pytest.mark.slow
def test_recipe_two_processes_train_the_weights_of_one(tmp_path):
    """recipes/train_tabular.py under torchrun x2 (batch 16 each) and one process (batch 32): the same checkpoint
    weights, since every row's column order is keyed by its index, not drawn per process. Three steps: iris's 102
    training rows fill three global batches of 32; the fourth is 6 rows in one process but 16 + 16 (wrapped
    around) in two (Accelerate's even_batches), which trains other weights by design."""
    from safetensors.torch import load_file

    from test_ddp_equivalence import REPO, assert_same_weights, launch

    flags = ["--dataset", "iris", "--max_steps", "3", "--eval_steps", "3", "--hidden_size", "32",
             "--num_hidden_layers", "2", "--num_bins", "8", "--num_fine_bins", "4", "--embedding_dropout", "0"]
    for processes, batch in ((1, "32"), (2, "16")):
        launch(REPO / "recipes" / "train_tabular.py",
               [*flags, "--batch_size", batch, "--output_dir", str(tmp_path / str(processes))], processes)
    path = Path("checkpoints") / "checkpoint-3" / "model.safetensors"
    assert_same_weights(load_file(tmp_path / "1" / path), load_file(tmp_path / "2" / path), "tabular")
