#!/usr/bin/env python
"""hfgen_clip beside transformers' own CLIPModel with the same sizes, trained the same way on the captioned digits:
held-out retrieval, zero-shot and linear-probe accuracy, and the CPU time of one training step (forward + backward
on the same batch, interleaved).

    python benchmarks/clip.py --write

Both use ``recipes/train_clip.py``'s sizes and ``TrainingArguments`` defaults (``--max_steps`` here), the same
pairs in the same order, the same tokenizer (hfgen's, with ``[CLS] ... [SEP]``; CLIP's text tower pools at its
``eos_token_id``, set to ``[SEP]``) and the same image processor. Differences by design: CLIP's text tower is
causal and pools one token, hfgen's is bidirectional and pools the mean; CLIP's image tower adds a class token and
pools it, hfgen's pools the mean of the patches.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
import tempfile
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPModel, Trainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
import common  # noqa: E402
import train_clip  # noqa: E402

from hfgen.data.encoder_tokenizer import load_encoder_tokenizer  # noqa: E402
from hfgen.data.images import load_images  # noqa: E402
from hfgen.models import HfGenClipProcessor  # noqa: E402
from hfgen.models.processing_hfgen_clip import clip_image_processor  # noqa: E402
from hfgen.training.clip import ClipCollator, clip_examples, evaluate_clip  # noqa: E402

SECTION = "## CLIP beside transformers' CLIPModel (`benchmarks/clip.py`), cpu, float32"


def transformers_clip(args, hfgen_model, tokenizer) -> tuple[CLIPModel, HfGenClipProcessor]:
    """CLIPModel with hfgen_clip's sizes; its processor drops the token types CLIP's text tower does not take."""
    text, vision = hfgen_model.config.text_config, hfgen_model.config.vision_config
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=text.vocab_size, hidden_size=text.hidden_size,
                         intermediate_size=text.intermediate_size, num_hidden_layers=text.num_hidden_layers,
                         num_attention_heads=text.num_attention_heads, max_position_embeddings=32,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id,
                         eos_token_id=tokenizer.sep_token_id),
        vision_config=dict(image_size=vision.image_size, patch_size=vision.patch_size, num_channels=1,
                           hidden_size=vision.hidden_size, intermediate_size=vision.intermediate_size,
                           num_hidden_layers=vision.num_hidden_layers, num_attention_heads=vision.num_attention_heads),
        projection_dim=hfgen_model.config.projection_dim)
    plain = copy.deepcopy(tokenizer)
    plain.model_input_names = ["input_ids", "attention_mask"]
    return CLIPModel(config), HfGenClipProcessor(clip_image_processor(hfgen_model.config), plain)


def train_and_evaluate(model, processor, training_args, data, train, test) -> dict:
    trainer = Trainer(model=model, args=training_args, train_dataset=train, data_collator=ClipCollator(processor))
    trainer.train()
    return evaluate_clip(model, processor, data.train_images, data.train_labels, test)


def step_seconds(models: dict, batch_of: dict, repeats: int) -> dict[str, list[float]]:
    def step(name):
        def run():
            out = models[name](**batch_of[name])
            out.loss.backward()
            models[name].zero_grad(set_to_none=True)
        return run

    for model in models.values():
        model.train()
    return common.interleaved({name: step(name) for name in models}, "cpu", repeats)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--max_steps", type=int, default=1500, help="training steps of each model (the recipe's)")
    common.add_run_arguments(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    clock = common.use_clock(None, "cpu")
    recipe_args, training_args = train_clip.build_parser().parse_args_into_dataclasses(
        ["--output_dir", tempfile.mkdtemp(), "--max_steps", str(args.max_steps), "--save_strategy", "no",
         "--disable_tqdm", "true"])
    data = load_images(recipe_args.dataset, image_size=recipe_args.image_size)
    train = clip_examples(data.train_images, data.train_labels, seed=0)
    test = clip_examples(data.test_images, data.test_labels, seed=1)
    tokenizer = load_encoder_tokenizer()
    hfgen_model = train_clip.build_model(recipe_args, tokenizer, 0)
    theirs, their_processor = transformers_clip(recipe_args, hfgen_model, tokenizer)
    sides = {"hfgen_clip": (hfgen_model, HfGenClipProcessor(clip_image_processor(hfgen_model.config), tokenizer)),
             "transformers CLIPModel": (theirs, their_processor)}
    batches = {name: ClipCollator(processor)(train[:training_args.per_device_train_batch_size])
               for name, (_, processor) in sides.items()}
    times = step_seconds({name: model for name, (model, _) in sides.items()}, batches, args.repeats)
    results = {name: train_and_evaluate(model, processor, training_args, data, train, test)
               for name, (model, processor) in sides.items()}
    section = report(results, times, args, training_args, clock)
    print(section)
    if args.write:
        common.write_section(common.RESULTS, section)


def report(results, times, args, training_args, clock) -> str:
    rows = [("image -> text top-1", "image_to_text_top1"), ("text -> image top-1", "text_to_image_top1"),
            ("zero-shot, training templates", "zero_shot_training_templates"),
            ("zero-shot, unseen template", "zero_shot_pipeline_template"),
            ("linear probe on the image tower", "linear_probe_image_tower")]
    names = list(results)
    lines = [SECTION, "",
             f"`python benchmarks/clip.py --max_steps {args.max_steps}`: {common.machine('cpu')}, load "
             f"{common.load_average():.1f}; both models {args.max_steps} steps of batch "
             f"{training_args.per_device_train_batch_size} with the recipe's optimizer, seed 0, 359 held-out pairs "
             f"(chance: top-1 {results[names[0]]['chance_top1']:.3f}, zero-shot majority "
             f"{results[names[0]]['zero_shot_chance']:.3f}). Step time: {common.clock_description(clock)}, median "
             f"of {args.repeats} interleaved forward + backward passes on one batch.", "",
             "| held out | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    lines += [f"| {label} | " + " | ".join(f"{results[n][key]:.3f}" for n in names) + " |" for label, key in rows]
    medians = {n: sorted(t)[len(t) // 2] for n, t in times.items()}
    lines.append("| training step (ms) | " + " | ".join(f"{1000 * medians[n]:.1f}" for n in names) + " |")
    lines.append(f"| speed vs CLIPModel (paired) | {common.paired_ratio(times, names[1], names[0]):.2f}x | 1.00x |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
