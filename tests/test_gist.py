"""Gist tokens: the masks against their definition written out, inference from the gist-only cache against the
full gist-masked forward, the compression itself (tokens after the gist do not depend on the prompt except through
the gist), tokenizer additions and instruction data, bad input."""

from __future__ import annotations

import pytest
import torch
from transformers import StaticCache

from conftest import build, load_hfgen_tokenizer, random_ids, tiny_config
from hfgen import HfGenDecoderForCausalLM
from hfgen.models.gist import compress_prompt, decode_from_gist, gist_attention_mask, gist_spans

GIST = [120, 121]  # two token ids of the tiny vocabulary used as gist tokens


def with_gist(prompt_length: int, rest: int, seed: int = 1) -> torch.Tensor:
    ids = random_ids(1, prompt_length + 2 + rest, vocab_size=120, seed=seed)
    ids[0, prompt_length:prompt_length + 2] = torch.tensor(GIST)
    return ids


@pytest.fixture(scope="module")
def model():
    return build(HfGenDecoderForCausalLM, tiny_config())


@pytest.mark.parametrize("mode", ["gist", "positive", "negative"])
def test_masks_match_their_definition(mode):
    ids = torch.cat((with_gist(3, 4), with_gist(5, 2, seed=2)))  # gist spans [3, 5) and [5, 7)
    padding = torch.ones_like(ids)
    padding[1, 0] = 0
    mask = gist_attention_mask(ids, GIST, padding, mode=mode)
    assert mask.shape == (2, 1, 9, 9)
    for row, (start, end) in enumerate([(3, 5), (5, 7)]):
        for i in range(9):
            for j in range(9):
                allowed = j <= i and bool(padding[row, j])
                if mode == "gist" and i >= end and j < start:
                    allowed = False
                if mode == "negative" and i >= end and j < end:
                    allowed = False
                assert bool(mask[row, 0, i, j]) == allowed, (mode, row, i, j)


def test_rows_without_gist_stay_causal():
    ids = random_ids(2, 6, vocab_size=120)
    mask = gist_attention_mask(ids, GIST)
    assert torch.equal(mask[:, 0], torch.ones(6, 6, dtype=torch.bool).tril().expand(2, 6, 6))
    assert gist_spans(ids, GIST).tolist() == [[-1, -1], [-1, -1]]


def test_tokens_after_the_gist_depend_on_the_prompt_only_through_the_gist(model):
    """Change the prompt: under the gist mask the continuation's logits change (the gist carries the prompt), and
    they are exactly those of a model that sees only the gist tokens' keys and values."""
    a, b = with_gist(5, 4, seed=1), with_gist(5, 4, seed=1)
    b[0, :5] = random_ids(1, 5, vocab_size=120, seed=9)
    with torch.no_grad():
        la = model(a, attention_mask=gist_attention_mask(a, GIST)).logits[:, 7:]
        lb = model(b, attention_mask=gist_attention_mask(b, GIST)).logits[:, 7:]
        na = model(a, attention_mask=gist_attention_mask(a, GIST, mode="negative")).logits[:, 7:]
        nb = model(b, attention_mask=gist_attention_mask(b, GIST, mode="negative")).logits[:, 7:]
    assert not torch.allclose(la, lb, atol=1e-4)  # the gist tokens read the prompt
    torch.testing.assert_close(na, nb, atol=1e-5, rtol=1e-5)  # the negative control cannot


@pytest.mark.parametrize("prompt_length", [1, 6])
def test_gist_cache_inference_equals_the_full_gist_masked_forward(model, prompt_length):
    ids = with_gist(prompt_length, 5)
    p = prompt_length + 2
    with torch.no_grad():
        reference = model(ids, attention_mask=gist_attention_mask(ids, GIST)).logits
    cache, next_position = compress_prompt(model, ids[:, :p], GIST)
    assert next_position == p
    assert [layer.keys.shape[2] for layer in cache.layers] == [2, 2]  # only the gist activations are kept
    logits, generated = decode_from_gist(model, cache, next_position, ids[:, p:], max_new_tokens=3)
    torch.testing.assert_close(logits[:, :5], reference[:, p:], atol=1e-5, rtol=1e-5)
    # the generated tokens are the greedy continuation of the full gist-masked sequence
    full = torch.cat((ids, generated), 1)
    with torch.no_grad():
        again = model(full, attention_mask=gist_attention_mask(full, GIST)).logits
    torch.testing.assert_close(again[:, -4:-1].argmax(-1), generated, atol=0, rtol=0)
    torch.testing.assert_close(logits, again[:, p:-1], atol=1e-5, rtol=1e-5)


