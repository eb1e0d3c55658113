#!/usr/bin/env python
"""Train the Gato-like multi-domain decoder (``hfgen_gato``) on a mix of three domains and evaluate it on each:
text from the embedded corpus (validation perplexity), captioned digits (held-out caption accuracy) and a grid
world with a scripted expert (return against the expert's and a random policy's).

    python recipes/train_gato.py --output_dir outputs/gato --max_train_steps 1500

One step = one batch of each domain, losses summed. As in Gato, the loss is on text and action tokens only
(corpus text, caption text, expert actions), never on image patches or observation values.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from hfgen.data.captions import caption
from hfgen.data.control import GridWorld, episode_tokens, evaluate_policies, expert_action, run_episode
from hfgen.data.corpus import load_corpus
from hfgen.data.images import load_images
from hfgen.data.lm import tokenize_for_causal_lm
from hfgen.data.tokenizer import load_tokenizer
from hfgen.models.configuration_hfgen_gato import MODALITIES, HfGenGatoConfig
from hfgen.models.modeling_hfgen_gato import HfGenGatoForCausalLM


logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/gato", help="where the model, plot and results go")
    parser.add_argument("--hidden_size", type=int, default=64, help="width of the decoder")
    parser.add_argument("--num_hidden_layers", type=int, default=2, help="decoder layers")
    parser.add_argument("--max_train_steps", type=int, default=600, help="training steps (each samples all domains)")
    parser.add_argument("--batch_size", type=int, default=16, help="sequences per domain per step")
    parser.add_argument("--block_size", type=int, default=64, help="tokens per text sequence")
    parser.add_argument("--learning_rate", type=float, default=3e-3, help="AdamW's learning rate")
    parser.add_argument("--expert_episodes", type=int, default=500, help="grid-world episodes of the scripted expert")
    parser.add_argument("--eval_episodes", type=int, default=50, help="grid-world episodes played in the evaluation")
    parser.add_argument("--eval_images", type=int, default=100, help="held-out digits captioned in the evaluation")
    parser.add_argument("--eval_text_blocks", type=int, default=64, help="held-out text blocks scored")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights, data and evaluation")
    return parser


def labelled_loss(model, input_ids, labels, **inputs) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled positions (the head applied there only)."""
    hidden = model.model(inputs_embeds=model.embed(input_ids, inputs.pop("pixel_values", None),
                                                   inputs.pop("modality_ids", None)),
                         use_cache=False, **inputs).last_hidden_state[:, :-1]
    targets = labels[:, 1:]
    keep = targets != -100
    return F.cross_entropy(model.lm_head(hidden[keep]).float(), targets[keep])


