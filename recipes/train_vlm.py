#!/usr/bin/env python
"""Train vision-language models (``hfgen_vlm``) on captions and questions about the shipped digits, by early fusion
and by the two late fusions, and report held-out caption and answer accuracy for each.

    python recipes/train_vlm.py --output_dir outputs/vlm
    python recipes/train_vlm.py --fusions projection cross_attention --bridge_steps 600
    python recipes/train_vlm.py --train_data_dir my_images/     # images + metadata.jsonl {"file_name", "text"}
    torchrun --nproc_per_node 2 recipes/train_vlm.py --per_device_train_batch_size 16

Each model trains with ``Trainer`` (``hfgen.training.multimodal.LabelledTokenTrainer``: the causal-LM loss on the
target tokens, the head applied only where a label is), so every ``TrainingArguments`` flag applies: schedules,
several processes, ``--report_to``, checkpoints under OUTPUT_DIR/checkpoints/STAGE and ``--resume_from_checkpoint
latest`` (each stage continues from its last checkpoint). The user's own data (``--dataset_name`` or
``--train_data_dir``) trains captioning: prompt ``"<image> caption:"``, target the row's caption.

Cross-attention starts its tanh gates at ``--gate_init`` 1.0, not Flamingo's 0: with closed gates the bridge never
left chance at this size (HfGenVlmConfig.cross_attention_gate_init says why).

Late fusion follows LENS / LLaVA / Flamingo: a language model is first trained on the captions' and answers' text
alone, with the image's description (the digit's name) at the image's place (``text_only``), then frozen while the bridge (vision encoder + projector, or vision
encoder + gated cross-attention) trains. Early fusion trains one model on both from scratch, for as many steps as
the language model and the bridge together. Each model is saved with its processor and reloaded (identical logits).
"""

# No "from __future__ import annotations": the dataclass below must resolve its field types without looking its
# module up in sys.modules (notebooks and tests load this file with importlib, unregistered).
import json
import logging
import os
import sys
from dataclasses import dataclass, field

import torch
from transformers import HfArgumentParser, TrainingArguments

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from image_common import add_dataset_arguments, images_to_tensor, load_user_dataset  # noqa: E402

from hfgen.data.captions import (  # noqa: E402
    CAPTION_PROMPT,
    VlmCollator,
    VlmExample,
    majority_baseline,
    text_only,
    vlm_accuracy,
    vlm_examples,
    vlm_processor,
    vlm_tokenizer,
)
from hfgen.data.images import load_images  # noqa: E402
from hfgen.diffusion.vq_hfgen import HfGenVQModel  # noqa: E402
from hfgen.models import HfGenDecoderConfig, HfGenDecoderForCausalLM  # noqa: E402
from hfgen.models.configuration_hfgen_vit import HfGenViTConfig  # noqa: E402
from hfgen.models.configuration_hfgen_vlm import FUSIONS, HfGenVlmConfig  # noqa: E402
from hfgen.models.modeling_hfgen_vlm import HfGenVlmForConditionalGeneration  # noqa: E402
from hfgen.training.multimodal import (  # noqa: E402
    LabelledTokenTrainer,
    plain_loop_defaults,
    resume_checkpoint,
    stage_arguments,
)
from hfgen.training.recipe_common import check_model_folder, parse_recipe_arguments  # noqa: E402
from hfgen.training.vqvae import ImageTokenCollator, ImageTokenProcessor, image_token_decoder  # noqa: E402


logger = logging.getLogger(__name__)


