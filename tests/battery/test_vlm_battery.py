"""The battery on the vision-language model (each fusion): image placeholders and pixel values in every input."""

from __future__ import annotations

import pytest
import torch

from battery.tester import GENERATION_CHECKS, MODEL_CHECKS, Family, cases, run
from hfgen.models.modeling_hfgen_vlm import HfGenVlmForConditionalGeneration, HfGenVlmModel
from test_vlm import vlm_config


def with_images(config, inputs: dict) -> dict:
    """One image per row: its placeholders in front of the text, pixel values in [-1, 1]."""
    batch = inputs["input_ids"].shape[0]
    placeholders = torch.full((batch, config.num_image_tokens), config.image_token_id)
    ids = torch.cat((placeholders, inputs["input_ids"]), dim=1)
    vision = config.vision_config
    pixels = torch.rand(batch, vision.num_channels, vision.image_size, vision.image_size,
                        generator=torch.Generator().manual_seed(3)) * 2 - 1
    return {**inputs, "input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels}


# Keys of the composite config itself; every other override goes to the language model's config.
TOP_LEVEL = ("num_labels", "output_hidden_states", "output_attentions")


def vlm(fusion: str):
    def make(**overrides):
        config = vlm_config(fusion, **{k: v for k, v in overrides.items() if k not in TOP_LEVEL})
        return type(config).from_dict({**config.to_dict(), **{k: v for k, v in overrides.items() if k in TOP_LEVEL}})
    return make


# Checks that do not apply, per fusion (every other check of transformers' battery runs). Early fusion and projection
# put the image vectors in place of the image placeholders they find in input_ids: generate(inputs_embeds=...) with
# pixel values has no ids to find them in, and is refused with a clear error (transformers' own battery drops the pixel
# values of such VLMs in this test, leaving only the language model's text path, which the decoder's battery checks).
# Cross-attention reads the images beside the text, so it generates from embeddings with its images.
NOT_APPLICABLE = {"early": ("generate_from_inputs_embeds",), "projection": ("generate_from_inputs_embeds",),
                  "cross_attention": ()}
EXPECTED_FAILURES = {}


def vlm_cases() -> list:
    params = []
    for fusion, skipped in NOT_APPLICABLE.items():
        family = Family(f"vlm_{fusion}", vlm(fusion), HfGenVlmModel, HfGenVlmForConditionalGeneration, kind="vlm",
                        extra_inputs=with_images)
        checks = {k: v for k, v in {**MODEL_CHECKS, **GENERATION_CHECKS}.items() if k not in skipped}
        params += cases([(family, {"default": {}})], checks, None, EXPECTED_FAILURES)
    return params


@pytest.mark.parametrize("family,variant,check", vlm_cases())
def test_battery(family, variant, check, tmp_path):
    run(check, family, variant, tmp_path)
