#!/usr/bin/env python
"""Train vision-language models (``hfgen_vlm``) on captions and questions about the shipped digits, by early fusion
and by the two late fusions, and report held-out caption and answer accuracy for each.

    python recipes/train_vlm.py --output_dir outputs/vlm
    python recipes/train_vlm.py --fusions projection cross_attention --bridge_steps 600

Cross-attention starts its tanh gates at ``--gate_init`` 1.0, not Flamingo's 0: with closed gates the bridge never
left chance at this size (HfGenVlmConfig.cross_attention_gate_init says why).

Late fusion follows LENS / LLaVA / Flamingo: a language model is first trained on the captions' and answers' text
alone, with the image's description (the digit's name) at the image's place (``text_only``), then frozen while the bridge (vision encoder + projector, or vision
encoder + gated cross-attention) trains. Early fusion trains one model on both from scratch, for as many steps as
the language model and the bridge together. Each model is saved with its processor and reloaded (identical logits).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from hfgen.data.captions import VlmCollator, majority_baseline, text_only, vlm_accuracy, vlm_examples, vlm_processor, vlm_tokenizer
from hfgen.data.images import load_images
from hfgen.models import HfGenDecoderConfig, HfGenDecoderForCausalLM
from hfgen.models.configuration_hfgen_vit import HfGenViTConfig
from hfgen.models.configuration_hfgen_vlm import FUSIONS, HfGenVlmConfig
from hfgen.models.modeling_hfgen_vlm import HfGenVlmForConditionalGeneration


logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/vlm", help="where the models, plot and results go")
    parser.add_argument("--fusions", nargs="+", default=list(FUSIONS), choices=FUSIONS, help="the fusions to train")
    parser.add_argument("--hidden_size", type=int, default=64, help="width of the language model")
    parser.add_argument("--num_hidden_layers", type=int, default=2, help="language-model layers")
    parser.add_argument("--vision_hidden_size", type=int, default=64, help="width of the ViT (late fusions)")
    parser.add_argument("--vision_layers", type=int, default=2, help="ViT layers (late fusions)")
    parser.add_argument("--patch_size", type=int, default=2, help="patches of the 8x8 digits")
    parser.add_argument("--lm_steps", type=int, default=300, help="text-only steps of the language model")
    parser.add_argument("--bridge_steps", type=int, default=600, help="steps of a late-fusion bridge (LM frozen)")
    parser.add_argument("--early_steps", type=int, default=None, help="default: lm_steps + bridge_steps")
    parser.add_argument("--batch_size", type=int, default=32, help="examples per step")
    parser.add_argument("--learning_rate", type=float, default=3e-3,
                        help="learning rate of the language model and of early fusion")
    parser.add_argument("--bridge_learning_rate", type=float, default=1e-3,
                        help="late fusions' bridge (1e-2 made the cross-attention gates close again)")
    parser.add_argument("--gate_init", type=float, default=1.0,
                        help="start of the cross-attention tanh gates (Flamingo: 0, which stays at chance here; "
                             "0.5 needs ~1500 steps; see HfGenVlmConfig.cross_attention_gate_init)")
    parser.add_argument("--eval_images", type=int, default=200, help="held-out images evaluated (4 examples each)")
    parser.add_argument("--plain_lm_text", action="store_true",
                        help="train the late fusions' language model on the text with the image placeholder removed "
                             "instead of replaced by the digit's name (text_only(describe_image=False))")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights, data and evaluation")
    return parser


def text_config(args, tokenizer) -> HfGenDecoderConfig:
    return HfGenDecoderConfig(vocab_size=len(tokenizer), hidden_size=args.hidden_size,
                              intermediate_size=2 * args.hidden_size, num_hidden_layers=args.num_hidden_layers,
                              num_attention_heads=4, max_position_embeddings=128, tie_word_embeddings=True,
                              pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)


def train_language_model(args, tokenizer, texts: list[str]) -> tuple[HfGenDecoderForCausalLM, list[float]]:
    """The decoder trained on the examples' text alone (what a late fusion starts from)."""
    torch.manual_seed(args.seed)
    model = HfGenDecoderForCausalLM(text_config(args, tokenizer))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate)
    tokenizer.padding_side = "right"
    losses, rng = [], random.Random(args.seed)
    for _ in tqdm(range(args.lm_steps), desc="language model"):
        batch = tokenizer([t + tokenizer.eos_token for t in rng.sample(texts, args.batch_size)], padding=True,
                          return_tensors="pt")
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = target_token_loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    tokenizer.padding_side = "left"
    return model, losses


