"""Contrastive image-text training and evaluation for ``hfgen_clip`` on the shipped digits and their captions.

Each training pair is a digit image and one caption of it, written with one of :data:`CAPTION_TEMPLATES` ("a
handwritten seven", "the digit seven", ...). Evaluation on the held-out images:

* retrieval, image -> text and text -> image, top-1 and top-5: a query is answered correctly when a retrieved item
  shows / names the same digit (the captions of one digit are interchangeable descriptions of it, as COCO's five
  captions per image are), with the exact chance level of that criterion for these labels;
* zero-shot classification: each image gets the digit whose caption lies closest, the captions written with the
  training templates (averaged over them: CLIP's prompt ensembling) or with a template never seen in training
  (``pipeline("zero-shot-image-classification")``'s default ``"This is a photo of {}."``);
* a linear probe: logistic regression on the image tower's pooled features of the training images (Radford et
  al.'s linear-probe evaluation), and the same on raw pixels for reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.nn.functional import all_gather
from transformers import Trainer

from ..data.captions import NUMBER_WORDS

CAPTION_TEMPLATES = ("a handwritten {}", "the digit {}", "a picture of a {}", "the number {} written by hand")
# transformers' ZeroShotImageClassificationPipeline default: a template the model never saw in training.
PIPELINE_TEMPLATE = "This is a photo of {}."


@dataclass
class ClipExample:
    """One image (``[C, H, W]`` in [-1, 1]), one caption of it, and the digit's label."""

    image: torch.Tensor
    caption: str
    label: int


def clip_examples(images: torch.Tensor, labels: torch.Tensor, templates=CAPTION_TEMPLATES,
                  seed: int = 0) -> list[ClipExample]:
    """Every image with one caption, its template drawn at random (seeded), so the text tower learns the digit's
    word, not one sentence."""
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels.")
    if not templates or any("{}" not in t for t in templates):
        raise ValueError(f"templates must be a non-empty list of strings with one '{{}}' each, got {templates!r}.")
    choice = torch.randint(len(templates), (len(labels),), generator=torch.Generator().manual_seed(seed))
    return [ClipExample(image, templates[t].format(NUMBER_WORDS[label]), label)
            for image, label, t in zip(images, labels.tolist(), choice.tolist())]


class ClipCollator:
    """Examples -> ``input_ids``, ``attention_mask`` (and token types), ``pixel_values`` and ``return_loss=True``:
    what ``HfGenClipModel.forward`` takes, so a plain ``Trainer`` trains it (the loss is the model's own)."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, examples: list[ClipExample]) -> dict:
        batch = dict(self.processor(text=[e.caption for e in examples],
                                    images=torch.stack([e.image for e in examples])))
        batch["return_loss"] = True
        return batch


def gathered_contrastive_loss(text_embeds: torch.Tensor, image_embeds: torch.Tensor,
                              logit_scale: torch.Tensor) -> torch.Tensor:
    """This process's share of CLIP's symmetric loss over the global batch of every process in the default group.

    ``text_embeds`` / ``image_embeds``: this process's ``[B, D]`` unit embeddings (pair i: text i, image i), the same
    ``B`` on every process; ``logit_scale``: ``exp(logit_scale)`` as the model applies it. The embeddings of all
    processes are gathered with autograd; this process scores its own texts against every image and its own images
    against every text (the rows of the global logits that are its examples), the targets being its examples'
    global positions.

    Scaling: with ``W`` processes and ``N = W * B`` pairs, the global loss is ``L = 1/(2N) * sum over all N rows of
    both cross-entropies``, and this process returns ``l_r = 1/(2B) * sum over its own rows``, so ``L = mean_r l_r``.
    The gather's backward sums every process's gradient with respect to this process's embeddings (they are columns
    of the other processes' rows), so each process's backward yields ``d(sum_s l_s)`` through its own examples, and
    DDP's average over the ``W`` processes gives ``d(sum_s l_s) / W = dL``: the one-process gradient of ``L``. The
    logit scale is a replicated parameter used locally: its gradient ``d l_r`` averages to ``dL`` as well. The
    returned loss, averaged over the processes as the Trainer logs it, is ``L``."""
    rank, world = dist.get_rank(), dist.get_world_size()
    all_texts = torch.cat(all_gather(text_embeds))
    all_images = torch.cat(all_gather(image_embeds))
    if all_texts.shape[0] != world * text_embeds.shape[0] or all_images.shape[0] != all_texts.shape[0]:
        raise ValueError(f"gathered_contrastive_loss needs the same number of pairs on every process; process {rank} "
                         f"has {text_embeds.shape[0]} texts and {image_embeds.shape[0]} images.")
    targets = torch.arange(text_embeds.shape[0], device=text_embeds.device) + rank * text_embeds.shape[0]
    text_loss = F.cross_entropy(logit_scale * text_embeds @ all_images.t(), targets)
    image_loss = F.cross_entropy(logit_scale * image_embeds @ all_texts.t(), targets)
    return (text_loss + image_loss) / 2


class ClipTrainer(Trainer):
    """``Trainer`` whose loss under several processes is CLIP's loss over the global batch
    (:func:`gathered_contrastive_loss`), so data-parallel training trains the weights of one process on the same
    global batches; in one process the loss is the model's own (``return_loss=True``), unchanged."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.args.world_size == 1:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        outputs = model(**{**inputs, "return_loss": False})
        scale = self.accelerator.unwrap_model(model).logit_scale_value()
        loss = gathered_contrastive_loss(outputs.text_embeds, outputs.image_embeds, scale)
        return (loss, outputs) if return_outputs else loss


