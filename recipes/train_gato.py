#!/usr/bin/env python
"""Train the Gato-like multi-domain decoder (``hfgen_gato``) on a mix of three domains and evaluate it on each:
text from the embedded corpus (validation perplexity), captioned digits (held-out caption accuracy) and a grid
world with a scripted expert (return against the expert's and a random policy's).

    python recipes/train_gato.py --output_dir outputs/gato --max_steps 1500
    python recipes/train_gato.py --train_data_dir my_images/   # captions: metadata.jsonl {"file_name", "text"}
    torchrun --nproc_per_node 2 recipes/train_gato.py --per_device_train_batch_size 8

Trains with ``Trainer`` (``hfgen.training.multimodal.LabelledTokenTrainer``), so every ``TrainingArguments`` flag
applies: schedules, several processes, ``--report_to``, checkpoints under OUTPUT_DIR/checkpoints and
``--resume_from_checkpoint latest``.

One step = one batch of each domain (``--per_device_train_batch_size`` rows each, in one forward pass), the
domains' mean losses summed. As in Gato, the loss is on text and action tokens only
(corpus text, caption text, expert actions), never on image patches or observation values.
"""

# No "from __future__ import annotations": the dataclass below must resolve its field types without looking its
# module up in sys.modules (notebooks and tests load this file with importlib, unregistered).
import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field

import torch
from transformers import HfArgumentParser, TrainingArguments

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from image_common import add_dataset_arguments, images_to_tensor, load_user_dataset  # noqa: E402

from hfgen.data.captions import caption  # noqa: E402
from hfgen.data.control import GridWorld, episode_tokens, evaluate_policies, expert_action, run_episode  # noqa: E402
from hfgen.data.corpus import load_corpus  # noqa: E402
from hfgen.data.images import load_images  # noqa: E402
from hfgen.data.lm import tokenize_for_causal_lm  # noqa: E402
from hfgen.data.tokenizer import load_tokenizer  # noqa: E402
from hfgen.diffusion.vq_hfgen import HfGenVQModel  # noqa: E402
from hfgen.metrics import load_metric  # noqa: E402
from hfgen.models.configuration_hfgen_gato import MODALITIES, HfGenGatoConfig  # noqa: E402
from hfgen.models.modeling_hfgen_gato import HfGenGatoForCausalLM  # noqa: E402
from hfgen.training.multimodal import (  # noqa: E402
    LabelledTokenTrainer,
    labelled_token_loss,
    plain_loop_defaults,
    resume_checkpoint,
    stage_arguments,
)
from hfgen.training.recipe_common import check_model_folder, parse_recipe_arguments  # noqa: E402


logger = logging.getLogger(__name__)

DOMAINS = ("text", "captions", "control")


@dataclass
class GatoArguments:
    """The model, the data of the three domains and the evaluation (the optimiser, batch size -- rows per domain
    per step --, seed, logging, checkpoints and resume are ``TrainingArguments``)."""

    hidden_size: int = field(default=64, metadata={"help": "width of the decoder"})
    num_hidden_layers: int = field(default=2, metadata={"help": "decoder layers"})
    block_size: int = field(default=64, metadata={"help": "tokens per text sequence"})
    expert_episodes: int = field(default=500, metadata={"help": "grid-world episodes of the scripted expert"})
    eval_episodes: int = field(default=50, metadata={"help": "grid-world episodes played in the evaluation"})
    eval_images: int = field(default=100, metadata={"help": "held-out images captioned in the evaluation"})
    eval_text_blocks: int = field(default=64, metadata={"help": "held-out text blocks scored"})
    vqvae: str | None = field(default=None, metadata={
        "help": "a saved HfGenVQModel folder (recipes/train_vqvae.py): images enter as its codes, words of the "
                "vocabulary, instead of patches"})


def build_parser() -> HfArgumentParser:
    parser = HfArgumentParser((GatoArguments, TrainingArguments), description=__doc__.split("\n\n")[0])
    add_dataset_arguments(parser.add_argument_group("the user's captioned images (instead of the digits)"), text=True)
    parser.set_defaults(**plain_loop_defaults(), output_dir="outputs/gato", max_steps=600, learning_rate=3e-3,
                        per_device_train_batch_size=16)
    return parser


def pad_rows(rows: list[list[int]], value: int, width: int | None = None) -> torch.Tensor:
    width = width or max(map(len, rows))
    return torch.tensor([r + [value] * (width - len(r)) for r in rows])


