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


VARIANTS = {"early": {}}
# Text-only checks (padding, masks, kernels) and parallel plans: the decoder's battery covers the language model.
NOT_APPLICABLE = ("tp_plan", "generate_from_inputs_embeds")
CHECKS = {k: v for k, v in {**MODEL_CHECKS, **GENERATION_CHECKS}.items() if k not in NOT_APPLICABLE}
FAMILIES = [(Family(f"vlm_{fusion}", vlm(fusion), HfGenVlmModel, HfGenVlmForConditionalGeneration, kind="vlm",
                    extra_inputs=with_images), {"default": {}})
            for fusion in ("early", "projection", "cross_attention")]

EXPECTED_FAILURES = {}


@pytest.mark.parametrize("family,variant,check", cases(FAMILIES, CHECKS, None, EXPECTED_FAILURES))
def test_battery(family, variant, check, tmp_path):
    run(check, family, variant, tmp_path)