def pad_rows(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(map(len, rows))
    return torch.tensor([r + [value] * (width - len(r)) for r in rows])


class Domains:
    """Batches of the three domains."""

    def __init__(self, args, tokenizer, config: HfGenGatoConfig):
        self.args, self.tokenizer, self.config = args, tokenizer, config
        self.rng = random.Random(args.seed)
        blocks = tokenize_for_causal_lm(load_corpus(), tokenizer, args.block_size)
        self.text_train = torch.tensor(blocks["train"]["input_ids"])
        self.text_validation = torch.tensor(blocks["validation"]["input_ids"])[:args.eval_text_blocks]
        self.images = load_images("digits")
        self.caption_ids = {d: tokenizer(" " + caption(d), add_special_tokens=False)["input_ids"] +
                            [tokenizer.eos_token_id] for d in range(10)}
        env = GridWorld(seed=args.seed)
        self.episodes = [episode_tokens(config, run_episode(env, lambda o, h: expert_action(o))[1])
                         for _ in range(args.expert_episodes)]

    def text(self) -> dict:
        rows = self.text_train[torch.randint(len(self.text_train), (self.args.batch_size,))]
        return {"input_ids": rows, "labels": rows}

    def image_prompt(self) -> list[int]:
        return [self.config.image_token_id] * self.config.num_patches

    def captions(self) -> dict:
        index = torch.randint(len(self.images.train_labels), (self.args.batch_size,))
        prompt = self.image_prompt()
        rows = [prompt + self.caption_ids[int(d)] for d in self.images.train_labels[index]]
        labels = [[-100] * len(prompt) + self.caption_ids[int(d)] for d in self.images.train_labels[index]]
        return {"input_ids": torch.tensor(rows) if len({len(r) for r in rows}) == 1 else None, "rows": rows,
                "labels": labels, "pixel_values": self.images.train_images[index]}

    def control(self) -> dict:
        chosen = self.rng.sample(self.episodes, self.args.batch_size)
        ids = pad_rows([e[0] for e in chosen], self.tokenizer.pad_token_id)
        modality = pad_rows([e[1] for e in chosen], MODALITIES.index("text"))
        labels = pad_rows([[i if t else -100 for i, t in zip(e[0], e[2])] for e in chosen], -100)
        mask = pad_rows([[1] * len(e[0]) for e in chosen], 0)
        return {"input_ids": ids, "modality_ids": modality, "labels": labels, "attention_mask": mask}


def caption_batch(batch: dict, pad_id: int) -> dict:
    """Right-pad caption rows (captions differ in length)."""
    ids = pad_rows(batch["rows"], pad_id)
    labels = pad_rows(batch["labels"], -100)
    mask = pad_rows([[1] * len(r) for r in batch["rows"]], 0)
    return {"input_ids": ids, "labels": labels, "attention_mask": mask, "pixel_values": batch["pixel_values"]}


@torch.no_grad()
def perplexity(model, blocks: torch.Tensor) -> float:
    losses = [labelled_loss(model, blocks[i:i + 16], blocks[i:i + 16]).item() for i in range(0, len(blocks), 16)]
    return math.exp(sum(losses) / len(losses))


@torch.no_grad()
def caption_accuracy(model, domains: Domains, count: int) -> float:
    images, labels = domains.images.test_images[:count], domains.images.test_labels[:count]
    prompt = torch.tensor([domains.image_prompt()] * len(images))
    out = model.generate(input_ids=prompt, pixel_values=images, max_new_tokens=6, do_sample=False,
                         pad_token_id=domains.tokenizer.pad_token_id, eos_token_id=domains.tokenizer.eos_token_id)
    texts = domains.tokenizer.batch_decode(out[:, prompt.shape[1]:], skip_special_tokens=True)
    return sum(t.strip() == caption(int(d)) for t, d in zip(texts, labels)) / len(labels)


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    os.makedirs(args.output_dir, exist_ok=True)
    torch.manual_seed(args.seed)
    tokenizer = load_tokenizer()
    config = HfGenGatoConfig(text_vocab_size=len(tokenizer), hidden_size=args.hidden_size,
                             intermediate_size=2 * args.hidden_size, num_hidden_layers=args.num_hidden_layers,
                             num_attention_heads=4, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id, max_position_embeddings=512)
    model = HfGenGatoForCausalLM(config)
    domains = Domains(args, tokenizer, config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate)
    curves = {"text": [], "captions": [], "control": []}
    model.train()
    for _ in tqdm(range(args.max_train_steps), desc="gato"):
        losses = {"text": labelled_loss(model, **domains.text()),
                  "captions": labelled_loss(model, **caption_batch(domains.captions(), tokenizer.pad_token_id)),
                  "control": labelled_loss(model, **domains.control())}
        sum(losses.values()).backward()
        optimizer.step()
        optimizer.zero_grad()
        for name, loss in losses.items():
            curves[name].append(loss.item())
    model.eval()
    results = {"validation_perplexity": perplexity(model, domains.text_validation),
               "caption_accuracy": caption_accuracy(model, domains, args.eval_images),
               **evaluate_policies(model, episodes=args.eval_episodes)}
    # Chance level of the captions: always the training set's most frequent digit.
    most_frequent = int(domains.images.train_labels.bincount().argmax())
    results["caption_chance"] = float((domains.images.test_labels[:args.eval_images] == most_frequent).float().mean())
    model.save_pretrained(os.path.join(args.output_dir, "model"))
    reloaded = HfGenGatoForCausalLM.from_pretrained(os.path.join(args.output_dir, "model")).eval()
    probe = domains.control()
    probe.pop("labels")
    with torch.no_grad():
        results["identical_logits_after_reload"] = torch.equal(model(**probe).logits, reloaded(**probe).logits)
    logger.info(f"gato: {results} identical logits: {results['identical_logits_after_reload']}")
    plot(curves, os.path.join(args.output_dir, "losses.png"))
    with open(os.path.join(args.output_dir, "results.json"), "w") as handle:
        json.dump({"args": vars(args), "results": results}, handle, indent=2)
    logger.info("saved to %s (model/, losses.png, results.json)", args.output_dir)
    return results


def plot(curves: dict, path: str) -> None:
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


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
