"""Issue 8's experiments: each core piece against a plain formula or an invariant, and a tiny end-to-end run of
every recipe under recipes/experiments/ (files written, every cell holding one value per seed)."""

from __future__ import annotations

import importlib.util
import json
import math
import statistics
from pathlib import Path

import pytest
import torch
from torch import nn

from hfgen.experiments import distinct_n, entropy_from_logits, kurtosis, mean_spread
from hfgen.experiments.lm import BYTE_VOCAB_SIZE, eval_blocks, mask_tokens, random_blocks
from hfgen.experiments.max_retrieval import MaxRetrievalModel, make_max_retrieval_batch
from hfgen.experiments.quantization import W8A8FakeQuantizer, fake_quantize_asymmetric, fake_quantize_symmetric
from hfgen.models.softmax import ADAPTIVE_TEMPERATURE_POLY

RECIPES = Path(__file__).resolve().parent.parent / "recipes" / "experiments"


def _recipe(name: str):
    spec = importlib.util.spec_from_file_location(f"experiment_{name}", RECIPES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- metrics against plain formulas
def test_kurtosis_matches_plain_moments():
    x = torch.randn(3, 17, generator=torch.Generator().manual_seed(0)) ** 3
    for row, k in zip(x.tolist(), kurtosis(x, dim=-1).tolist()):
        mu = sum(row) / len(row)
        m2 = sum((v - mu) ** 2 for v in row) / len(row)
        m4 = sum((v - mu) ** 4 for v in row) / len(row)
        assert k == pytest.approx(m4 / m2**2, rel=1e-9)
    gaussian = torch.randn(200_000, generator=torch.Generator().manual_seed(1))
    assert kurtosis(gaussian, dim=0).item() == pytest.approx(3.0, abs=0.05)  # a Gaussian's kurtosis is 3


def test_distinct_n_matches_counting():
    rng = torch.Generator().manual_seed(0)
    sequences = [torch.randint(0, 4, (int(n),), generator=rng).tolist() for n in (7, 1, 0, 12)]
    for n in (1, 2, 3):
        grams = [tuple(s[i : i + n]) for s in sequences for i in range(len(s) - n + 1)]
        assert distinct_n(sequences, n) == len(set(grams)) / len(grams)
    assert distinct_n([[1, 2]], 3) == 0.0
    with pytest.raises(ValueError, match="n must be"):
        distinct_n([[1]], 0)


def test_entropy_from_logits_matches_formula():
    logits = torch.tensor([[0.3, -1.0, 2.0, float("-inf")], [0.0, 0.0, 0.0, 0.0]])
    for row, h in zip(logits.tolist(), entropy_from_logits(logits).tolist()):
        z = sum(math.exp(v) for v in row)
        p = [math.exp(v) / z for v in row]
        assert h == pytest.approx(-sum(q * math.log(q) for q in p if q > 0), rel=1e-9)


def test_mean_spread_matches_statistics():
    values = [1.0, 4.0, 2.5]
    s = mean_spread(values)
    assert s["mean"] == pytest.approx(statistics.mean(values))
    assert s["std"] == pytest.approx(statistics.stdev(values))
    assert (s["min"], s["max"], s["n"]) == (1.0, 4.0, 3)
    assert mean_spread([2.0])["std"] == 0.0
    with pytest.raises(ValueError):
        mean_spread([])


# ---------------------------------------------------------------- quantization
def _plain_affine(x: torch.Tensor, scale: float, zero: int, qmin: int, qmax: int) -> torch.Tensor:
    return (torch.clamp(torch.round(x / scale) + zero, qmin, qmax) - zero) * scale


def test_asymmetric_quantizer_matches_min_max_formula():
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 3 + 1
    lo, hi = min(x.min().item(), 0.0), max(x.max().item(), 0.0)  # the range always holds zero exactly
    scale = (hi - lo) / 255
    zero = int(min(max(0 - round(lo / scale), 0), 255))
    expected = _plain_affine(x, scale, zero, 0, 255)
    got = fake_quantize_asymmetric(x)
    assert torch.allclose(got, expected, atol=1e-5)
    assert (got - x).abs().max() <= scale / 2 + 1e-5  # round trip within half a step inside the range
    assert torch.allclose(fake_quantize_asymmetric(got), got, atol=1e-5)  # idempotent
    assert len(torch.unique(got)) <= 256


def test_symmetric_quantizer_matches_min_max_formula():
    w = torch.randn(64, 32, generator=torch.Generator().manual_seed(1))
    scale = w.abs().max().item() / 127.5  # torch's symmetric range: max|w| / ((qmax - qmin) / 2)
    expected = _plain_affine(w, scale, 0, -128, 127)
    got = fake_quantize_symmetric(w)
    assert torch.allclose(got, expected, atol=1e-6)
    assert (got - w).abs().max() <= scale / 2 + 1e-6


def test_w8a8_on_one_linear_matches_plain_formula_and_restores():
    torch.manual_seed(0)
    layer = nn.Linear(8, 5)

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = layer

        def forward(self, x):
            return self.proj(x)

    model = Wrapper()
    x = torch.randn(16, 8)
    before = model(x).detach().clone()
    weight = layer.weight.detach().clone()  # quantize() overwrites it
    quantizer = W8A8FakeQuantizer(model)
    with pytest.raises(ValueError, match="calibrate"):
        quantizer.quantize()
    quantizer.calibrate([{"x": x}])
    quantizer.quantize()
    got = model(x)
    fq_in = fake_quantize_asymmetric(x)
    plain = fq_in @ fake_quantize_symmetric(weight).T + layer.bias.detach()
    out_lo, out_hi = min(before.min().item(), 0.0), max(before.max().item(), 0.0)
    scale = (out_hi - out_lo) / 255
    zero = int(min(max(-round(out_lo / scale), 0), 255))
    expected = _plain_affine(plain, scale, zero, 0, 255)
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.equal(got, before)
    quantizer.restore()
    assert torch.equal(model(x), before)


def test_w8a8_on_decoder_is_close_and_restores(tmp_path):
    from hfgen.experiments.lm import new_decoder

    model = new_decoder(0, BYTE_VOCAB_SIZE, hidden_size=32, num_hidden_layers=1, num_attention_heads=2).eval()
    ids = torch.randint(0, BYTE_VOCAB_SIZE, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(input_ids=ids).logits.clone()
        quantizer = W8A8FakeQuantizer(model)
        assert quantizer.layers, "the decoder layers' outputs (residual stream) are quantized too"
        quantizer.calibrate([{"input_ids": ids}])
        quantizer.quantize()
        quantized = model(input_ids=ids).logits
        quantizer.restore()
        after = model(input_ids=ids).logits
    assert torch.equal(after, before)
    assert not torch.equal(quantized, before)
    assert (quantized - before).abs().max() < 0.1 * before.abs().max()


# ---------------------------------------------------------------- max retrieval
def test_max_retrieval_batch_invariants():
    features, labels = make_max_retrieval_batch(64, 9, 5, torch.Generator().manual_seed(0))
    assert features.shape == (64, 9, 6) and labels.shape == (64,)
    priority, classes = features[..., 0], features[..., 1:]
    assert ((priority >= 0) & (priority < 1)).all()
    assert torch.equal(classes.sum(-1), torch.ones(64, 9)) and set(classes.unique().tolist()) <= {0.0, 1.0}
    for b in range(64):
        best = max(range(9), key=lambda i: priority[b, i].item())
        assert labels[b].item() == classes[b, best].argmax().item()
    again, _ = make_max_retrieval_batch(64, 9, 5, torch.Generator().manual_seed(0))
    assert torch.equal(features, again)
    with pytest.raises(ValueError, match="num_items"):
        make_max_retrieval_batch(2, 0, 5)


def test_max_retrieval_adaptive_attention_is_the_seed_formula():
    torch.manual_seed(0)
    model = MaxRetrievalModel(num_classes=4, hidden_size=16)
    with torch.no_grad():
        model.query.mul_(40)  # sharper logits: the entropies then span the polynomial's active range
        features, _ = make_max_retrieval_batch(6, 50, 4, torch.Generator().manual_seed(1))
        items = model.item_encoder(features)
        scores = (model.key(items) @ model.query) * model.scaling
        adaptive = model(features, "adaptive_temperature").attention
        standard = model(features, "standard").attention
    assert torch.allclose(standard, torch.softmax(scores, -1), atol=1e-6)
    for row, got in zip(scores.double(), adaptive.double()):
        p = torch.softmax(row, -1)
        h = -(p * torch.log(p + 1e-9)).sum().item()
        poly = sum(c * h ** (len(ADAPTIVE_TEMPERATURE_POLY) - 1 - i) for i, c in enumerate(ADAPTIVE_TEMPERATURE_POLY))
        beta = max(poly, 1.0) if h > 0.5 else 1.0
        assert torch.allclose(got, torch.softmax(row * beta, -1), atol=1e-5)
    with pytest.raises(ValueError, match="softmax_variant"):
        model(features, "clipped")


# ---------------------------------------------------------------- language-model helpers
def test_mask_tokens_invariants():
    blocks = torch.randint(0, 200, (32, 40), generator=torch.Generator().manual_seed(0))
    batch = mask_tokens(blocks, 257, 258, torch.Generator().manual_seed(1))
    chosen = batch["labels"] != -100
    assert torch.equal(batch["labels"][chosen], blocks[chosen])
    assert torch.equal(batch["input_ids"][~chosen], blocks[~chosen])  # unchosen tokens untouched
    assert chosen.any(dim=1).all()
    assert 0.10 < chosen.float().mean().item() < 0.20
    masked = (batch["input_ids"] == 257) & chosen
    assert 0.7 < masked.sum().item() / chosen.sum().item() < 0.9


def test_blocks_are_windows_of_the_stream():
    stream = torch.arange(100)
    blocks = eval_blocks(stream, 16)
    assert torch.equal(blocks.reshape(-1), stream[:96])
    windows = random_blocks(stream, 10, 5, torch.Generator().manual_seed(0))
    assert all(torch.equal(w, torch.arange(w[0].item(), w[0].item() + 10)) for w in windows)
    with pytest.raises(ValueError, match="fewer than one block"):
        eval_blocks(stream, 200)


def test_sampling_entropy_grows_with_temperature():
    from hfgen.experiments.lm import new_decoder

    recipe = _recipe("sampling_temperature")
    model = new_decoder(0, BYTE_VOCAB_SIZE, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        initializer_range=0.2).eval()
    blocks = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    temps = [recipe.next_token_entropy(model, blocks, "temperature", t) for t in (0.5, 1.0, 2.0)]
    assert temps[0] < temps[1] < temps[2]
    assert recipe.next_token_entropy(model, blocks, "top_k", 5) < temps[1]
    assert recipe.next_token_entropy(model, blocks, "top_k", 1) == pytest.approx(0.0, abs=1e-9)
    assert recipe.next_token_entropy(model, blocks, "top_p", 0.5) < temps[1]


# ---------------------------------------------------------------- tiny end-to-end runs of every recipe
def _check_outputs(out: Path, png: str, cells: int, seeds: int) -> dict:
    for name in ("config.json", "results.json", "results.md", png):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    assert json.loads((out / "config.json").read_text()) == results["config"]
    assert len(results["rows"]) == cells
    for row in results["rows"]:
        for values in row["metrics"].values():
            assert values is None or len(values) == seeds
    text = (out / "results.md").read_text()
    assert "± " in text and "## Discussion" in text
    return results


def test_adaptive_temperature_recipe_tiny(tmp_path):
    results = _recipe("adaptive_temperature").main(["--seeds", "0", "1", "--steps", "3", "--eval_sizes", "16", "64",
                                                    "--eval_sets", "8", "--output_dir", str(tmp_path)])
    _check_outputs(tmp_path, "adaptive_temperature.png", cells=4, seeds=2)
    # the run's cost is recorded beside the results ...
    environment = results["environment"]
    assert environment["threads"] == torch.get_num_threads() and environment["wall_seconds"] > 0
    assert environment["process_cpu_seconds"] > 0 and len(environment["loadavg_at_end"]) == 3
    assert "min wall" in (tmp_path / "results.md").read_text()
    # ... and --rerender rebuilds the same table from results.json alone, keeping that record unchanged
    table = (tmp_path / "results.md").read_text().split("![")[0]
    rerendered = _recipe("adaptive_temperature").main(["--rerender", "--output_dir", str(tmp_path)])
    assert (tmp_path / "results.md").read_text().split("![")[0] == table
    assert rerendered["environment"] == environment


@pytest.mark.parametrize("model, variants", [("decoder", ["standard", "off_by_one", "clipped", "gated"]),
                                             ("encoder", ["standard", "clipped"])])
def test_quantization_recipe_tiny(tmp_path, model, variants):
    results = _recipe("quantization_outliers").main([
        "--model", model, "--variants", *variants, "--seeds", "0", "1", "--steps", "2", "--hidden_size", "16",
        "--num_hidden_layers", "1", "--num_attention_heads", "2", "--block_size", "16", "--batch_size", "2",
        "--eval_blocks", "2", "--calibration_batches", "1", "--output_dir", str(tmp_path)])
    _check_outputs(tmp_path, "quantization_outliers.png", cells=len(variants), seeds=2)
    # --rerender rebuilds the same table from results.json alone
    table = (tmp_path / "results.md").read_text().split("![")[0]
    _recipe("quantization_outliers").main(["--rerender", "--output_dir", str(tmp_path)])
    assert (tmp_path / "results.md").read_text().split("![")[0] == table
    for row in results["rows"]:
        assert all(math.isfinite(v) for v in row["metrics"]["fp32_perplexity"] + row["metrics"]["w8a8_perplexity"])


def test_sampling_recipe_tiny(tmp_path):
    results = _recipe("sampling_temperature").main([
        "--seeds", "0", "1", "--steps", "2", "--hidden_size", "16", "--num_hidden_layers", "1",
        "--num_attention_heads", "2", "--block_size", "16", "--batch_size", "2", "--entropy_blocks", "1",
        "--num_prompts", "2", "--prompt_length", "4", "--new_tokens", "6", "--output_dir", str(tmp_path)])
    _check_outputs(tmp_path, "sampling_temperature.png", cells=11, seeds=2)
    greedy = next(r for r in results["rows"] if r["cell"]["setting"] == "greedy")
    assert greedy["metrics"]["next_token_entropy"] == [0.0, 0.0]


def test_position_recipe_tiny_reports_learned_beyond_its_table_as_na(tmp_path):
    results = _recipe("position_embeddings").main([
        "--families", "clm", "mlm", "--seeds", "0", "--steps", "1", "--hidden_size", "16", "--num_hidden_layers", "1",
        "--num_attention_heads", "2", "--train_length", "8", "--batch_size", "2", "--eval_tokens", "64",
        "--output_dir", str(tmp_path)])
    _check_outputs(tmp_path, "position_embeddings.png", cells=11, seeds=1)
    for row in results["rows"]:
        learned = row["cell"]["position_embedding"] == "learned"
        assert row["metrics"]["ppl@1x"] is not None
        assert (row["metrics"]["ppl@2x"] is None) == learned and (row["metrics"]["ppl@4x"] is None) == learned
        assert ("max_position_embeddings" in row.get("note", "")) == learned
    assert {r["cell"]["position_embedding"] for r in results["rows"] if r["cell"]["objective"] == "mlm"} >= {
        "disentangled"}


def test_position_recipe_writes_each_family_to_its_own_folder():
    parse = _recipe("position_embeddings").parse_args
    assert Path(parse([]).output_dir).name == "position_embeddings" and parse([]).families == ["clm"]
    assert Path(parse(["--families", "mlm"]).output_dir).name == "position_embeddings_mlm"
    assert Path(parse(["--families", "mlm", "clm"]).output_dir).name == "position_embeddings_clm_mlm"
    assert parse(["--families", "mlm", "--output_dir", "x"]).output_dir == "x"


def test_paper_numbers_in_the_discussions_match_their_tables():
    """The quoted paragraphs and the tables the discussions compute with hold the same numbers, and every
    paragraph names where its text was read."""
    from hfgen.experiments import papers

    for text in (papers.ADAPTIVE_TEMPERATURE, papers.QUANTIZATION, papers.POSITIONS, papers.SAMPLING):
        assert "https://" in text
    for values in papers.PRESS_TABLE3.values():
        assert " / ".join(f"{v:.2f}" for v in values) in papers.POSITIONS
    for model, table in papers.BONDARENKO_TABLE2.items():
        for row in table.values():
            assert " / ".join(f"{v:g}" if v != int(v) else f"{v:.0f}" for v in row) in papers.QUANTIZATION, row
    for value in papers.HOLTZMAN_PERPLEXITY.values():
        assert f"{value:.2f}" in papers.SAMPLING


def test_recipes_have_help():
    for name in ("adaptive_temperature", "quantization_outliers", "sampling_temperature", "position_embeddings"):
        with pytest.raises(SystemExit) as exit_info:
            _recipe(name).parse_args(["--help"])
        assert exit_info.value.code == 0


def test_entropy_from_logits_equals_the_masked_formula_on_filtered_rows():
    """The metric (torch's Categorical entropy) equals ``-sum_{p>0} p log p`` in fp64, with rows top-k filtered to
    ``-inf`` as the sampling experiment's warpers leave them."""
    logits = torch.randn(200, 64, generator=torch.Generator().manual_seed(0)) * 5
    logits[logits < -2] = float("-inf")
    logp = torch.log_softmax(logits.double(), dim=-1)
    p = logp.exp()
    expected = -(p * torch.where(p > 0, logp, torch.zeros_like(logp))).sum(dim=-1)
    torch.testing.assert_close(entropy_from_logits(logits), expected, rtol=1e-12, atol=1e-12)
