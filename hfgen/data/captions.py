"""Captions and simple questions about the labelled digit images that ship offline (``hfgen.data.images``), for
the vision-language models (``hfgen_vlm``): "a handwritten seven", "is this digit even? yes".

Each :class:`VlmExample` is an image, a prompt (with one ``<image>`` placeholder) and the target text the model must
produce; :class:`VlmCollator` turns a batch into model inputs with the loss on the target only, and
:func:`vlm_accuracy` generates greedily and counts exact matches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..models.processing_hfgen_vlm import IMAGE_PLACEHOLDER, HfGenVlmImageProcessor, HfGenVlmProcessor
from .tokenizer import load_tokenizer

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CAPTION_PROMPT = IMAGE_PLACEHOLDER + " caption:"
# (question, answer as a function of the label)
QUESTIONS = (
    ("is this digit even?", lambda label: "yes" if label % 2 == 0 else "no"),
    ("is this digit greater than four?", lambda label: "yes" if label > 4 else "no"),
    ("what digit is this?", lambda label: NUMBER_WORDS[label]),
)
KINDS = ("caption", "question")


@dataclass
class VlmExample:
    """One image (``[C, H, W]`` in [-1, 1]), its prompt (with ``<image>``), the target text, its kind and the
    digit's label."""

    image: torch.Tensor
    prompt: str
    target: str
    kind: str
    label: int = -1


def caption(label: int) -> str:
    """The caption of a digit: ``"a handwritten seven"``."""
    if not 0 <= int(label) <= 9:
        raise ValueError(f"Digit labels are 0..9, got {label}.")
    return f"a handwritten {NUMBER_WORDS[int(label)]}"


def vlm_examples(images: torch.Tensor, labels: torch.Tensor, kinds: tuple[str, ...] = KINDS) -> list[VlmExample]:
    """Every image with its caption and, for ``"question"``, each question of :data:`QUESTIONS`."""
    for kind in kinds:
        if kind not in KINDS:
            raise ValueError(f"Unknown example kind {kind!r}; valid choices are: {', '.join(map(repr, KINDS))}.")
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels.")
    examples = []
    for image, label in zip(images, labels.tolist()):
        if "caption" in kinds:
            examples.append(VlmExample(image, CAPTION_PROMPT, " " + caption(label), "caption", label))
        if "question" in kinds:
            for question, answer in QUESTIONS:
                examples.append(VlmExample(image, f"{IMAGE_PLACEHOLDER} question: {question} answer:",
                                           " " + answer(label), "question", label))
    return examples


def text_only(examples: list[VlmExample], describe_image: bool = True) -> list[str]:
    """The examples as text alone, for the language model that a late fusion then keeps frozen.

    ``describe_image=True`` (LENS-like, "images into language"): the image placeholder is replaced by a word that
    describes the image (the digit's name), so the language model learns to read the description at the image's
    place and answer from it; the bridge then learns to write, from the pixels, vectors that the frozen model reads
    like that description. ``False``: the placeholder is just removed (the model learns the language only, and a
    small frozen model then has no reason to look back at the image's slots -- its bridge stays at chance)."""
    texts = []
    for e in examples:
        stand_in = " " + NUMBER_WORDS[e.label] if describe_image and e.label >= 0 else ""
        texts.append(e.prompt.replace(IMAGE_PLACEHOLDER, stand_in) + e.target)
    return texts


def vlm_tokenizer():
    """hfgen's shipped tokenizer with the ``<image>`` token added (the last id) and left padding for generation."""
    tokenizer = load_tokenizer()
    tokenizer.add_tokens([IMAGE_PLACEHOLDER], special_tokens=True)
    tokenizer.padding_side = "left"
    return tokenizer


def vlm_processor(config, tokenizer=None) -> HfGenVlmProcessor:
    """The processor matching a :class:`HfGenVlmConfig` (image size, channels, tokens per image)."""
    tokenizer = tokenizer or vlm_tokenizer()
    if tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER) != config.image_token_id:
        raise ValueError(f"The tokenizer's {IMAGE_PLACEHOLDER} id ({tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)})"
                         f" differs from config.image_token_id ({config.image_token_id}).")
    vision = config.vision_config
    image_processor = HfGenVlmImageProcessor(image_size=vision.image_size, num_channels=vision.num_channels)
    return HfGenVlmProcessor(image_processor, tokenizer, num_image_tokens=config.num_image_tokens)