def test_gist_tokens_in_the_tokenizer_and_instruction_data(tmp_path):
    from hfgen.data.gist import GistCollator, add_gist_tokens, gist_instruction_examples, gist_token_ids

    tokenizer = load_hfgen_tokenizer()
    with pytest.raises(ValueError, match=r"no gist tokens \['<\|gist_0\|>'.*add_gist_tokens"):
        gist_token_ids(tokenizer, 2)
    model = build(HfGenDecoderForCausalLM, tiny_config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id))
    ids = add_gist_tokens(tokenizer, 2, model)
    assert ids == gist_token_ids(tokenizer, 2) and model.config.vocab_size == len(tokenizer) >= max(ids) + 1
    assert tokenizer.decode(ids) == "<|gist_0|><|gist_1|>"
    assert tokenizer("Repeat<|gist_0|>")["input_ids"][-1] == ids[0]  # one token, never split
    examples = gist_instruction_examples(tokenizer, 2, 8)
    for example in examples:
        p = example["prompt_length"]
        assert example["input_ids"][p - 2:p] == ids
        targets = [t for t in example["labels"] if t != -100]
        assert targets and targets[-1] == tokenizer.eos_token_id
        assert example["labels"][:p] == [-100] * p
    tokenizer.save_pretrained(tmp_path)
    reloaded = type(tokenizer).from_pretrained(tmp_path)
    assert gist_token_ids(reloaded, 2) == ids and reloaded("Repeat<|gist_0|>")["input_ids"][-1] == ids[0]
    batch = GistCollator(ids, tokenizer.pad_token_id)(examples)
    out = model(**batch)
    assert out.loss.isfinite()


def test_word_pool_restricts_the_instruction_data():
    """``word_pool``: the inputs use only the most frequent one-token words, and each output is the instruction's
    function of the input words (checked by decoding the text back)."""
    from collections import Counter

    from hfgen.data.gist import TASKS, add_gist_tokens, corpus_words, gist_instruction_examples, word_pool

    tokenizer = load_hfgen_tokenizer()
    add_gist_tokens(tokenizer, 2)
    pool = word_pool(tokenizer, 12)
    counts = Counter(corpus_words("train"))
    assert len(pool) == 12 and all(len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) == 1 for w in pool)
    assert [counts[w] for w in pool] == sorted((counts[w] for w in pool), reverse=True)
    for example in gist_instruction_examples(tokenizer, 2, 16, words_per_input=3, word_pool=12):
        text = tokenizer.decode(example["input_ids"])
        instruction, rest = text.split("<|gist_1|>")
        words = rest.split("Input:")[1].split("Output:")[0].split()
        assert len(words) == 3 and set(words) <= set(pool)
        assert rest.split("Output:")[1].replace("<|endoftext|>", "").split() == TASKS[instruction[:-len(
            "<|gist_0|>")]](words)
    with pytest.raises(ValueError, match=r"word_pool size must be an integer >= 2, got 1"):
        word_pool(tokenizer, 1)


def test_exact_match_against_the_rows_written_out():
    from hfgen.training.gist import exact_match

    labels = torch.tensor([[-100, 2, 1], [-100, 0, 2], [-100, -100, 1]])
    logits = torch.nn.functional.one_hot(torch.tensor([[0, 2, 1], [1, 0, 1], [2, 2, 1]]), 3).float()
    # aligned (encoder-decoder): row 0 right, row 1 wrong at its last label, row 2 right
    assert exact_match(logits, labels, shifted=False) == pytest.approx(2 / 3)
    # shifted (causal LM): position t predicts label t + 1: row 0 predicts (0, 2) for labels (2, 1): wrong
    shifted_logits = torch.nn.functional.one_hot(torch.tensor([[2, 1, 0], [0, 2, 0], [0, 1, 0]]), 3).float()
    assert exact_match(shifted_logits, labels, shifted=True) == pytest.approx(1.0)


def test_gist_experiment_script_writes_its_results(tmp_path):
    """The experiment script at a smoke size, one family per process as in the committed run: both rows end up in
    one results file, with the table and the plot."""
    import json

    from hfgen.training.gist_experiment import main

    tiny = ["--steps", "1", "--batch_size", "2", "--validation_examples", "4", "--hidden_size", "32",
            "--num_hidden_layers", "1", "--output_dir", str(tmp_path)]
    main([*tiny, "--families", "seq2seq"])
    main([*tiny, "--families", "decoder"])
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [row["family"] for row in rows] == ["decoder", "seq2seq"]
    for row in rows:
        assert set(row["validation_loss"]) == set(row["exact_match"]) == {"positive", "gist", "negative"}
        assert 0 < row["flops_ratio"] < 1 and row["compression"] > 1 and row["settings"]["steps"] == 1
    assert (tmp_path / "gist_training.png").stat().st_size > 0
    assert "| decoder |" in (tmp_path / "results.md").read_text()