@torch.no_grad()
def image_features(model, processor, images: torch.Tensor, batch_size: int = 256,
                   projected: bool = True) -> torch.Tensor:
    """``[N, projection_dim]`` (``projected``) or the image tower's pooled ``[N, hidden_size]`` features."""
    out = []
    for start in range(0, len(images), batch_size):
        pixels = processor.image_processor(images[start:start + batch_size])["pixel_values"]
        features = model.get_image_features(pixels.to(model.device))
        out.append(features.pooler_output if projected else features.last_hidden_state.mean(1))
    return torch.cat(out).float().cpu()


@torch.no_grad()
def text_features(model, processor, texts: list[str], batch_size: int = 256) -> torch.Tensor:
    """``[len(texts), projection_dim]`` projected (unnormalised) text features."""
    out = []
    for start in range(0, len(texts), batch_size):
        inputs = processor(text=texts[start:start + batch_size]).to(model.device)
        out.append(model.get_text_features(**inputs).pooler_output)
    return torch.cat(out).float().cpu()


def chance_hit_rate(labels: torch.Tensor, k: int) -> float:
    """The expected top-``k`` hit rate of a random ranking, a hit being a retrieved item with the query's label:
    ``1 - C(N - n_c, k) / C(N, k)`` averaged over the queries (``n_c``: items of the query's label)."""
    counts = torch.bincount(labels).tolist()
    n = len(labels)
    rates = []
    for label in labels.tolist():
        same = counts[label]
        rates.append(1 - math.comb(n - same, k) / math.comb(n, k))
    return float(np.mean(rates))


def top_k_hits(similarity: torch.Tensor, query_labels: torch.Tensor, item_labels: torch.Tensor, k: int) -> float:
    """Fraction of the queries (rows) whose ``k`` most similar items (columns) include one of the query's label."""
    top = similarity.topk(min(k, similarity.shape[1]), dim=1).indices
    return (item_labels[top] == query_labels[:, None]).any(1).float().mean().item()


def retrieval_accuracy(image_embeds: torch.Tensor, text_embeds: torch.Tensor, labels: torch.Tensor,
                       ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Image -> text and text -> image retrieval over the held-out pairs (pair i: image i, caption i, label i)."""
    similarity = F.normalize(image_embeds, dim=-1) @ F.normalize(text_embeds, dim=-1).t()
    results = {}
    for k in ks:
        results[f"image_to_text_top{k}"] = top_k_hits(similarity, labels, labels, k)
        results[f"text_to_image_top{k}"] = top_k_hits(similarity.t(), labels, labels, k)
        results[f"chance_top{k}"] = chance_hit_rate(labels, k)
    return results


def zero_shot_logits(model, processor, image_embeds: torch.Tensor, templates) -> torch.Tensor:
    """``[N, 10]`` cosine similarities of each image to each digit's class embedding: the mean of the unit text
    embeddings of the digit's word in every template (one template: just that caption)."""
    classes = []
    for word in NUMBER_WORDS:
        texts = [t.format(word) for t in templates]
        classes.append(F.normalize(text_features(model, processor, texts), dim=-1).mean(0))
    return F.normalize(image_embeds, dim=-1) @ F.normalize(torch.stack(classes), dim=-1).t()


def linear_probe_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                          test_y: torch.Tensor) -> float:
    """Test accuracy of a logistic regression (scikit-learn, standardised features) fitted on the training
    features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    probe.fit(train_x.reshape(len(train_x), -1).numpy(), train_y.numpy())
    return float(probe.score(test_x.reshape(len(test_x), -1).numpy(), test_y.numpy()))


def evaluate_clip(model, processor, train_images: torch.Tensor, train_labels: torch.Tensor,
                  test_examples: list[ClipExample]) -> dict[str, float]:
    """Every number of the module docstring on the held-out ``test_examples``."""
    model.eval()
    images = torch.stack([e.image for e in test_examples])
    labels = torch.tensor([e.label for e in test_examples])
    image_embeds = image_features(model, processor, images)
    results = retrieval_accuracy(image_embeds, text_features(model, processor, [e.caption for e in test_examples]),
                                 labels)
    for name, templates in (("training_templates", CAPTION_TEMPLATES), ("pipeline_template", (PIPELINE_TEMPLATE,))):
        predicted = zero_shot_logits(model, processor, image_embeds, templates).argmax(1)
        results[f"zero_shot_{name}"] = (predicted == labels).float().mean().item()
    results["zero_shot_chance"] = float((torch.bincount(labels).float() / len(labels)).max())
    results["linear_probe_image_tower"] = linear_probe_accuracy(
        image_features(model, processor, train_images, projected=False), train_labels,
        image_features(model, processor, images, projected=False), labels)
    results["linear_probe_pixels"] = linear_probe_accuracy(train_images, train_labels, images, labels)
    return results
