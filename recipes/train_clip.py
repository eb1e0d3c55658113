#!/usr/bin/env python
"""Train a CLIP-style contrastive model (``hfgen_clip``: hfgen encoder + hfgen ViT) on the shipped digits and their
captions, and report held-out retrieval, zero-shot and linear-probe accuracy.

    python recipes/train_clip.py --output_dir outputs/clip
    python recipes/train_clip.py --softmax_variant off_by_one --position_embedding alibi --max_steps 800
    torchrun --nproc_per_node 2 recipes/train_clip.py --per_device_train_batch_size 64

Training runs on ``Trainer`` with the model's own symmetric contrastive loss (``return_loss=True``), so every
``TrainingArguments`` flag applies (schedules, ``--report_to``, checkpoints, ``--resume_from_checkpoint latest``).
Under several processes (``torchrun``) the loss is the same symmetric loss over the global batch: each process's
pairs against the embeddings gathered from every process (``hfgen.training.clip.ClipTrainer``), so N processes of
batch B train the weights of one process of batch NB (``--text_dropout 0`` for a deterministic comparison).

Writes into ``--output_dir``: the model with its processor (``AutoModel`` / ``AutoProcessor`` /
``pipeline("zero-shot-image-classification", model=OUTPUT_DIR)`` load it, also without hfgen with
``trust_remote_code=True``), ``results.json`` and ``losses.png``.
"""

# No "from __future__ import annotations": the dataclass below must resolve its field types without looking its
# module up in sys.modules (notebooks and tests load this file with importlib, unregistered).
import json
import logging
import os
import sys
from dataclasses import asdict, dataclass, field

import torch
from transformers import AutoProcessor, HfArgumentParser, TrainingArguments

from hfgen.data.encoder_tokenizer import load_encoder_tokenizer
from hfgen.data.images import DATASETS, load_images
from hfgen.models import HfGenClipConfig, HfGenClipModel, HfGenClipProcessor
from hfgen.models.processing_hfgen_clip import clip_image_processor
from hfgen.models.variants import POSITION_EMBEDDINGS, SOFTMAX_VARIANTS
from hfgen.training.clip import ClipCollator, ClipTrainer, clip_examples, evaluate_clip
from hfgen.training.multimodal import plain_loop_defaults, resume_checkpoint
from hfgen.training.recipe_common import loss_history, parse_recipe_arguments

logger = logging.getLogger(__name__)


@dataclass
class ClipArguments:
    """The data and the two towers (the optimiser, batch size, steps, seed, logging and checkpoints are
    ``TrainingArguments``)."""

    dataset: str = field(default="digits", metadata={"help": "the shipped images", "choices": DATASETS})
    image_size: int = field(default=8, metadata={"help": "images are resized to this size (grayscale)"})
    patch_size: int = field(default=2, metadata={"help": "patch size of the ViT"})
    hidden_size: int = field(default=64, metadata={"help": "width of both towers"})
    num_hidden_layers: int = field(default=2, metadata={"help": "layers of each tower"})
    projection_dim: int = field(default=64, metadata={"help": "size of the shared embedding space"})
    text_dropout: float = field(default=0.1, metadata={
        "help": "dropout of the text tower (hidden states and attention; BERT's 0.1); 0 makes a step deterministic"})
    softmax_variant: str = field(default="standard", metadata={"help": "softmax of the text tower's attention",
                                                               "choices": SOFTMAX_VARIANTS})
    position_embedding: str = field(default="learned", metadata={"help": "positions of the text tower",
                                                                 "choices": POSITION_EMBEDDINGS})
    clip_model: str | None = field(default=None, metadata={
        "help": "a saved hfgen_clip folder to measure instead of training one (OUTPUT_DIR gets only results.json)"})
    guide_diffusion_dir: str | None = field(default=None, metadata={
        "help": "after training, measure CLIP guidance on this recipes/train_diffusion.py output folder (its "
                "pipeline/, unconditional or text-conditional, and its measuring classifier/): prompted-digit "
                "accuracy per guidance scale"})
    guidance_scales: list[float] = field(default_factory=lambda: [1.0, 3.0, 10.0], metadata={
        "help": "CLIP guidance scales measured with --guide_diffusion_dir (beside no guidance)"})
    guide_samples_per_digit: int = field(default=20, metadata={"help": "samples per digit and scale"})
    guide_inference_steps: int = field(default=25, metadata={"help": "DDIM steps per sample"})


def build_parser() -> HfArgumentParser:
    parser = HfArgumentParser((ClipArguments, TrainingArguments), description=__doc__.split("\n\n")[0])
    parser.set_defaults(**{**plain_loop_defaults(), "lr_scheduler_type": "cosine", "weight_decay": 0.1},
                        output_dir="outputs/clip", learning_rate=1e-3, max_steps=1500, per_device_train_batch_size=128,
                        warmup_steps=50)
    return parser


def build_model(args: ClipArguments, tokenizer, seed: int) -> HfGenClipModel:
    torch.manual_seed(seed)
    width = args.hidden_size
    text = dict(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width,
                num_hidden_layers=args.num_hidden_layers, num_attention_heads=4, max_position_embeddings=32,
                pad_token_id=tokenizer.pad_token_id, softmax_variant=args.softmax_variant,
                position_embedding=args.position_embedding, hidden_dropout_prob=args.text_dropout,
                attention_dropout=args.text_dropout)
    vision = dict(image_size=args.image_size, patch_size=args.patch_size, hidden_size=width,
                  intermediate_size=2 * width, num_hidden_layers=args.num_hidden_layers, num_attention_heads=4)
    return HfGenClipModel(HfGenClipConfig(text_config=text, vision_config=vision, projection_dim=args.projection_dim))