GIST_TINY = ["--steps", "1", "--batch_size", "2", "--validation_examples", "4", "--hidden_size", "32",
             "--num_hidden_layers", "1", "--words_per_input", "3"]


@pytest.fixture
def embedded_task_files(tmp_path):
    """The embedded task's rows (instruction, input, output) of GIST_TINY's run written as jsonl: the flags."""
    import json

    from hfgen.data.gist import add_gist_tokens, instruction_rows
    from hfgen.training.gist_experiment import GistExperimentSettings

    settings, tokenizer = GistExperimentSettings(), load_hfgen_tokenizer()
    add_gist_tokens(tokenizer, settings.num_gist_tokens)
    for name, count, split, seed in (("train", 2, "train", 0), ("validation", 4, "validation", 1)):
        rows = instruction_rows(count, 3, split, seed, tokenizer, settings.word_pool)
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return ["--train_file", str(tmp_path / "train.jsonl"), "--validation_file", str(tmp_path / "validation.jsonl")]


def test_gist_experiment_reads_the_users_rows_as_the_embedded_task(embedded_task_files):
    """Those files, read back through --train_file / --validation_file, give both families the embedded task's
    training and validation examples."""
    from hfgen.training import gist_experiment as experiment

    data, args = experiment.build_parser().parse_args_into_dataclasses([*GIST_TINY, *embedded_task_files])
    settings = experiment.GistExperimentSettings(**{k: getattr(args, k) for k in
                                                    vars(experiment.GistExperimentSettings())})
    rows = experiment.user_rows(data)
    for family in experiment.GIST_FAMILIES:
        tokenizer = load_hfgen_tokenizer()
        experiment.add_gist_tokens(tokenizer, settings.num_gist_tokens)
        assert experiment.family_examples(family, tokenizer, settings, rows) == \
            experiment.family_examples(family, tokenizer, settings), family


@pytest.mark.slow
def test_gist_experiment_on_files_trains_the_models_of_the_embedded_task(embedded_task_files, tmp_path):
    """End to end (15 s): both families' models trained from the files are the embedded run's, bitwise, and score
    the same."""
    from safetensors.torch import load_file

    from hfgen.training.gist_experiment import main

    results = {name: main([*GIST_TINY, *flags, "--save_models", "--output_dir", str(tmp_path / name)])
               for name, flags in (("embedded", []), ("files", embedded_task_files))}
    assert [r["validation_loss"] for r in results["embedded"]["rows"]] == \
        [r["validation_loss"] for r in results["files"]["rows"]]
    for model in ("decoder_gist", "decoder_negative", "seq2seq_gist", "seq2seq_positive"):
        embedded, files = (load_file(tmp_path / name / model / "model.safetensors") for name in ("embedded", "files"))
        assert all(torch.equal(embedded[key], files[key]) for key in embedded), model


def test_user_rows_without_input_are_laid_out_without_it():
    """Alpaca-style rows whose input is missing or empty: instruction + gist tokens, then "\\nOutput:", the output
    and eos, written out here token by token."""
    from hfgen.data.gist import add_gist_tokens, gist_examples

    tokenizer = load_hfgen_tokenizer()
    ids = add_gist_tokens(tokenizer, 2)
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    prompt, rest, answer = encode("Name a colour.") + ids, encode("\nOutput:"), encode(" blue") + [tokenizer.eos_token_id]
    for row in ({"instruction": "Name a colour.", "output": "blue"},
                {"instruction": "Name a colour.", "input": "", "output": "blue"}):
        assert gist_examples([row], tokenizer, 2) == [{"input_ids": prompt + rest + answer, "prompt_length": len(prompt),
                                                      "labels": [-100] * (len(prompt) + len(rest)) + answer}]
        assert gist_examples([row], tokenizer, 2, seq2seq=True) == [{"input_ids": prompt + rest, "labels": answer,
                                                                    "prompt_length": len(prompt)}]