def target_token_loss(model, batch: dict) -> torch.Tensor:
    """The model's own loss (mean cross-entropy of next-token prediction over the labelled tokens), with the
    language-model head applied only where a label is: the same number at a fraction of the cost, since most of a
    row is image tokens and prompt, and the head spans the whole vocabulary."""
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    hidden = model.model(**inputs, use_cache=False).last_hidden_state[:, :-1]
    targets = labels[:, 1:]
    keep = targets != -100
    return F.cross_entropy(model.lm_head(hidden[keep]).float(), targets[keep])


def train_vlm(model: HfGenVlmForConditionalGeneration, collator: VlmCollator, examples, steps: int, args,
              desc: str, learning_rate: float | None = None) -> list[float]:
    """AdamW on the parameters that require gradients; returns the loss per step."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=learning_rate or args.learning_rate)
    rng, losses = random.Random(args.seed), []
    model.train()
    for _ in tqdm(range(steps), desc=desc):
        loss = target_token_loss(model, collator(rng.sample(examples, args.batch_size)))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def build_vlm(args, tokenizer, fusion: str, language_model=None) -> HfGenVlmForConditionalGeneration:
    torch.manual_seed(args.seed)
    vision = HfGenViTConfig(image_size=8, patch_size=args.patch_size, hidden_size=args.vision_hidden_size,
                            intermediate_size=2 * args.vision_hidden_size, num_hidden_layers=args.vision_layers,
                            num_attention_heads=4)
    config = HfGenVlmConfig(text_config=text_config(args, tokenizer), vision_config=vision, fusion=fusion,
                            image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                            cross_attention_gate_init=args.gate_init)
    model = HfGenVlmForConditionalGeneration(config)
    if language_model is not None:
        model.load_language_model(language_model)
        model.freeze_language_model()
    return model


def save_and_reload(model, processor, path: str, batch: dict) -> bool:
    """Save model + processor, reload through the Auto classes, compare logits."""
    from transformers import AutoModelForImageTextToText

    model.save_pretrained(path)
    processor.save_pretrained(path)
    reloaded = AutoModelForImageTextToText.from_pretrained(path).eval()
    model.eval()
    with torch.no_grad():
        return torch.equal(model(**batch).logits, reloaded(**batch).logits)


def plot_losses(curves: dict[str, list[float]], path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, losses in curves.items():
        ax.plot(losses, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    os.makedirs(args.output_dir, exist_ok=True)
    data = load_images("digits")
    train = vlm_examples(data.train_images, data.train_labels)
    held_out = vlm_examples(data.test_images[:args.eval_images], data.test_labels[:args.eval_images])
    tokenizer = vlm_tokenizer()
    curves, results = {}, {"chance": majority_baseline(train, held_out)}
    language_model = None
    if any(f != "early" for f in args.fusions):
        language_model, curves["language model (text only)"] = train_language_model(args, tokenizer,
                                                                                   text_only(train, describe_image=not args.plain_lm_text))
    for fusion in args.fusions:
        late = fusion != "early"
        model = build_vlm(args, tokenizer, fusion, language_model if late else None)
        processor = vlm_processor(model.config, tokenizer)
        collator = VlmCollator(processor)
        frozen_before = [p.detach().clone() for p in model.language_model_parameters()] if late else None
        steps = args.bridge_steps if late else (args.early_steps or args.lm_steps + args.bridge_steps)
        curves[fusion] = train_vlm(model, collator, train, steps, args, fusion,
                                   args.bridge_learning_rate if late else args.learning_rate)
        if late:  # the language model really stayed frozen
            assert all(torch.equal(a, b) for a, b in zip(frozen_before, model.language_model_parameters()))
        accuracy = vlm_accuracy(model, processor, held_out)
        if late and fusion == "cross_attention":
            accuracy["final_gates"] = [[round(layer.attn_gate.item(), 3), round(layer.mlp_gate.item(), 3)]
                                       for layer in model.model.cross_attention_layers]
        batch = collator(held_out[:4])
        batch.pop("labels")
        identical = save_and_reload(model, processor, os.path.join(args.output_dir, fusion), batch)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        results[fusion] = {**accuracy, "train_steps": steps, "trainable_parameters": trainable,
                           "language_model_frozen": late, "identical_logits_after_reload": identical}
        logger.info(f"{fusion}: {accuracy} identical logits: {identical}")
    plot_losses(curves, os.path.join(args.output_dir, "losses.png"))
    with open(os.path.join(args.output_dir, "results.json"), "w") as handle:
        json.dump({"args": vars(args), "results": results}, handle, indent=2)
    logger.info("saved to %s (one folder per fusion, losses.png, results.json)", args.output_dir)
    return results


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
