"""Instruction, preference and prompt data from the embedded corpus (hfgen.data.instructions): responses come from
the corpus verbatim, the preference rule holds on every pair, the shipped chat template renders them, bad input
is refused."""

from __future__ import annotations

import re

import pytest
from pydoc_data.topics import topics as pydoc_topics

from hfgen.data import load_tokenizer
from hfgen.data.instructions import (
    instruction_dataset,
    load_topics,
    mentions_keyword,
    preference_dataset,
    prompt_dataset,
)


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def test_responses_are_corpus_text_and_queries_cover_every_topic():
    responses = instruction_dataset(source="responses", max_response_chars=300)
    assert len(responses) == len(load_topics()) > 70
    assert len(set(responses["topic"])) == len(responses)
    for row in responses:
        user, assistant = row["messages"]
        assert (user["role"], assistant["role"]) == ("user", "assistant")
        assert user["content"].startswith("Explain ") and user["content"].endswith(" in Python.")
        assert 0 < len(assistant["content"]) <= 300
        assert _flat(assistant["content"]) in _flat(pydoc_topics[row["topic"]])


def test_backtranslated_instructions_name_their_section():
    back = instruction_dataset(source="backtranslation", max_response_chars=300)
    everything = instruction_dataset(source="all", max_response_chars=300)
    assert len(everything) == len(back) + len(load_topics()) and len(back) > 500
    for row in back.select(range(50)):
        user, assistant = row["messages"]
        prefix = "Write the part of the Python reference manual on "
        assert user["content"].startswith(prefix) and user["content"].endswith(".")
        section = user["content"][len(prefix):-1].split(" (in ")[0]
        source = pydoc_topics[row["topic"]]
        assert section in source
        assert _flat(assistant["content"]) in _flat(source)
    # The seed fixes the order only.
    other = instruction_dataset(source="all", max_response_chars=300, seed=1)
    assert sorted(map(str, other["messages"])) == sorted(map(str, everything["messages"]))
    assert other["topic"] != everything["topic"]


def test_preference_pairs_obey_the_rule_and_prompts_match():
    pairs = preference_dataset(max_response_chars=300)
    assert len(pairs) > 40
    assert set(pairs.column_names) == {"prompt", "chosen", "rejected", "topic", "keyword"}
    assert mentions_keyword(pairs["chosen"], pairs["keyword"]) == [1.0] * len(pairs)
    assert mentions_keyword(pairs["rejected"], pairs["keyword"]) == [0.0] * len(pairs)
    for row in pairs:
        assert row["chosen"] != row["rejected"]
        assert _flat(row["chosen"][0]["content"]) in _flat(pydoc_topics[row["topic"]])
    several = preference_dataset(max_response_chars=300, rejected_per_prompt=3)
    assert len(several) == 3 * len(pairs)
    assert mentions_keyword(several["rejected"], several["keyword"]) == [0.0] * len(several)
    assert len({(r["topic"], r["rejected"][0]["content"]) for r in several}) == len(several)
    prompts = prompt_dataset()
    assert set(prompts.column_names) == {"prompt", "topic", "keyword"} and len(prompts) == len(load_topics())


def test_rule_matches_whole_words_only():
    assert mentions_keyword(["The with statement", "withdraw", "WITH blocks", "with_stmt"],
                            ["with"] * 4) == [1.0, 0.0, 1.0, 0.0]
    assert mentions_keyword([[{"role": "assistant", "content": "use yield here"}]], ["yield"]) == [1.0]
    with pytest.raises(ValueError, match="2 completions but 1 keywords"):
        mentions_keyword(["a", "b"], ["a"])


def test_shipped_chat_template_renders_and_masks_the_answer():
    tokenizer = load_tokenizer()
    row = instruction_dataset(source="responses")[0]
    encoded = tokenizer.apply_chat_template(row["messages"], return_dict=True, return_assistant_tokens_mask=True)
    answer = [t for t, m in zip(encoded["input_ids"], encoded["assistant_masks"]) if m]
    assert tokenizer.decode(answer) == row["messages"][1]["content"] + "<|im_end|>"


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="valid choices: responses, backtranslation, all"):
        instruction_dataset(source="documents")
    with pytest.raises(ValueError, match="max_response_chars must be an int >= 16"):
        preference_dataset(max_response_chars=3)
    with pytest.raises(ValueError, match=r"rejected_per_prompt must be an int in \[1, 16\]"):
        preference_dataset(rejected_per_prompt=0)
    with pytest.raises(ValueError, match="seed must be an int >= 0"):
        prompt_dataset(seed=-1)