@dataclass
class VlmArguments:
    """The models and the stages of the recipe (the optimiser, batch size, seed, logging, checkpoints and resume
    are ``TrainingArguments``; ``--learning_rate`` is the language model's and early fusion's)."""

    fusions: list[str] = field(default_factory=lambda: list(FUSIONS), metadata={
        "help": "the fusions to train", "choices": FUSIONS})
    hidden_size: int = field(default=64, metadata={"help": "width of the language model"})
    num_hidden_layers: int = field(default=2, metadata={"help": "language-model layers"})
    vision_hidden_size: int = field(default=64, metadata={"help": "width of the ViT (late fusions)"})
    vision_layers: int = field(default=2, metadata={"help": "ViT layers (late fusions)"})
    image_size: int = field(default=8, metadata={"help": "images are resized to this size (grayscale)"})
    patch_size: int = field(default=2, metadata={"help": "patch size of the images"})
    lm_steps: int = field(default=300, metadata={"help": "text-only steps of the language model"})
    bridge_steps: int = field(default=600, metadata={"help": "steps of a late-fusion bridge (LM frozen)"})
    early_steps: int | None = field(default=None, metadata={"help": "steps of early fusion (None: lm_steps + "
                                                                    "bridge_steps)"})
    bridge_learning_rate: float = field(default=1e-3, metadata={
        "help": "late fusions' bridge (1e-2 made the cross-attention gates close again)"})
    gate_init: float = field(default=1.0, metadata={
        "help": "start of the cross-attention tanh gates (Flamingo: 0, which stays at chance here; 0.5 needs "
                "~1500 steps; see HfGenVlmConfig.cross_attention_gate_init)"})
    eval_images: int = field(default=200, metadata={"help": "held-out images evaluated (4 examples each on the "
                                                            "shipped digits, 1 caption each on the user's data)"})
    plain_lm_text: bool = field(default=False, metadata={
        "help": "train the late fusions' language model on the text with the image placeholder removed instead of "
                "replaced by the digit's name (text_only(describe_image=False))"})
    vqvae: str | None = field(default=None, metadata={
        "help": "a saved HfGenVQModel folder (recipes/train_vqvae.py, as many codes per image as patches): also "
                "train early fusion with its codes as words of the vocabulary ('early_vq', Chameleon-style)"})


def build_parser() -> HfArgumentParser:
    parser = HfArgumentParser((VlmArguments, TrainingArguments), description=__doc__.split("\n\n")[0])
    add_dataset_arguments(parser.add_argument_group("the user's images and captions"), text=True)
    # No evaluation inside training: the accuracies are measured after it.
    parser.set_defaults(**plain_loop_defaults(), output_dir="outputs/vlm", learning_rate=3e-3,
                        per_device_train_batch_size=32)
    return parser


def text_config(args: VlmArguments, tokenizer) -> HfGenDecoderConfig:
    return HfGenDecoderConfig(vocab_size=len(tokenizer), hidden_size=args.hidden_size,
                              intermediate_size=2 * args.hidden_size, num_hidden_layers=args.num_hidden_layers,
                              num_attention_heads=4, max_position_embeddings=128, tie_word_embeddings=True,
                              pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)


class TextCollator:
    """Texts -> right-padded ``input_ids``, ``attention_mask`` and ``labels`` (every token and the end-of-text
    token; -100 on padding)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer([t + self.tokenizer.eos_token for t in texts], padding=True, padding_side="right",
                               return_tensors="pt")
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        return dict(batch)


def train_stage(model, dataset, collator, training_args: TrainingArguments, name: str, steps: int,
                learning_rate: float) -> list[float]:
    """Train ``model`` for ``steps`` with Trainer into OUTPUT_DIR/checkpoints/NAME (resumed from its last checkpoint
    with ``--resume_from_checkpoint``); returns the logged training losses."""
    stage = stage_arguments(training_args, output_dir=os.path.join(training_args.output_dir, "checkpoints", name),
                            max_steps=steps, learning_rate=learning_rate)
    trainer = LabelledTokenTrainer(model=model, args=stage, train_dataset=dataset, data_collator=collator)
    trainer.train(resume_from_checkpoint=resume_checkpoint(training_args.resume_from_checkpoint, stage.output_dir))
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def user_examples(data, eval_images: int, image_size: int, seed: int) -> tuple[list[VlmExample], list[VlmExample]]:
    """Caption examples of the user's images (``--dataset_name`` / ``--train_data_dir``, ``--caption_column``):
    prompt ``"<image> caption:"``, target the row's caption."""
    train, held_out = load_user_dataset(data, seed)
    if data.caption_column not in train.column_names:
        raise ValueError(f"--caption_column {data.caption_column!r} is not a column of the data (columns: "
                         f"{', '.join(train.column_names)}); an imagefolder takes captions from a metadata.jsonl "
                         "with 'file_name' and 'text'.")

    def examples(rows):
        images = images_to_tensor(rows[data.image_column], image_size)
        return [VlmExample(image, CAPTION_PROMPT, " " + text.strip(), "caption")
                for image, text in zip(images, rows[data.caption_column])]

    return examples(train), examples(held_out.select(range(min(eval_images, len(held_out)))))