class Domains:
    """The three domains' training data and held-out sets: text blocks of the embedded corpus, captioned images
    (the digits, or the user's ``--dataset_name`` / ``--train_data_dir``), and the scripted expert's episodes."""

    def __init__(self, args: GatoArguments, data, tokenizer, config: HfGenGatoConfig, seed: int, vq=None):
        self.tokenizer, self.config = tokenizer, config
        blocks = tokenize_for_causal_lm(load_corpus(), tokenizer, args.block_size)
        self.text_train = blocks["train"]["input_ids"]
        self.text_validation = torch.tensor(blocks["validation"]["input_ids"])[:args.eval_text_blocks]
        if data.dataset_name or data.train_data_dir:
            train, held_out = load_user_dataset(data, seed)
            self.train_images = images_to_tensor(train[data.image_column], config.image_size)
            self.train_captions = [c.strip() for c in train[data.caption_column]]
            held_out = held_out.select(range(min(args.eval_images, len(held_out))))
            self.test_images = images_to_tensor(held_out[data.image_column], config.image_size)
            self.test_captions = [c.strip() for c in held_out[data.caption_column]]
        else:
            digits = load_images("digits", image_size=config.image_size)
            self.train_images, self.test_images = digits.train_images, digits.test_images[:args.eval_images]
            self.train_captions = [caption(int(d)) for d in digits.train_labels]
            self.test_captions = [caption(int(d)) for d in digits.test_labels[:args.eval_images]]
        self.vq_tokens = None if vq is None else {  # the images as words (the VQ-VAE's codes) instead of patches
            split: (vq.tokenize(images) + config.first_image_code_id).tolist()
            for split, images in (("train", self.train_images), ("test", self.test_images))}
        self.caption_ids = [tokenizer(" " + c, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                            for c in self.train_captions]
        env = GridWorld(seed=seed)
        self.episodes = [episode_tokens(config, run_episode(env, lambda o, h: expert_action(o))[1])
                         for _ in range(args.expert_episodes)]

    def __len__(self) -> int:
        """Indices of one epoch: the largest domain once, the others cycled."""
        return max(len(self.text_train), len(self.train_images), len(self.episodes))

    def image_prompt(self, index: int = 0, split: str = "train") -> list[int]:
        if self.vq_tokens is not None:
            return self.vq_tokens[split][index]
        return [self.config.image_token_id] * self.config.num_patches


class GatoCollator:
    """A list of indices -> one batch with a row of each domain per index (text, caption, expert episode), right-
    padded to one width, and ``loss_groups``: the rows of each domain, whose mean losses are summed (one loss per
    domain, whatever its token count, as in the separate batches of Gato's mixture)."""

    def __init__(self, domains: Domains):
        self.domains = domains

    def __call__(self, indices: list[int]) -> dict:
        d = self.domains
        text = [d.text_train[i % len(d.text_train)] for i in indices]
        image_index = [i % len(d.train_images) for i in indices]
        prompts = [d.image_prompt(i) for i in image_index]
        captions = [p + d.caption_ids[i] for p, i in zip(prompts, image_index)]
        episodes = [d.episodes[i % len(d.episodes)] for i in indices]
        text_mode, image_mode = MODALITIES.index("text"), MODALITIES.index("image")
        ids = text + captions + [e[0] for e in episodes]
        modality = ([[text_mode] * len(r) for r in text] +
                    [[image_mode] * len(p) + [text_mode] * (len(r) - len(p)) for p, r in zip(prompts, captions)] +
                    [e[1] for e in episodes])
        labels = (text + [[-100] * len(p) + d.caption_ids[i] for p, i in zip(prompts, image_index)] +
                  [[i if t else -100 for i, t in zip(e[0], e[2])] for e in episodes])
        width, n = max(map(len, ids)), len(indices)
        batch = {"input_ids": pad_rows(ids, d.tokenizer.pad_token_id, width),
                 "modality_ids": pad_rows(modality, text_mode, width),
                 "attention_mask": pad_rows([[1] * len(r) for r in ids], 0, width),
                 "labels": pad_rows(labels, -100, width),
                 "loss_groups": [slice(k * n, (k + 1) * n) for k in range(len(DOMAINS))]}
        if d.vq_tokens is None:
            batch["pixel_values"] = d.train_images[image_index]
        return batch


@torch.no_grad()
def perplexity(model, blocks: torch.Tensor) -> float:
    losses = [labelled_token_loss(model, {"input_ids": blocks[i:i + 16], "labels": blocks[i:i + 16]}).item()
              for i in range(0, len(blocks), 16)]
    return math.exp(sum(losses) / len(losses))


@torch.no_grad()
def caption_accuracy(model, domains: Domains) -> float:
    images, captions = domains.test_images, domains.test_captions
    prompt = torch.tensor([domains.image_prompt(i, "test") for i in range(len(images))])
    images = images if domains.vq_tokens is None else None
    longest = max(len(domains.tokenizer(" " + c, add_special_tokens=False)["input_ids"]) for c in captions)
    out = model.generate(input_ids=prompt, pixel_values=images, max_new_tokens=max(6, longest + 1), do_sample=False,
                         pad_token_id=domains.tokenizer.pad_token_id, eos_token_id=domains.tokenizer.eos_token_id)
    texts = domains.tokenizer.batch_decode(out[:, prompt.shape[1]:], skip_special_tokens=True)
    return load_metric("exact_match").compute(predictions=[t.strip() for t in texts],
                                              references=list(captions))["exact_match"]


def main(argv: list[str] | None = None) -> dict:
    args, training_args, data = parse_recipe_arguments(build_parser(), sys.argv[1:] if argv is None else argv)
    check_model_folder(args.vqvae, "--vqvae", "a folder with a saved HfGenVQModel (OUTPUT_DIR/vqvae of "
                       "recipes/train_vqvae.py)", hub=False)
    os.makedirs(training_args.output_dir, exist_ok=True)
    vq = HfGenVQModel.from_pretrained(args.vqvae).eval() if args.vqvae else None
    torch.manual_seed(training_args.seed)
    tokenizer = load_tokenizer()
    config = HfGenGatoConfig(text_vocab_size=len(tokenizer), hidden_size=args.hidden_size,
                             intermediate_size=2 * args.hidden_size, num_hidden_layers=args.num_hidden_layers,
                             num_attention_heads=4, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id, max_position_embeddings=512,
                             image_vocab_size=vq.num_image_tokens if vq else 0)
    model = HfGenGatoForCausalLM(config)
    domains = Domains(args, data, tokenizer, config, training_args.seed, vq)
    checkpoints = os.path.join(training_args.output_dir, "checkpoints")
    trainer = LabelledTokenTrainer(model=model, args=stage_arguments(training_args, output_dir=checkpoints),
                                   train_dataset=list(range(len(domains))), data_collator=GatoCollator(domains))
    trainer.train(resume_from_checkpoint=resume_checkpoint(training_args.resume_from_checkpoint, checkpoints))
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    results = {}
    if trainer.is_world_process_zero():
        results = evaluate(model, domains, args, training_args)
        plot({"text + captions + control": losses}, os.path.join(training_args.output_dir, "losses.png"))
        arguments = {**vars(args), **vars(data), "seed": training_args.seed, "max_steps": training_args.max_steps,
                     "per_device_train_batch_size": training_args.per_device_train_batch_size}
        with open(os.path.join(training_args.output_dir, "results.json"), "w") as handle:
            json.dump({"args": arguments, "results": results}, handle, indent=2)
        logger.info("saved to %s (model/, losses.png, results.json)", training_args.output_dir)
    trainer.accelerator.wait_for_everyone()
    return results


def evaluate(model, domains: Domains, args: GatoArguments, training_args: TrainingArguments) -> dict:
    """Validation perplexity, caption accuracy and its chance level, the grid-world returns; the model saved to
    OUTPUT_DIR/model and reloaded (identical logits)."""
    model.eval()
    results = {"validation_perplexity": perplexity(model, domains.text_validation),
               "caption_accuracy": caption_accuracy(model, domains),
               **evaluate_policies(model, episodes=args.eval_episodes)}
    # Chance level of the captions: always the training set's most frequent caption.
    most_frequent = max(set(domains.train_captions), key=domains.train_captions.count)
    results["caption_chance"] = sum(c == most_frequent for c in domains.test_captions) / len(domains.test_captions)
    path = os.path.join(training_args.output_dir, "model")
    model.save_pretrained(path)
    reloaded = HfGenGatoForCausalLM.from_pretrained(path).eval()
    probe = GatoCollator(domains)(list(range(4)))
    probe = {k: v for k, v in probe.items() if k not in ("labels", "loss_groups")}
    with torch.no_grad():
        results["identical_logits_after_reload"] = torch.equal(model(**probe).logits, reloaded(**probe).logits)
    logger.info(f"gato: {results} identical logits: {results['identical_logits_after_reload']}")
    return results


def plot(curves: dict, path: str) -> None:
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


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
