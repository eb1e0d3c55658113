"""FuseLLM (Wan et al. 2024): alignment, fusion and loss against plainly written formulas."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from hfgen.data import load_tokenizer
from hfgen.training.fusellm import (SourceModel, VocabularyMap, align_sequences, aligned_distributions,
                                    edit_distance, fuse_distributions, fusellm_loss, sequence_cross_entropy)


def levenshtein_by_definition(a: str, b: str) -> int:
    @functools.lru_cache(maxsize=None)
    def d(i: int, j: int) -> int:
        if i == 0 or j == 0:
            return i + j
        return min(d(i - 1, j) + 1, d(i, j - 1) + 1, d(i - 1, j - 1) + (a[i - 1] != b[j - 1]))
    return d(len(a), len(b))


@pytest.mark.parametrize("a,b", [("kitten", "sitting"), ("", "abc"), ("Ġthe", "the"), ("flaw", "lawn"), ("ab", "ab")])
def test_edit_distance_is_levenshtein(a, b):
    assert edit_distance(a, b) == levenshtein_by_definition(a, b) == edit_distance(b, a)


def test_alignment_identity_and_splits():
    tokens = ["Ġthe", "Ġcat", "Ġsat"]
    assert align_sequences(tokens, tokens) == [0, 1, 2]
    # One source token split in two target tokens: both pieces align to it.
    assert align_sequences(["Ġthe", "Ġcats"], ["Ġthe", "Ġca", "ts"]) == [0, 1, 1]
    # Two source tokens merged in one target token: the last of the span is kept.
    assert align_sequences(["Ġthe", "Ġca", "ts", "Ġsat"], ["Ġthe", "Ġcats", "Ġsat"]) == [0, 2, 3]
    with pytest.raises(ValueError, match="empty"):
        align_sequences([], ["a"])


def test_aligned_distributions_with_the_same_tokenizer_are_the_top_k_renormalised():
    tokenizer = load_tokenizer()
    ids = tokenizer("The with statement is used to wrap a block")["input_ids"]
    logits = torch.randn(len(ids), len(tokenizer))
    out = aligned_distributions(logits[:-1], ids, ids, tokenizer, tokenizer, VocabularyMap(tokenizer, tokenizer),
                                len(tokenizer), top_k=5)
    probabilities = logits[:-1].softmax(-1)
    expected = torch.zeros_like(probabilities)
    top = probabilities.topk(5, dim=-1)
    expected.scatter_(-1, top.indices, top.values)
    torch.testing.assert_close(out, expected / expected.sum(-1, keepdim=True))


def test_min_ce_picks_the_best_source_per_sequence_and_avg_ce_weights_by_softmax_of_minus_ce():
    torch.manual_seed(0)
    labels = torch.randint(0, 6, (2, 4))
    mask = torch.ones(2, 4)
    a, b = torch.rand(2, 4, 6).softmax(-1), torch.rand(2, 4, 6).softmax(-1)
    b[1] = F.one_hot(labels[1], 6).float() * 0.9 + 0.1 / 6  # source b is nearly right on sequence 1
    ce_a, ce_b = sequence_cross_entropy(a, labels, mask), sequence_cross_entropy(b, labels, mask)
    fused = fuse_distributions([a, b], labels, mask, "min_ce")
    for row in range(2):
        best = a if ce_a[row] <= ce_b[row] else b
        assert torch.equal(fused[row], best[row])
    average = fuse_distributions([a, b], labels, mask, "avg_ce")
    for row in range(2):
        wa = torch.exp(-ce_a[row]) / (torch.exp(-ce_a[row]) + torch.exp(-ce_b[row]))
        torch.testing.assert_close(average[row], wa * a[row] + (1 - wa) * b[row])
    with pytest.raises(ValueError, match="valid choices are: 'min_ce', 'avg_ce'"):
        fuse_distributions([a], labels, mask, "max")


def test_loss_is_lambda_clm_plus_one_minus_lambda_fusion():
    torch.manual_seed(0)
    logits, labels = torch.randn(2, 5, 7), torch.randint(0, 7, (2, 5))
    mask = torch.ones(2, 5)
    fused = torch.rand(2, 5, 7).softmax(-1)
    clm = F.cross_entropy(logits.reshape(-1, 7), labels.reshape(-1))
    fusion = -(fused * logits.log_softmax(-1)).sum(-1).mean()
    total, got_clm, got_fusion = fusellm_loss(logits, labels, fused, mask, lam=0.7)
    torch.testing.assert_close(got_clm, clm)
    torch.testing.assert_close(got_fusion, fusion)
    torch.testing.assert_close(total, 0.7 * clm + 0.3 * fusion)
    with pytest.raises(ValueError, match="lambda"):
        fusellm_loss(logits, labels, fused, mask, lam=1.5)


def test_source_models_need_tokenizers():
    with pytest.raises(ValueError, match="needs its tokenizer"):
        SourceModel(model=torch.nn.Linear(1, 1), tokenizer=None)
    with pytest.raises(ValueError, match="source model's tokenizer"):
        VocabularyMap(None, load_tokenizer())


def test_vocabulary_map_equals_a_scan_of_the_whole_target_vocabulary():
    """The pruned nearest-token search gives the token a full scan gives: minimum of (length difference > 3, edit
    distance, target id)."""
    from hfgen.data.tokenizer import train_tokenizer

    target = load_tokenizer()
    source = train_tokenizer(["def f(x):\n    return x ** 2  # squares\n", "zqxj wvvk ünïcødé"] * 20, vocab_size=300)
    vocab_map = VocabularyMap(source, target)
    vocabulary = target.get_vocab()
    tokens = sorted(vocabulary, key=vocabulary.get)
    checked = 0
    for source_id in range(len(source)):
        token = source.convert_ids_to_tokens(source_id)
        if token in vocabulary:
            assert vocab_map(source_id) == vocabulary[token]
            continue
        best = min(tokens, key=lambda t: (abs(len(t) - len(token)) > 3, edit_distance(token, t), vocabulary[t]))
        assert vocab_map(source_id) == vocabulary[best], token
        checked += 1
        if checked == 4:  # a full scan costs a second per token
            break
    assert checked == 4


def test_fusellm_trainer_loss_reduces_to_the_models_own_loss(tmp_path):
    """FuseLLMTrainer.compute_loss: with one-hot source distributions on the gold tokens the fusion term is the
    cross-entropy itself, so for any lambda the loss equals the model's own causal-LM loss; with a uniform source
    and lambda 0 it is the mean cross-entropy to the uniform distribution, -mean log_softmax."""
    import torch.nn.functional as F
    from transformers import TrainingArguments

    from conftest import build, tiny_config
    from hfgen import HfGenDecoderForCausalLM
    from hfgen.training.fusellm import FuseLLMCollator, FuseLLMTrainer

    model = build(HfGenDecoderForCausalLM, tiny_config(vocab_size=64))
    blocks = torch.randint(0, 64, (3, 7), generator=torch.Generator().manual_seed(0))
    one_hot = [F.one_hot(b[1:], 64).float() for b in blocks]
    uniform = [torch.full((6, 64), 1 / 64) for _ in blocks]
    rows = [{"input_ids": b, "index": i} for i, b in enumerate(blocks)]
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    model.train()
    with torch.no_grad():
        own = model(input_ids=blocks, labels=blocks).loss
        for lam in (0.0, 0.9):
            trainer = FuseLLMTrainer(model=model, args=args, method="min_ce", lam=lam)
            batch = FuseLLMCollator([one_hot, uniform])(rows)
            torch.testing.assert_close(trainer.compute_loss(model, batch), own)
        trainer = FuseLLMTrainer(model=model, args=args, method="avg_ce", lam=0.0)
        expected = -F.log_softmax(model(input_ids=blocks).logits[:, :-1].float(), -1).mean()
        torch.testing.assert_close(trainer.compute_loss(model, FuseLLMCollator([uniform])(rows)), expected)
    # Evaluation rows carry no index (more of them than training rows once broke the collator): ids and labels only.
    evaluation = FuseLLMCollator([uniform])([{"input_ids": b} for b in torch.cat((blocks, blocks))])
    assert set(evaluation) == {"input_ids", "labels"} and evaluation["input_ids"].shape == (6, 7)


# --- The recipe on the user's own text (recipes/fusellm.py through hfgen.data.user_data) ---

def fusellm_recipe():
    """recipes/fusellm.py as a module (test_recipe_data's loader: the script's dataclasses look it up by name)."""
    from test_recipe_data import recipe

    return recipe("fusellm")


@pytest.fixture(scope="module")
def corpus_files(tmp_path_factory):
    """The embedded corpus of ``--topics_only`` (the reference manual) written as the user's files: a jsonl pair
    and a dataset folder (train.jsonl + validation.jsonl)."""
    from hfgen.data.corpus import load_corpus

    root = tmp_path_factory.mktemp("fusellm_data")
    (root / "folder").mkdir()
    corpus = load_corpus(include_docstrings=False)
    for split in ("train", "validation"):
        corpus[split].to_json(str(root / f"{split}.jsonl"))
        corpus[split].to_json(str(root / "folder" / f"{split}.jsonl"))
    return root


def test_fusellm_reads_the_users_documents_in_order(corpus_files):
    """--train_file / --validation_file, and --dataset_name with a local folder, give the recipe the documents of
    the embedded corpus they were written from, in the same order (so the same slices, blocks and models)."""
    module = fusellm_recipe()
    default = module.load_documents(*module.parse_arguments(["--topics_only"]))
    for flags in (["--train_file", str(corpus_files / "train.jsonl"), "--validation_file",
                   str(corpus_files / "validation.jsonl")], ["--dataset_name", str(corpus_files / "folder")]):
        assert module.load_documents(*module.parse_arguments(flags)) == default, flags


@pytest.mark.parametrize("flags,world,message", [
    (["--streaming", "true", "--train_file", "{train}", "--validation_file", "{train}"], "1",
     "--streaming is not supported by FuseLLM"),
    (["--batch_size", "4"], "3", "--batch_size 4 .* multiple of the 3 processes"),
    (["--validation_file", "{train}"], "1", "--validation_file .* needs --train_file"),
    (["--train_file", "{tiny}", "--validation_file", "{tiny}"], "1", "Too little text: the continued-training slice "
                                                                    "has 0 blocks"),
])
def test_fusellm_refuses_bad_data_flags_before_any_work(flags, world, message, corpus_files, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", world)
    (tmp_path / "tiny.jsonl").write_text('{"text": "a few words"}\n' * 8)
    flags = [flag.format(train=corpus_files / "train.jsonl", tiny=tmp_path / "tiny.jsonl") for flag in flags]
    with pytest.raises(ValueError, match=message):
        fusellm_recipe().main([*flags, "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_fusellm_on_files_trains_the_targets_of_the_embedded_corpus(corpus_files, tmp_path):
    """A tiny run on the embedded corpus written as jsonl ends with the fused target and the per-method test
    perplexities of the same run on the embedded corpus, bitwise."""
    import json

    from safetensors.torch import load_file

    from test_ddp_equivalence import FUSELLM_TINY

    module = fusellm_recipe()
    files = ["--train_file", str(corpus_files / "train.jsonl"), "--validation_file",
             str(corpus_files / "validation.jsonl")]
    for name, flags in (("embedded", []), ("files", files)):
        module.main([*FUSELLM_TINY, *flags, "--output_dir", str(tmp_path / name)])
    weights = [load_file(tmp_path / name / "target_avg_ce" / "model.safetensors") for name in ("embedded", "files")]
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])
    results = [json.loads((tmp_path / name / "results.json").read_text())["results"] for name in ("embedded", "files")]
    assert all(results[0][m]["per_seed"] == results[1][m]["per_seed"] for m in ("clm", "min_ce", "avg_ce"))