def build_vlm(args, tokenizer, fusion: str, language_model=None, seed: int = 0) -> HfGenVlmForConditionalGeneration:
    torch.manual_seed(seed)
    vision = HfGenViTConfig(image_size=args.image_size, patch_size=args.patch_size, hidden_size=args.vision_hidden_size,
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
    ax.set_xlabel("logged step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def train_image_tokens(args, tokenizer, train, held_out, training_args) -> tuple[list[float], dict]:
    """Early fusion with the VQ-VAE's codes as words: a plain decoder over the text and image-token vocabulary,
    trained and measured as early fusion is."""
    vq = HfGenVQModel.from_pretrained(args.vqvae).eval()
    config = build_vlm(args, tokenizer, "early").config
    processor = ImageTokenProcessor(vlm_processor(config, tokenizer), vq, config.image_token_id, len(tokenizer))
    torch.manual_seed(training_args.seed)
    model = image_token_decoder(text_config(args, tokenizer), vq)
    steps = args.early_steps or args.lm_steps + args.bridge_steps
    curve = train_stage(model, train, ImageTokenCollator(VlmCollator(processor.processor), processor), training_args,
                        "early_vq", steps, training_args.learning_rate)
    if training_args.process_index != 0:
        return curve, {}
    accuracy = vlm_accuracy(model, processor, held_out)
    logger.info(f"early_vq: {accuracy}")
    model.save_pretrained(os.path.join(training_args.output_dir, "early_vq"))
    return curve, {**accuracy, "train_steps": steps, "image_tokens": vq.num_image_tokens,
                   "trainable_parameters": sum(p.numel() for p in model.parameters())}


def main(argv: list[str] | None = None) -> dict:
    args, training_args, data = parse_recipe_arguments(build_parser(), sys.argv[1:] if argv is None else argv)
    check_model_folder(args.vqvae, "--vqvae", "a folder with a saved HfGenVQModel (OUTPUT_DIR/vqvae of "
                       "recipes/train_vqvae.py)", hub=False)
    os.makedirs(training_args.output_dir, exist_ok=True)
    seed = training_args.seed
    if data.dataset_name or data.train_data_dir:
        train, held_out = user_examples(data, args.eval_images, args.image_size, seed)
    else:
        digits = load_images("digits", image_size=args.image_size)
        train = vlm_examples(digits.train_images, digits.train_labels)
        held_out = vlm_examples(digits.test_images[:args.eval_images], digits.test_labels[:args.eval_images])
    tokenizer = vlm_tokenizer()
    curves, results = {}, {"chance": majority_baseline(train, held_out)}
    language_model = None
    if any(f != "early" for f in args.fusions):
        torch.manual_seed(seed)
        language_model = HfGenDecoderForCausalLM(text_config(args, tokenizer))
        texts = text_only(train, describe_image=not args.plain_lm_text)
        curves["language model (text only)"] = train_stage(language_model, texts, TextCollator(tokenizer),
                                                           training_args, "language_model", args.lm_steps,
                                                           training_args.learning_rate)
    main_process = training_args.process_index == 0
    for fusion in args.fusions:
        late = fusion != "early"
        model = build_vlm(args, tokenizer, fusion, language_model if late else None, seed)
        processor = vlm_processor(model.config, tokenizer)
        collator = VlmCollator(processor)
        frozen_before = [p.detach().clone() for p in model.language_model_parameters()] if late else None
        steps = args.bridge_steps if late else (args.early_steps or args.lm_steps + args.bridge_steps)
        curves[fusion] = train_stage(model, train, collator, training_args, fusion, steps,
                                     args.bridge_learning_rate if late else training_args.learning_rate)
        if late:  # the language model really stayed frozen
            assert all(torch.equal(a, b) for a, b in zip(frozen_before, model.language_model_parameters()))
        if not main_process:
            continue
        accuracy = vlm_accuracy(model, processor, held_out)
        if late and fusion == "cross_attention":
            accuracy["final_gates"] = [[round(layer.attn_gate.item(), 3), round(layer.mlp_gate.item(), 3)]
                                       for layer in model.model.cross_attention_layers]
        batch = collator(held_out[:4])
        batch.pop("labels")
        identical = save_and_reload(model, processor, os.path.join(training_args.output_dir, fusion), batch)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        results[fusion] = {**accuracy, "train_steps": steps, "trainable_parameters": trainable,
                           "language_model_frozen": late, "identical_logits_after_reload": identical}
        logger.info(f"{fusion}: {accuracy} identical logits: {identical}")
    if args.vqvae:
        curves["early_vq"], results["early_vq"] = train_image_tokens(args, tokenizer, train, held_out, training_args)
    if main_process:
        plot_losses(curves, os.path.join(training_args.output_dir, "losses.png"))
        arguments = {**vars(args), **vars(data), "seed": seed,
                     "per_device_train_batch_size": training_args.per_device_train_batch_size}
        with open(os.path.join(training_args.output_dir, "results.json"), "w") as handle:
            json.dump({"args": arguments, "results": results}, handle, indent=2)
        logger.info("saved to %s (one folder per fusion, losses.png, results.json)", training_args.output_dir)
    return results


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
