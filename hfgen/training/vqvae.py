"""An autoregressive prior over a VQ-VAE's image tokens with the hfgen decoder (VQ-VAE's second stage: "fit a
prior over the latents", van den Oord et al. 2017; VQ-VAE-2 fits one per level, here one decoder reads the top codes,
then the bottom codes, as one sequence).

A sequence is ``[start] + tokens`` (:meth:`HfGenVQModel.tokenize`): ``start`` is token ``num_image_tokens`` for an
unconditional prior, ``num_image_tokens + label`` for a class-conditional one. Sampling is ``generate`` from the
start token; a logits processor keeps each position inside its level's codebook (and never writes a start token).
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from hfgen.diffusion.vq_hfgen import HfGenVQModel
from hfgen.models import HfGenDecoderConfig, HfGenDecoderForCausalLM


def prior_config(vq: HfGenVQModel, num_classes: int = 0, hidden_size: int = 128, num_hidden_layers: int = 4,
                 num_attention_heads: int = 4) -> HfGenDecoderConfig:
    """A decoder config over the image tokens of ``vq`` plus one start token (``num_classes`` of them for a
    class-conditional prior)."""
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0 (0: unconditional), got {num_classes}.")
    length = 1 + sum(r * c for r, c in vq.token_grid())
    return HfGenDecoderConfig(vocab_size=vq.num_image_tokens + max(num_classes, 1), hidden_size=hidden_size,
                              intermediate_size=4 * hidden_size, num_hidden_layers=num_hidden_layers,
                              num_attention_heads=num_attention_heads, max_position_embeddings=length,
                              bos_token_id=vq.num_image_tokens)


def prior_sequences(vq: HfGenVQModel, tokens: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """``[start] + tokens`` per row (``labels``: the class of each row, for a class-conditional prior)."""
    start = torch.full((len(tokens), 1), vq.num_image_tokens, dtype=torch.long, device=tokens.device)
    if labels is not None:
        start = start + labels.reshape(-1, 1).to(tokens.device)
    return torch.cat([start, tokens.long()], 1)


class CodebookRangeProcessor(LogitsProcessor):
    """Masks every token outside the codebook of the level the next position belongs to: ``bounds`` holds, per
    image-token position, the allowed ``[low, high)`` (start tokens are never allowed)."""

    def __init__(self, bounds: torch.Tensor, prompt_length: int = 1):
        self.bounds, self.prompt_length = bounds, prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        low, high = self.bounds[input_ids.shape[1] - self.prompt_length].tolist()
        ids = torch.arange(scores.shape[-1], device=scores.device)
        return scores.masked_fill((ids < low) | (ids >= high), float("-inf"))


def codebook_bounds(vq: HfGenVQModel) -> torch.Tensor:
    """``[length, 2]``: the allowed token range of each image-token position."""
    grids = vq.token_grid()
    top = vq.top_quantize.n_e if len(grids) == 2 else 0
    ranges = [(0, top), (top, vq.num_image_tokens)] if top else [(0, vq.num_image_tokens)]
    return torch.tensor([r for (rows, cols), r in zip(grids, ranges) for _ in range(rows * cols)])


@torch.no_grad()
def sample_images(prior: HfGenDecoderForCausalLM, vq: HfGenVQModel, num_samples: int, labels: torch.Tensor | None = None,
                  seed: int = 0, temperature: float = 1.0, batch_size: int = 250) -> torch.Tensor:
    """Images ``[num_samples, C, H, W]`` decoded from token sequences the prior samples (ancestral sampling at
    ``temperature``; ``labels``: the class of each sample for a class-conditional prior)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    bounds = codebook_bounds(vq)
    processors = LogitsProcessorList([CodebookRangeProcessor(bounds)])
    torch.manual_seed(seed)
    prior.eval()
    images = []
    for start in range(0, num_samples, batch_size):
        rows = min(batch_size, num_samples - start)
        part = None if labels is None else labels[start:start + rows]
        prompt = prior_sequences(vq, torch.zeros(rows, 0, dtype=torch.long, device=prior.device), part)
        out = prior.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True, top_k=0, top_p=1.0,
                             temperature=temperature, max_new_tokens=len(bounds),
                             logits_processor=processors, pad_token_id=vq.num_image_tokens)
        images.append(vq.detokenize(out[:, 1:].to(vq.device)))
    return torch.cat(images)