def load_hfgen_pipeline(path: str):
    """An hfgen diffusion pipeline folder (``model_index.json`` + one subfolder per component) loaded with the
    installed hfgen's classes, not with the code saved in the folder (which may predate ``guidance_callback``)."""
    import diffusers
    from transformers import AutoModel, AutoTokenizer

    import hfgen.diffusion
    from hfgen.diffusion import HfGenDiffusionPipeline

    with open(os.path.join(path, "model_index.json")) as handle:
        index = json.load(handle)
    loaders = {"scheduler": lambda name: getattr(diffusers, name), "text_encoder": lambda name: AutoModel,
               "tokenizer": lambda name: AutoTokenizer}
    components = {}
    for key, (_, class_name) in ((k, v) for k, v in index.items() if not k.startswith("_") and v[1]):
        loader = loaders.get(key, lambda name: getattr(hfgen.diffusion, name))(class_name)
        components[key] = loader.from_pretrained(os.path.join(path, key))
    pipe = HfGenDiffusionPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def measure_guidance(args: ClipArguments, model, processor, data) -> dict:
    """Prompted-digit accuracy of the ``--guide_diffusion_dir`` pipeline without and with CLIP guidance, measured by
    the folder's classifier (or, where the diffusion run saved none, one trained here as image_common does)."""
    from hfgen.diffusion import HfGenDigitClassifier, train_digit_classifier
    from hfgen.diffusion.clip_guidance import guided_digit_accuracy

    pipe = load_hfgen_pipeline(os.path.join(args.guide_diffusion_dir, "pipeline"))
    path = os.path.join(args.guide_diffusion_dir, "classifier")
    classifier = HfGenDigitClassifier.from_pretrained(path).eval() if os.path.isdir(path) else \
        train_digit_classifier(data.train_images, data.train_labels, steps=600)
    return guided_digit_accuracy(pipe, classifier, model.eval(), processor, [None, *args.guidance_scales],
                                 args.guide_samples_per_digit, args.guide_inference_steps)


def plot_losses(losses: list[tuple[int, float]], path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(*zip(*losses))
    ax.set_xlabel("step")
    ax.set_ylabel("contrastive loss")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def train_clip(args: ClipArguments, training_args: TrainingArguments, data, train) -> tuple:
    """Build and train the model with ``Trainer``: ``(model, processor, logged losses, training seconds)``."""
    tokenizer = load_encoder_tokenizer()
    model = build_model(args, tokenizer, training_args.seed)
    processor = HfGenClipProcessor(clip_image_processor(model.config), tokenizer)
    trainer = ClipTrainer(model=model, args=training_args, train_dataset=train,
                          data_collator=ClipCollator(processor))
    trainer.train(resume_from_checkpoint=resume_checkpoint(training_args.resume_from_checkpoint,
                                                           training_args.output_dir))
    return model, processor, loss_history(trainer), trainer.state.log_history[-1].get("train_runtime")


def main(argv: list[str] | None = None) -> dict:
    args, training_args = parse_recipe_arguments(build_parser(), sys.argv[1:] if argv is None else argv)
    seed = training_args.seed
    data = load_images(args.dataset, image_size=args.image_size)
    train = clip_examples(data.train_images, data.train_labels, seed=seed)
    test = clip_examples(data.test_images, data.test_labels, seed=seed + 1)
    if args.clip_model:  # measure a trained model
        model = HfGenClipModel.from_pretrained(args.clip_model)
        processor, losses, runtime = AutoProcessor.from_pretrained(args.clip_model), [], None
    else:
        model, processor, losses, runtime = train_clip(args, training_args, data, train)
    if training_args.process_index != 0:
        return {}
    results = {"held_out": evaluate_clip(model, processor, data.train_images, data.train_labels, test),
               "logit_scale": model.logit_scale_value().item(), "train_pairs": len(train), "test_pairs": len(test),
               "train_runtime_s": runtime}
    logger.info("held-out results: %s", json.dumps(results["held_out"]))
    if args.guide_diffusion_dir:
        results["guided_digit_accuracy"] = measure_guidance(args, model, processor, data)
        logger.info("prompted-digit accuracy by CLIP guidance scale: %s", results["guided_digit_accuracy"])
    os.makedirs(training_args.output_dir, exist_ok=True)
    if not args.clip_model:
        model.save_pretrained(training_args.output_dir)
        processor.save_pretrained(training_args.output_dir)
        plot_losses(losses, os.path.join(training_args.output_dir, "losses.png"))
    with open(os.path.join(training_args.output_dir, "results.json"), "w") as handle:
        json.dump({"args": {**asdict(args), "seed": seed, "max_steps": training_args.max_steps,
                            "per_device_train_batch_size": training_args.per_device_train_batch_size},
                   "results": results}, handle, indent=2)
    logger.info("saved to %s (model, processor, results.json, losses.png)", training_args.output_dir)
    return results


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