@pytest.mark.parametrize("flags,world,message", [
    (["--streaming", "true"], "1", "--streaming is not supported by the gist experiment"),
    ([], "1", r"columns question, answer; this recipe reads \(instruction, input, output\) or \(instruction, output\)"),
    (["--batch_size", "4"], "3", "batch_size=4 .* multiple of the 3 processes"),
])
def test_gist_experiment_refuses_bad_data_flags(flags, world, message, tmp_path, monkeypatch):
    from hfgen.training.gist_experiment import main

    monkeypatch.setenv("WORLD_SIZE", world)
    (tmp_path / "train.jsonl").write_text('{"question": "a", "answer": "b"}\n')
    files = [] if world != "1" else ["--train_file", str(tmp_path / "train.jsonl"), "--validation_file",
                                     str(tmp_path / "train.jsonl")]
    with pytest.raises(ValueError, match=message):
        main([*GIST_TINY, *files, *flags, "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_bad_input(model):
    ids = with_gist(3, 2)
    with pytest.raises(ValueError, match=r"mode='both'.*'gist', 'positive', 'negative'"):
        gist_attention_mask(ids, GIST, mode="both")
    split = ids.clone()
    split[0, 4], split[0, 6] = 5, GIST[1]
    with pytest.raises(ValueError, match=r"not one contiguous run \(positions \[3, 6\]\)"):
        gist_attention_mask(split, GIST)
    with pytest.raises(ValueError, match=r"holds no gist token"):
        compress_prompt(model, random_ids(1, 4, vocab_size=120), GIST)
    with pytest.raises(ValueError, match=r"must end the prompt"):
        compress_prompt(model, ids, GIST)
    with pytest.raises(ValueError, match=r"one prompt"):
        compress_prompt(model, torch.cat((ids, ids)), GIST)
    _, position = compress_prompt(model, ids[:, :5], GIST)
    with pytest.raises(ValueError, match=r"DynamicCache that compress_prompt returns, not a StaticCache"):
        decode_from_gist(model, StaticCache(config=model.config, max_cache_len=16), position, ids[:, 5:])


def test_models_without_a_key_value_cache_are_refused():
    """Cache types a model cannot use: RetNet keeps a recurrent state (nothing to cut the gist out of); an
    encoder-decoder has its own gist path."""
    from hfgen import HfGenRetNetConfig, HfGenRetNetForCausalLM, HfGenSeq2SeqConfig
    from hfgen import HfGenSeq2SeqForConditionalGeneration

    ids = with_gist(3, 0)
    retnet = HfGenRetNetForCausalLM(HfGenRetNetConfig(vocab_size=128, hidden_size=32, intermediate_size=64,
                                                      num_hidden_layers=1, num_attention_heads=2))
    with pytest.raises(ValueError, match=r"HfGenRetNetForCausalLM keeps no keys and values per token"):
        compress_prompt(retnet, ids, GIST)
    seq2seq = HfGenSeq2SeqForConditionalGeneration(HfGenSeq2SeqConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2))
    with pytest.raises(ValueError, match=r"encoder-decoder: use hfgen.models.gist_seq2seq"):
        compress_prompt(seq2seq, ids, GIST)


def test_training_mode_is_checked():
    from hfgen.training.gist import train_with_gist_mask

    with pytest.raises(ValueError, match=r"mode='full'.*'gist', 'positive', 'negative'"):
        train_with_gist_mask(None, [], [], GIST, 0, mode="full")


@pytest.mark.slow
def test_gist_model_lies_between_the_controls():
    """The paper's comparison, small: trained alike on corpus instructions, the gist model beats the negative
    control (it does carry the instruction) and the positive control beats both (no compression is free)."""
    from hfgen import HfGenDecoderConfig
    from hfgen.data.gist import add_gist_tokens, gist_instruction_examples
    from hfgen.training.gist import compare_with_controls, recovered_gap

    tokenizer = load_hfgen_tokenizer()
    gist_ids = add_gist_tokens(tokenizer, 2)
    torch.manual_seed(0)
    initial = HfGenDecoderForCausalLM(HfGenDecoderConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        pad_token_id=tokenizer.pad_token_id))
    train = gist_instruction_examples(tokenizer, 2, 16 * 300, words_per_input=3, split="train", seed=0)
    valid = gist_instruction_examples(tokenizer, 2, 64, words_per_input=3, split="validation", seed=1)
    runs = compare_with_controls(initial, train, valid, gist_ids, tokenizer.pad_token_id, progress=False)
    assert runs["positive"].validation_loss < runs["negative"].validation_loss
    assert runs["gist"].validation_loss < runs["negative"].validation_loss
    assert recovered_gap(runs) > 0.3