@torch.no_grad()
def prior_loss(prior: HfGenDecoderForCausalLM, sequences: torch.Tensor, batch_size: int = 500) -> float:
    """Mean cross-entropy per image token (nats) of ``sequences`` under the prior."""
    prior.eval()
    total, count = 0.0, 0
    for start in range(0, len(sequences), batch_size):
        batch = sequences[start:start + batch_size].to(prior.device)
        total += prior(input_ids=batch, labels=batch).loss.item() * len(batch)
        count += len(batch)
    return total / count


# Image tokens in a decoder's vocabulary (early fusion as in Chameleon: the VQ-VAE's codes are words)


def fill_image_tokens(input_ids: torch.Tensor, image_token_id: int, tokens: torch.Tensor, offset: int) -> torch.Tensor:
    """``input_ids`` with its image placeholders (each image's run, in reading order) replaced by that image's VQ
    tokens ``[num_images, length]`` shifted by ``offset`` (the size of the text vocabulary)."""
    slots = input_ids == image_token_id
    if int(slots.sum()) != tokens.numel():
        raise ValueError(f"The text holds {int(slots.sum())} image placeholders, but the images have {tokens.numel()} "
                         f"image tokens ({tokens.shape[0]} image(s) x {tokens.shape[1]}): the processor must expand "
                         f"each placeholder to as many tokens as the VQ-VAE writes.")
    out = input_ids.clone()
    out[slots] = tokens.flatten().to(out) + offset
    return out


class ImageTokenProcessor:
    """A VLM processor whose images become VQ-VAE image tokens of the text: ``__call__`` returns ``input_ids`` (text
    ids, then ``text_vocab_size + code``) and ``attention_mask``, no ``pixel_values``; everything else (tokenizer,
    ``batch_decode``) is the wrapped processor's."""

    def __init__(self, processor, vq: HfGenVQModel, image_token_id: int, text_vocab_size: int):
        self.processor, self.vq = processor, vq
        self.image_token_id, self.text_vocab_size = image_token_id, text_vocab_size

    def encode_images(self, batch: dict) -> dict:
        """``pixel_values`` of a processed batch -> image tokens inside its ``input_ids``."""
        tokens = self.vq.tokenize(batch.pop("pixel_values").to(self.vq.device, self.vq.dtype))
        batch["input_ids"] = fill_image_tokens(batch["input_ids"], self.image_token_id, tokens, self.text_vocab_size)
        return batch

    def __call__(self, *args, **kwargs):
        return self.encode_images(self.processor(*args, **kwargs))

    def __getattr__(self, name: str):
        return getattr(self.processor, name)


class ImageTokenCollator:
    """Wraps a collator that writes ``pixel_values`` (e.g. ``hfgen.data.captions.VlmCollator``): the images become
    image tokens in ``input_ids`` (labels stay -100 there: no loss on the image)."""

    def __init__(self, collator, processor: ImageTokenProcessor):
        self.collator, self.processor = collator, processor

    def __call__(self, examples) -> dict:
        return self.processor.encode_images(self.collator(examples))


def image_token_decoder(text_config: HfGenDecoderConfig, vq: HfGenVQModel) -> HfGenDecoderForCausalLM:
    """A decoder over the text vocabulary followed by ``vq``'s image tokens; ``generate`` never writes an image
    token (its answers are text)."""
    config = HfGenDecoderConfig(**{**text_config.to_dict(), "vocab_size": text_config.vocab_size + vq.num_image_tokens})
    model = HfGenDecoderForCausalLM(config)
    model.generation_config.suppress_tokens = list(range(text_config.vocab_size, config.vocab_size))
    return model