class VlmCollator:
    """Examples -> ``input_ids``, ``attention_mask``, ``pixel_values``, ``labels`` (right-padded, loss on the target
    and the end-of-text token only)."""

    def __init__(self, processor: HfGenVlmProcessor):
        self.processor = processor
        self.tokenizer = processor.tokenizer

    def __call__(self, examples: list[VlmExample]) -> dict[str, torch.Tensor]:
        pad = self.tokenizer.pad_token_id
        prompts = self.processor(images=[e.image for e in examples], text=[e.prompt for e in examples],
                                 padding=False, return_tensors=None)
        rows, labels = [], []
        for prompt_ids, example in zip(prompts["input_ids"], examples):
            target = self.tokenizer(example.target, add_special_tokens=False)["input_ids"] + [
                self.tokenizer.eos_token_id]
            rows.append(list(prompt_ids) + target)
            labels.append([-100] * len(prompt_ids) + target)
        length = max(map(len, rows))
        input_ids = torch.tensor([r + [pad] * (length - len(r)) for r in rows])
        attention_mask = torch.tensor([[1] * len(r) + [0] * (length - len(r)) for r in rows])
        label_ids = torch.tensor([r + [-100] * (length - len(r)) for r in labels])
        pixel_values = self.processor.image_processor([e.image for e in examples])["pixel_values"]
        return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values,
                "labels": label_ids}


@torch.no_grad()
def vlm_generate(model, processor: HfGenVlmProcessor, images, prompts: list[str], max_new_tokens: int = 6) -> list[str]:
    """Greedy answers to ``prompts`` about ``images`` (left-padded batch), decoded and stripped."""
    inputs = processor(images=list(images), text=list(prompts), padding=True)
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=processor.tokenizer.pad_token_id, eos_token_id=processor.tokenizer.eos_token_id)
    return [t.strip() for t in processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)]


def vlm_accuracy(model, processor: HfGenVlmProcessor, examples: list[VlmExample], batch_size: int = 64,
                 max_new_tokens: int = 6, progress: bool = False) -> dict[str, float]:
    """Exact-match accuracy of greedy generation, per kind (``caption_accuracy``, ``question_accuracy``), scored by
    the ``exact_match`` evaluate module (``hfgen.metrics``)."""
    from ..metrics import load_metric

    model.eval()
    pairs: dict[str, tuple[list[str], list[str]]] = {}
    for start in tqdm(range(0, len(examples), batch_size), disable=not progress, desc="evaluate"):
        batch = examples[start:start + batch_size]
        answers = vlm_generate(model, processor, [e.image for e in batch], [e.prompt for e in batch], max_new_tokens)
        for example, answer in zip(batch, answers):
            predictions, references = pairs.setdefault(example.kind, ([], []))
            predictions.append(answer)
            references.append(example.target.strip())
    metric = load_metric("exact_match")
    return {f"{kind}_accuracy": metric.compute(predictions=predictions, references=references)["exact_match"]
            for kind, (predictions, references) in pairs.items()}


def majority_baseline(train: list[VlmExample], held_out: list[VlmExample]) -> dict[str, float]:
    """Chance level, per kind: the held-out accuracy of a model that ignores the image and answers every prompt with
    its most frequent target in ``train`` (``caption_chance``, ``question_chance``)."""
    counts: dict[str, dict[str, int]] = {}
    for e in train:
        per_prompt = counts.setdefault(e.prompt, {})
        per_prompt[e.target] = per_prompt.get(e.target, 0) + 1
    hits: dict[str, list[bool]] = {}
    for e in held_out:
        options = counts.get(e.prompt, {})
        guess = max(options, key=options.get) if options else None
        hits.setdefault(e.kind, []).append(guess == e.target)
    return {f"{kind}_chance": sum(h) / len(h) for kind, h in hits.items()}

