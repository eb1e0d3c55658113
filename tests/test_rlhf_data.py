"""Instruction, preference and prompt data from the embedded corpus (hfgen.data.instructions): responses come from
the corpus verbatim, the preference rule holds on every pair, the shipped chat template renders them, bad input
is refused."""

from __future__ import annotations

import re
from pydoc_data.topics import topics as pydoc_topics

import pytest

from hfgen.data import load_tokenizer
from hfgen.data.instructions import (
    instruction_dataset,
    length_preference_dataset,
    load_topics,
    mentions_keyword,
    one_sentence,
    preference_dataset,
    prompt_dataset,
    sentences,
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
    with pytest.raises(ValueError, match="valid choices: responses, backtranslation, all, lengths"):
        instruction_dataset(source="documents")
    with pytest.raises(ValueError, match="max_response_chars must be an int >= 16"):
        preference_dataset(max_response_chars=3)
    with pytest.raises(ValueError, match=r"rejected_per_prompt must be an int in \[1, 16\]"):
        preference_dataset(rejected_per_prompt=0)
    with pytest.raises(ValueError, match="seed must be an int >= 0"):
        prompt_dataset(seed=-1)


def test_one_sentence_rule():
    assert one_sentence(["The with statement wraps a block.", "  A lambda makes a function.  ",
                         [{"role": "assistant", "content": "Slices select part of a sequence."}]]) == [1.0] * 3
    assert one_sentence(["Too short.",  # fewer than 4 words
                         "It binds names. It also rebinds them.",  # two sentences
                         "The with statement wraps a",  # cut off, no period
                         "Is this one sentence?",  # not a period
                         "Objects are data: Every object has an identity."]) == [0.0] * 5
    assert one_sentence(["Use e.g. the with statement here.", 'Write "x.name" to access attribute name.'],
                        keyword=["with", "x"]) == [1.0, 1.0]  # an abbreviation or a dotted name ends nothing
    assert sentences('One. Two! (Three.) "Four." Five') == ["One.", "Two!", "(Three.)", '"Four."', "Five"]


def test_length_source_answers_each_query_in_one_to_three_sentences():
    lengths = instruction_dataset(source="lengths", max_response_chars=300)
    by_topic: dict[str, list[str]] = {}
    for row in lengths:
        user, assistant = row["messages"]
        assert user["content"].startswith("Explain ") and len(assistant["content"]) <= 300
        by_topic.setdefault(row["topic"], []).append(assistant["content"])
    assert len(by_topic) == len(load_topics())
    success = 0
    for topic, answers in by_topic.items():
        assert 1 <= len(answers) <= 3 and len(set(answers)) == len(answers)
        # Longer answers extend shorter ones: the first n sentences of the topic's opening prose.
        ordered = sorted(answers, key=len)
        assert all(longer.startswith(shorter[:-1]) for shorter, longer in zip(ordered, ordered[1:])), topic
        assert _flat(ordered[0][:-1]) in _flat(pydoc_topics[topic])
        success += sum(one_sentence(answers))
    assert 0.2 < success / len(lengths) < 0.6  # the SFT data answers in one sentence only part of the time


def test_length_preference_pairs_prefer_one_sentence_within_a_query():
    pairs = length_preference_dataset(max_response_chars=300)
    assert len(pairs) > 50
    assert one_sentence(pairs["chosen"]) == [1.0] * len(pairs)
    assert one_sentence(pairs["rejected"]) == [0.0] * len(pairs)
    queries = {row["topic"]: row["prompt"] for row in prompt_dataset()}
    for row in pairs:
        assert row["prompt"] == queries[row["topic"]]
        assert row["chosen"][0]["content"][:20] == row["rejected"][0]["content"][:20]  # the same opening
    with pytest.raises(ValueError, match="max_response_chars must be an int >= 16"):
        length_preference_dataset(max_response_chars=3)
