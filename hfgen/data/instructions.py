"""Instruction, preference and prompt data built from the embedded corpus, in TRL's dataset formats.

Seed 003, "Generating training data with LLMs", names three sources, each built here without a model:

1. *Responses for pre-existing queries.* The Python reference manual in ``pydoc_data.topics`` is itself a set of
   answers to existing queries -- each topic is what ``help("<topic>")`` prints. The query becomes an instruction
   ("Explain the "with" statement in Python.") and the topic's opening prose its response.
2. *Instructions back-translated from documents* ("Self-Alignment with Instruction Backtranslation"): each later
   prose paragraph of a topic is an output whose instruction is reconstructed from where it sits -- its section
   heading and topic ("Write the part of the Python reference manual on Mapping Types (in ...).").
3. *Preference pairs from response comparisons*: for a query, the topic's own answer is *chosen* and another
   topic's answer, which does not mention the query's keyword, is *rejected*. That comparison is a rule anyone
   can check: a response is right when it names the keyword it was asked about (:func:`mentions_keyword`).

Formats (TRL 1.16): SFT ``{"messages": [user, assistant]}``; preference ``{"prompt": [user], "chosen":
[assistant], "rejected": [assistant]}``; prompt-only ``{"prompt": [user]}`` for PPO / GRPO / RLOO. Every row also
carries ``topic`` and ``keyword`` columns, which TRL passes on to reward functions.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass

from datasets import Dataset

INSTRUCTION_SOURCES = ("responses", "backtranslation", "all", "lengths")
_UNDERLINE = re.compile(r"^([*=\-^~\"])\1{2,}$")
# A sentence ends at . ! ? : (optionally closed by a quote or bracket) before space and a capital or an opening
# quote/bracket: "e.g. the" does not end one, "value. The" does.
_SENTENCE_END = re.compile(r"(?:(?<=[.!?:])|(?<=[.!?:][\"'\u201d)\]]))\s+(?=[A-Z(\"'\u201c])")
ONE_SENTENCE_MIN_WORDS = 4


@dataclass(frozen=True)
class Topic:
    """One topic of the reference manual: its ``help()`` key, heading, keyword and prose."""

    key: str
    heading: str
    keyword: str
    sections: tuple[tuple[str, tuple[str, ...]], ...]  # (section heading, prose paragraphs)


def _keyword(key: str, heading: str) -> str:
    """The word a right answer must name: the quoted word of the heading (``The "with" statement`` -> with), else
    the heading's first word in lower case (``Lambdas`` -> lambdas)."""
    quoted = re.findall(r'"([^"]+)"', heading)
    if quoted:
        return quoted[0]
    words = heading.split()
    if len(words) > 1 and words[0].lower() in ("the", "a", "an"):
        words = words[1:]  # "The None object" -> none
    return words[0].lower().strip(",.:")


def _prose_paragraphs(lines: list[str]) -> list[str]:
    """Paragraphs of running text: blank-line separated, unwrapped; code, grammar and lists (indented or starting
    with a bullet) are left out."""
    paragraphs, current = [], []
    for line in lines + [""]:
        if line.strip():
            current.append(line)
            continue
        if current:
            first = current[0]
            if not first.startswith((" ", "\t", "* ", "- ", ">>>")) and len(current[0]) > 1:
                paragraphs.append(" ".join(part.strip() for part in current))
            current = []
    return paragraphs


def _parse_topic(key: str, text: str) -> Topic | None:
    lines = text.splitlines()
    sections: list[tuple[str, list[str]]] = []
    heading, body = None, []
    index = 0
    while index < len(lines):
        line = lines[index]
        if index + 1 < len(lines) and _UNDERLINE.match(lines[index + 1].strip()) and line.strip():
            if heading is not None:
                sections.append((heading, body))
            heading, body = line.strip(), []
            index += 2
            continue
        body.append(line)
        index += 1
    if heading is None:
        return None
    sections.append((heading, body))
    parsed = tuple((title, tuple(_prose_paragraphs(text_lines))) for title, text_lines in sections)
    parsed = tuple((title, paragraphs) for title, paragraphs in parsed if paragraphs)
    if not parsed:
        return None
    top = sections[0][0]
    return Topic(key=key, heading=top, keyword=_keyword(key, top), sections=parsed)


@functools.lru_cache(maxsize=1)
def load_topics() -> tuple[Topic, ...]:
    """Every topic of ``pydoc_data.topics`` that has prose, in sorted key order (duplicate texts kept once)."""
    from pydoc_data.topics import topics

    seen, parsed = set(), []
    for key, text in sorted(topics.items()):
        if text in seen:
            continue
        seen.add(text)
        topic = _parse_topic(key, text)
        if topic is not None:
            parsed.append(topic)
    return tuple(parsed)


