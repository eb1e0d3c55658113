"""hfgen.data: the embedded corpus and its split, the shipped tokenizer, and causal-LM blocks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import pytest
from pydoc_data.topics import topics
from transformers import AutoTokenizer, DataCollatorForLanguageModeling

from datasets import Dataset, DatasetDict
from hfgen.data import TOKENIZER_DIR, load_corpus, load_tokenizer, tokenize_for_causal_lm, train_tokenizer

UNICODE_SAMPLES = [
    "héllo wörld — naïve café",
    "日本語のテキスト and 中文",
    "emoji 🐍🚀 and a combining e\u0301 and zero\u200bwidth",
    "  leading and trailing spaces, tabs\tand\r\nCRLF lines  \n",
    "def f(x):\n    return x ** 2  # comment\n",
    "literal special tokens <|im_start|> and <|endoftext|> inside text",
]


def texts(dataset: Dataset) -> list[str]:
    # datasets 5 returns a lazy Column; compare plain lists so that == means what it says.
    return list(dataset["text"])

# A system prompt and two user/assistant turns.
CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "And 3 + 3?"},
    {"role": "assistant", "content": "6."},
]


@pytest.fixture(scope="module")
def corpus() -> DatasetDict:
    return load_corpus()


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


# --- corpus -----------------------------------------------------------------------------------------------------


def test_split_is_deterministic_disjoint_and_covers_every_topic(corpus):
    again = load_corpus()
    assert texts(corpus["train"]) == texts(again["train"])
    assert texts(corpus["validation"]) == texts(again["validation"])
    assert set(corpus) == {"train", "validation"}
    assert corpus["train"].column_names == ["text"]

    train, valid = texts(corpus["train"]), texts(corpus["validation"])
    assert not set(train) & set(valid)
    # Every distinct topic text exactly once (the manual has one duplicate text: topics "else" and "if").
    assert Counter(train + valid) == Counter(set(topics.values()))


def test_split_depends_on_seed_and_not_on_other_documents(corpus):
    assert texts(load_corpus(seed=1)["validation"]) != texts(corpus["validation"])
    with_docs = load_corpus(include_docstrings=True)
    assert len(with_docs["train"]) + len(with_docs["validation"]) > 300
    topic_texts = set(topics.values())
    # Adding the docstrings must not move any topic from one split to the other.
    assert [t for t in texts(with_docs["validation"]) if t in topic_texts] == texts(corpus["validation"])
    assert [t for t in texts(with_docs["train"]) if t in topic_texts] == texts(corpus["train"])


@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.5])
def test_validation_fraction_roughly_respected(fraction):
    # Per document the split is a hash threshold, so over 78 documents the share is binomial: check the mean
    # over several seeds tightly and each seed loosely.
    shares = []
    for seed in range(8):
        split = load_corpus(validation_fraction=fraction, seed=seed)
        n_valid, n_train = len(split["validation"]), len(split["train"])
        assert n_valid >= 1 and n_train >= 1
        shares.append(n_valid / (n_valid + n_train))
    assert abs(sum(shares) / len(shares) - fraction) < 0.03
    assert all(abs(share - fraction) < 0.15 for share in shares)


def test_tiny_fraction_still_gives_a_validation_document():
    split = load_corpus(validation_fraction=1e-9)
    assert len(split["validation"]) == 1 and len(split["train"]) == len(set(topics.values())) - 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"validation_fraction": 0.0}, r"\(0, 1\)"),
        ({"validation_fraction": 1.0}, r"\(0, 1\)"),
        ({"validation_fraction": -0.5}, r"\(0, 1\)"),
        ({"validation_fraction": float("nan")}, r"\(0, 1\)"),
        ({"validation_fraction": "0.1"}, r"\(0, 1\)"),
        ({"seed": -1}, ">= 0"),
        ({"include_docstrings": "yes"}, "bool"),
    ],
)
def test_load_corpus_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_corpus(**kwargs)


# --- tokenizer --------------------------------------------------------------------------------------------------


def test_tokenizer_round_trips_text(tokenizer, corpus):
    samples = texts(corpus["validation"]) + texts(corpus["train"])[:5] + UNICODE_SAMPLES
    for text in samples:
        ids = tokenizer.encode(text)
        assert tokenizer.decode(ids) == text
    # The tokenizer must actually compress English/Python prose, not fall back to bytes.
    text = "\n".join(texts(corpus["validation"]))
    assert len(tokenizer.encode(text)) < len(text.encode("utf-8")) / 3


def test_special_tokens_are_distinct_and_match_the_saved_config(tokenizer):
    assert len(tokenizer) == 8192
    ids = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"])
    assert ids == [0, 1, 2, 3]
    assert tokenizer.eos_token_id == tokenizer.bos_token_id == 0
    assert tokenizer.pad_token_id == 1 != tokenizer.eos_token_id
    assert tokenizer.model_max_length == 2048 and tokenizer.padding_side == "right"
    for token, token_id in zip(["<|im_start|>", "<|im_end|>", "<|endoftext|>"], [2, 3, 0]):
        assert tokenizer.encode(token) == [token_id]  # one atomic token, never split into bytes

    config = json.loads((TOKENIZER_DIR / "tokenizer_config.json").read_text())
    assert tokenizer.convert_tokens_to_ids(config["eos_token"]) == tokenizer.eos_token_id
    assert tokenizer.convert_tokens_to_ids(config["bos_token"]) == tokenizer.bos_token_id
    assert tokenizer.convert_tokens_to_ids(config["pad_token"]) == tokenizer.pad_token_id
    added = {t["content"]: t["id"] for t in json.loads((TOKENIZER_DIR / "tokenizer.json").read_text())["added_tokens"]}
    assert added == {"<|endoftext|>": 0, "<|pad|>": 1, "<|im_start|>": 2, "<|im_end|>": 3}
    assert all(added[t] in tokenizer.all_special_ids for t in added)


def test_chat_template_renders_chatml(tokenizer):
    expected = (
        "<|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n"
        "<|im_start|>assistant\n4.<|im_end|>\n"
        "<|im_start|>user\nAnd 3 + 3?<|im_end|>\n"
        "<|im_start|>assistant\n6.<|im_end|>\n"
    )
    assert tokenizer.apply_chat_template(CONVERSATION, tokenize=False) == expected

    prompt = CONVERSATION[:2]
    rendered = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    assert rendered == expected.split("<|im_start|>assistant\n4.")[0] + "<|im_start|>assistant\n"
    assert not tokenizer.apply_chat_template(prompt, tokenize=False).endswith("<|im_start|>assistant\n")

    with pytest.raises(Exception, match="valid roles"):
        tokenizer.apply_chat_template([{"role": "robot", "content": "beep"}], tokenize=False)


def test_assistant_mask_covers_answers_and_their_end_token(tokenizer):
    # What TRL's assistant_only_loss trains on: the answers and the <|im_end|> that stops each, nothing of the
    # system prompt, the user turns or the role headers.
    out = tokenizer.apply_chat_template(CONVERSATION, return_dict=True, return_assistant_tokens_mask=True)
    masked = [i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tokenizer.decode(masked) == "4.<|im_end|>6.<|im_end|>"


def test_shipped_tokenizer_loads_offline_in_a_fresh_process(tokenizer):
    code = (
        "import sys, json\n"
        "from transformers import AutoTokenizer\n"
        "tok = AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "print(json.dumps([len(tok), tok.encode(sys.argv[2])]))\n"
    )
    text = UNICODE_SAMPLES[0] + UNICODE_SAMPLES[4]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code, str(TOKENIZER_DIR), text], env=env, capture_output=True, text=True, check=True
    )
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [8192, tokenizer.encode(text)]


def test_save_and_reload_gives_identical_ids(tokenizer, corpus, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    samples = texts(corpus["validation"]) + UNICODE_SAMPLES
    assert reloaded(samples)["input_ids"] == tokenizer(samples)["input_ids"]
    assert reloaded.all_special_ids == tokenizer.all_special_ids
    assert reloaded.chat_template == tokenizer.chat_template
    assert (reloaded.model_max_length, reloaded.padding_side) == (2048, "right")


@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="shipped tokenizer was trained on Python 3.11's manual")
def test_shipped_tokenizer_is_what_training_on_the_corpus_gives(tokenizer, corpus):
    fresh = train_tokenizer(texts(corpus["train"]), vocab_size=8192)
    assert fresh.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()


def test_train_tokenizer_small_vocab_and_bad_arguments():
    small = train_tokenizer(["abc abd abe " * 50, "x y z"], vocab_size=300)
    assert len(small) <= 300
    assert small.decode(small.encode("abd ✓")) == "abd ✓"  # unseen characters still round-trip via bytes
    for bad in (259, 0, 2**21, 8192.0):
        with pytest.raises(ValueError, match=r"\[260, 1048576\]"):
            train_tokenizer(["text"], vocab_size=bad)
    with pytest.raises(ValueError, match="iterable of documents"):
        train_tokenizer("a single string")


# --- causal LM blocks -------------------------------------------------------------------------------------------


def test_blocks_have_block_size_and_are_a_prefix_of_the_token_stream(tokenizer, corpus):
    block_size = 128
    blocks = tokenize_for_causal_lm(corpus, tokenizer, block_size=block_size)
    assert set(blocks) == {"train", "validation"}
    for split in ("train", "validation"):
        rows = blocks[split]
        assert rows.column_names == ["input_ids", "attention_mask"]
        assert all(len(ids) == block_size for ids in rows["input_ids"])
        assert all(mask == [1] * block_size for mask in rows["attention_mask"])

        stream = []
        for text in texts(corpus[split]):
            stream += tokenizer.encode(text) + [tokenizer.eos_token_id]
        flat = [token for ids in rows["input_ids"] for token in ids]
        assert flat == stream[: len(flat)]
        assert len(stream) - len(flat) < block_size  # only the last partial block is dropped
        assert stream.count(tokenizer.eos_token_id) == len(corpus[split])

    # The collator builds the labels (copies of input_ids; the model shifts them).
    batch = DataCollatorForLanguageModeling(tokenizer, mlm=False)([blocks["train"][0], blocks["train"][1]])
    assert batch["input_ids"].shape == (2, block_size)
    assert batch["labels"].tolist() == batch["input_ids"].tolist()


def test_blocks_do_not_depend_on_num_proc(tokenizer, corpus):
    small = DatasetDict({"train": corpus["train"].select(range(20)), "validation": corpus["validation"]})
    one = tokenize_for_causal_lm(small, tokenizer, block_size=64)
    two = tokenize_for_causal_lm(small, tokenizer, block_size=64, num_proc=2)
    for split in small:
        assert list(one[split]["input_ids"]) == list(two[split]["input_ids"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"block_size": 1}, r"\[2, 2048\]"),
        ({"block_size": 4096}, r"\[2, 2048\]"),
        ({"block_size": 64.0}, r"\[2, 2048\]"),
        ({"block_size": 64, "num_proc": 0}, ">= 1"),
    ],
)
def test_tokenize_for_causal_lm_rejects_bad_arguments(tokenizer, corpus, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tokenize_for_causal_lm(corpus, tokenizer, **kwargs)


def test_tokenize_for_causal_lm_rejects_inputs_it_cannot_use(tokenizer):
    with pytest.raises(ValueError, match="DatasetDict"):
        tokenize_for_causal_lm(Dataset.from_dict({"text": ["a"]}), tokenizer, block_size=8)
    with pytest.raises(ValueError, match="no 'text' column"):
        tokenize_for_causal_lm(DatasetDict({"train": Dataset.from_dict({"body": ["a"]})}), tokenizer, block_size=8)
    tiny = DatasetDict({"train": Dataset.from_dict({"text": ["short"]})})
    with pytest.raises(ValueError, match="fewer than block_size"):
        tokenize_for_causal_lm(tiny, tokenizer, block_size=512)