def _clip(text: str, max_chars: int) -> str:
    """At most ``max_chars`` characters, cut after the last full sentence that fits (or at a word)."""
    if len(text) <= max_chars:
        return text
    head = text[:max_chars]
    end = max(head.rfind(". "), head.rfind(".\n"))
    if end > max_chars // 3:
        return head[: end + 1]
    return head.rsplit(" ", 1)[0]


def _rank(key: str, seed: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big")


def query_for(topic: Topic) -> str:
    """The instruction of seed 003's first source: the ``help()`` query as a question."""
    heading = topic.heading
    if heading.startswith(("The ", "A ", "An ")):
        heading = heading[0].lower() + heading[1:]
    return f"Explain {heading} in Python."


def answer_for(topic: Topic, max_chars: int) -> str:
    """The topic's opening prose, clipped to whole sentences."""
    return _clip(topic.sections[0][1][0], max_chars)


def sentences(text: str) -> list[str]:
    """The sentences of a prose text, split after ``.``, ``!``, ``?`` or ``:`` (optionally closed by a quote or
    bracket) that is followed by a space and a capital letter or an opening quote or bracket."""
    return [part for part in _SENTENCE_END.split(text.strip()) if part]


def answers_by_length(topic: Topic, max_chars: int, lengths: tuple[int, ...] = (1, 2, 3)) -> list[tuple[int, str]]:
    """The topic's opening prose (its first section) cut after its first ``n`` sentences, for each ``n`` in
    ``lengths`` that the prose has (clipped to ``max_chars``, duplicates kept once): ``[(n, answer), ...]``.

    A sentence that ends with a colon introduced a code or grammar block, which the prose leaves out; it ends with a
    period here instead ("... the following lexical definitions." rather than "...definitions:")."""
    opening = [sentence[:-1] + "." if sentence.endswith(":") else sentence
               for paragraph in topic.sections[0][1] for sentence in sentences(paragraph)]
    answers, seen = [], set()
    for n in lengths:
        if n > len(opening):
            break
        answer = _clip(" ".join(opening[:n]), max_chars)
        if answer not in seen:
            seen.add(answer)
            answers.append((n, answer))
    return answers


def _check(max_chars: int, seed: int) -> None:
    if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 16:
        raise ValueError(f"max_response_chars must be an int >= 16, got {max_chars!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")


def instruction_dataset(source: str = "all", max_response_chars: int = 400, seed: int = 0) -> Dataset:
    """Instruction-tuning pairs in TRL's conversational SFT format (``messages``), plus ``topic`` / ``keyword``.

    Args:
        source: ``responses`` (answers to the existing ``help()`` queries), ``backtranslation`` (instructions
            reconstructed for the other prose paragraphs), ``all`` (both), or ``lengths``: each query answered
            by its opening prose cut after one, two and three sentences (:func:`answers_by_length`), so a model
            tuned on it answers in one sentence only some of the time -- the behaviour the RLHF recipe's
            feedback (:func:`one_sentence`) then selects.
        max_response_chars: responses are clipped to whole sentences within this many characters.
        seed: orders the rows (a fixed shuffle by hash; the content does not depend on it).
    """
    if source not in INSTRUCTION_SOURCES:
        raise ValueError(f"Unknown source {source!r}; valid choices: {', '.join(INSTRUCTION_SOURCES)}.")
    _check(max_response_chars, seed)
    rows = []
    for topic in load_topics():
        if source == "lengths":
            rows.extend((f"{topic.key}:{n}", topic, query_for(topic), answer)
                        for n, answer in answers_by_length(topic, max_response_chars))
        if source in ("responses", "all"):
            rows.append((f"{topic.key}:0", topic, query_for(topic), answer_for(topic, max_response_chars)))
        if source in ("backtranslation", "all"):
            for s, (section, paragraphs) in enumerate(topic.sections):
                for p, paragraph in enumerate(paragraphs):
                    if s == 0 and p == 0:
                        continue  # the opening paragraph is the answer of the query above
                    where = section if section == topic.heading else f"{section} (in {topic.heading})"
                    instruction = f"Write the part of the Python reference manual on {where}."
                    rows.append((f"{topic.key}:{s}:{p}", topic, instruction, _clip(paragraph, max_response_chars)))
    rows.sort(key=lambda row: _rank(row[0], seed))
    return Dataset.from_dict({
        "messages": [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for _, _, q, a in rows],
        "topic": [t.key for _, t, _, _ in rows],
        "keyword": [t.keyword for _, t, _, _ in rows],
    })


def preference_dataset(max_response_chars: int = 400, seed: int = 0, rejected_per_prompt: int = 1) -> Dataset:
    """Preference pairs in TRL's conversational format (``prompt``, ``chosen``, ``rejected``).

    For each query the topic's own answer is chosen; each rejected answer is another topic's (picked by hash with
    ``seed``) that does not contain the query's keyword, so :func:`mentions_keyword` prefers chosen over rejected
    in every row. ``rejected_per_prompt`` pairs per query (different rejected answers) give a reward model more
    comparisons to learn from.
    """
    _check(max_response_chars, seed)
    if isinstance(rejected_per_prompt, bool) or not isinstance(rejected_per_prompt, int) or \
            not 1 <= rejected_per_prompt <= 16:
        raise ValueError(f"rejected_per_prompt must be an int in [1, 16], got {rejected_per_prompt!r}")
    topics = load_topics()
    answers = {topic.key: answer_for(topic, max_response_chars) for topic in topics}
    rows = []
    for topic in topics:
        if not mentions_keyword([answers[topic.key]], [topic.keyword])[0]:
            continue  # the rule could not tell the pair apart
        others = sorted((t for t in topics if t.key != topic.key and
                         not mentions_keyword([answers[t.key]], [topic.keyword])[0]),
                        key=lambda t: _rank(f"{topic.key}>{t.key}", seed))
        for other in others[:rejected_per_prompt]:
            rows.append((topic, answers[topic.key], answers[other.key]))
    return _preference_rows(rows, seed)


def _preference_rows(rows: list, seed: int) -> Dataset:
    """``(topic, chosen, rejected)`` triples as TRL's conversational preference format, in a seeded order."""
    rows = sorted(rows, key=lambda row: _rank(f"{row[0].key}>{row[2]}", seed))
    return Dataset.from_dict({
        "prompt": [[{"role": "user", "content": query_for(t)}] for t, _, _ in rows],
        "chosen": [[{"role": "assistant", "content": c}] for _, c, _ in rows],
        "rejected": [[{"role": "assistant", "content": r}] for _, _, r in rows],
        "topic": [t.key for t, _, _ in rows],
        "keyword": [t.keyword for t, _, _ in rows],
    })


def length_preference_dataset(max_response_chars: int = 300, seed: int = 0) -> Dataset:
    """Preference pairs for the task "answer in one sentence", from comparisons of the corpus answers of different
    lengths to the same query (:func:`answers_by_length`): each answer :func:`one_sentence` accepts is chosen over
    each one of the same query it rejects. Same columns as :func:`preference_dataset`."""
    _check(max_response_chars, seed)
    rows = []
    for topic in load_topics():
        answers = [answer for _, answer in answers_by_length(topic, max_response_chars)]
        scores = one_sentence(answers)
        for good in (a for a, s in zip(answers, scores) if s):
            rows.extend((topic, good, bad) for bad, s in zip(answers, scores) if not s)
    return _preference_rows(rows, seed)


def prompt_dataset(seed: int = 0) -> Dataset:
    """Prompt-only rows (``prompt`` as one user message, ``keyword``, ``topic``) for PPO, GRPO and RLOO."""
    _check(16, seed)
    topics = sorted(load_topics(), key=lambda t: _rank(t.key, seed))
    return Dataset.from_dict({
        "prompt": [[{"role": "user", "content": query_for(t)}] for t in topics],
        "topic": [t.key for t in topics],
        "keyword": [t.keyword for t in topics],
    })


def _text(completion) -> str:
    if isinstance(completion, list):  # conversational: [{"role": "assistant", "content": ...}]
        return " ".join(message.get("content", "") for message in completion)
    return str(completion)


def mentions_keyword(completions: list, keyword: list[str], **kwargs) -> list[float]:
    """The rule-based reward of the embedded task: 1.0 when a completion names its query's keyword as a word
    (case-insensitive), else 0.0. Signature of a TRL reward function (``keyword`` is a dataset column)."""
    if len(completions) != len(keyword):
        raise ValueError(f"{len(completions)} completions but {len(keyword)} keywords.")
    scores = []
    for completion, word in zip(completions, keyword):
        pattern = r"(?<![A-Za-z0-9_])" + re.escape(word.lower()) + r"(?![A-Za-z0-9_])"
        scores.append(1.0 if re.search(pattern, _text(completion).lower()) else 0.0)
    return scores


def one_sentence(completions: list, **kwargs) -> list[float]:
    """The rule of the RLHF recipe's task, "answer in one sentence": 1.0 when a completion is exactly one complete
    sentence -- at least ``ONE_SENTENCE_MIN_WORDS`` words, ending with a period, no sentence end inside
    (:func:`sentences`) -- else 0.0. A response cut off by the length limit does not end with a period and fails.
    Signature of a TRL reward function (other dataset columns arrive as keyword arguments and are ignored)."""
    scores = []
    for completion in completions:
        text = _text(completion).strip()
        scores.append(1.0 if len(text.split()) >= ONE_SENTENCE_MIN_WORDS and text.endswith(".") and
                      len(sentences(text)) == 1 else 0.0)
    return scores
