"""Every forward / generate input is checked before work starts (issue 19, item 4), in every family: empty or
wrong-rank ids and embeddings, embeddings of the wrong width or dtype, labels out of range or of the wrong shape,
masks that are not 0/1 or that mask a whole row, ``logits_to_keep=-1``, position ids of the wrong length or
negative, ``generate`` with a mask that does not fit the prompt, Gato's modality ids and image placeholders,
NaN images and NaN diffusion timesteps. Each is a ``ValueError`` that names the argument and the shape or value
seen; a cache passed along is left as it was."""

from __future__ import annotations

import math
import sys

import pytest
import torch

from hfgen import (HfGenDecoderConfig, HfGenDecoderForCausalLM, HfGenEncoderConfig, HfGenEncoderForMaskedLM,
                   HfGenRetNetConfig, HfGenRetNetForCausalLM, HfGenSeq2SeqConfig,
                   HfGenSeq2SeqForConditionalGeneration, HfGenVlmConfig, HfGenVlmForConditionalGeneration)
from hfgen.diffusion import HfGenDiTModel, HfGenUNet2DModel, HfGenVAEModel
from hfgen.models.configuration_hfgen_gato import MODALITIES, HfGenGatoConfig
from hfgen.models.configuration_hfgen_vit import HfGenViTConfig
from hfgen.models.modeling_hfgen_gato import HfGenGatoForCausalLM
from hfgen.models.modeling_hfgen_vit import HfGenViTModel

VOCAB, HIDDEN = 64, 32
SIZES = dict(hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4)
TEXT = dict(SIZES, vocab_size=VOCAB, pad_token_id=0, eos_token_id=1)


def vit_config() -> HfGenViTConfig:
    return HfGenViTConfig(**SIZES, image_size=8, patch_size=4)


def build(family: str):
    torch.manual_seed(0)
    if family == "decoder":
        return HfGenDecoderForCausalLM(HfGenDecoderConfig(**TEXT)).eval()
    if family == "encoder":
        return HfGenEncoderForMaskedLM(HfGenEncoderConfig(**TEXT)).eval()
    if family == "seq2seq":
        return HfGenSeq2SeqForConditionalGeneration(HfGenSeq2SeqConfig(**TEXT)).eval()
    if family == "retnet":
        return HfGenRetNetForCausalLM(HfGenRetNetConfig(**TEXT)).eval()
    if family == "vlm":
        return HfGenVlmForConditionalGeneration(HfGenVlmConfig(
            text_config=HfGenDecoderConfig(**TEXT), vision_config=vit_config(), image_token_id=VOCAB - 1)).eval()
    if family == "gato":
        return HfGenGatoForCausalLM(HfGenGatoConfig(**SIZES, text_vocab_size=VOCAB - 10, num_bins=8, image_size=8,
                                                    patch_size=4, pad_token_id=0, eos_token_id=1)).eval()
    if family == "vit":
        return HfGenViTModel(vit_config()).eval()
    raise KeyError(family)


TEXT_FAMILIES = ("decoder", "encoder", "seq2seq", "retnet", "vlm", "gato")
EMBEDS_FAMILIES = ("decoder", "encoder", "seq2seq", "retnet", "vlm")  # (Gato reads the token stream only)
LM_FAMILIES = ("decoder", "encoder", "seq2seq", "retnet", "vlm", "gato")  # heads with token labels
GENERATORS = ("decoder", "seq2seq", "retnet", "vlm", "gato")
KEEP_FAMILIES = ("decoder", "seq2seq", "retnet", "vlm", "gato")  # heads with logits_to_keep
POSITION_FAMILIES = ("decoder", "encoder", "seq2seq", "retnet", "vlm", "gato")

MODELS: dict[str, torch.nn.Module] = {}


def model_of(family: str):
    if family not in MODELS:
        MODELS[family] = build(family)
    return MODELS[family]


def ids(batch: int = 2, length: int = 5) -> torch.Tensor:
    return torch.randint(2, VOCAB - 12, (batch, length), generator=torch.Generator().manual_seed(1))


def call(family: str, **inputs):
    """The family's forward with ``inputs``; an encoder-decoder gets a good decoder input beside them."""
    model = model_of(family)
    if family == "seq2seq" and "decoder_input_ids" not in inputs and "labels" not in inputs:
        inputs["decoder_input_ids"] = ids(2, 3)
    with torch.no_grad():
        return model(**inputs)


def expect(match_all: list[str], function, *args, **kwargs) -> str:
    with pytest.raises(ValueError) as error:
        function(*args, **kwargs)
    message = str(error.value)
    for part in match_all:
        assert part in message, f"{part!r} not in: {message}"
    return message


# ------------------------------------------------------------------------------------------------ token ids

BAD_IDS = {
    "empty": (torch.zeros(1, 0, dtype=torch.long), ["input_ids", "empty", "(1, 0)"]),
    "1d": (ids()[0], ["input_ids", "2D", "(5,)"]),
    "3d": (ids()[None], ["input_ids", "2D", "(1, 2, 5)"]),
    "float": (ids().float(), ["input_ids", "integer", "float32"]),
    "bool": (ids().bool(), ["input_ids", "integer", "bool"]),
}


@pytest.mark.parametrize("case", list(BAD_IDS))
@pytest.mark.parametrize("family", TEXT_FAMILIES)
def test_bad_input_ids(family, case):
    bad, parts = BAD_IDS[case]
    expect(parts, call, family, input_ids=bad)


def test_non_finite_decoder_inputs_embeds_are_named_as_such():
    embeds = torch.randn(2, 3, HIDDEN)
    embeds[0, 2, 0] = math.nan
    with torch.no_grad():
        expect(["decoder_inputs_embeds", "1 NaN or inf"], model_of("seq2seq"), input_ids=ids(),
               decoder_inputs_embeds=embeds)


@pytest.mark.parametrize("shape", [(2, 5, HIDDEN - 8), (2, 5, HIDDEN + 8), (5, HIDDEN)], ids=["narrow", "wide", "2d"])
def test_encoder_outputs_of_the_wrong_shape(shape):
    """encoder_outputs passed by the caller (e.g. reused across calls) are cross-attended with the decoder's weights:
    a width other than hidden_size was a matmul error."""
    from transformers.modeling_outputs import BaseModelOutput

    model = model_of("seq2seq")
    parts = ["encoder_outputs.last_hidden_state", f"[batch, source tokens, {HIDDEN}]", str(shape)]
    expect(parts, call, "seq2seq", encoder_outputs=BaseModelOutput(last_hidden_state=torch.randn(shape)))
    expect(parts, call, "seq2seq", encoder_outputs=(torch.randn(shape),))
    with torch.no_grad():
        expect(parts, model.generate, encoder_outputs=BaseModelOutput(last_hidden_state=torch.randn(shape)),
               max_new_tokens=2)
        good = model(input_ids=ids(), decoder_input_ids=ids(2, 3))
        reused = model(encoder_outputs=(good.encoder_last_hidden_state,), decoder_input_ids=ids(2, 3))
    torch.testing.assert_close(reused.logits, good.logits, rtol=0, atol=0)


def test_bad_decoder_input_ids_are_named_as_such():
    expect(["decoder_input_ids", "empty"], call, "seq2seq", input_ids=ids(), decoder_input_ids=ids(2, 0))
    expect(["decoder_input_ids", "2D", "(3,)"], call, "seq2seq", input_ids=ids(), decoder_input_ids=ids(2, 3)[0])


# ------------------------------------------------------------------------------------------- embeddings

BAD_EMBEDS = {
    "width": (torch.randn(2, 5, HIDDEN + 3), ["inputs_embeds", f"[batch, tokens, {HIDDEN}]", f"(2, 5, {HIDDEN + 3})"]),
    "2d": (torch.randn(5, HIDDEN), ["inputs_embeds", f"(5, {HIDDEN})"]),
    "empty": (torch.randn(2, 0, HIDDEN), ["inputs_embeds", "empty", f"(2, 0, {HIDDEN})"]),
    "integer": (torch.ones(2, 5, HIDDEN, dtype=torch.long), ["inputs_embeds", "floating point", "int64"]),
    # (CPU sdpa turns NaN queries into 0: without the check, finite garbage)
    "nan": (torch.randn(2, 5, HIDDEN).index_put_((torch.tensor(1), torch.tensor(3), torch.tensor(7)),
                                                 torch.tensor(math.nan)),
            ["inputs_embeds", "1 NaN or inf", f"of {2 * 5 * HIDDEN}"]),
    "inf": (torch.randn(2, 5, HIDDEN).index_fill_(2, torch.tensor([0, 5]), -math.inf),
            ["inputs_embeds", "20 NaN or inf", f"of {2 * 5 * HIDDEN}"]),
}


@pytest.mark.parametrize("case", list(BAD_EMBEDS))
@pytest.mark.parametrize("family", EMBEDS_FAMILIES)
def test_bad_inputs_embeds(family, case):
    bad, parts = BAD_EMBEDS[case]
    expect(parts, call, family, inputs_embeds=bad)


# ---------------------------------------------------------------------------------------------- labels

def bad_labels(case: str) -> tuple[torch.Tensor, list[str]]:
    good = ids()
    if case == "too-large":
        good[1, 2] = VOCAB + 35
        return good, ["labels", f"[0, {VOCAB})", str(VOCAB + 35)]
    if case == "negative":
        good[0, 0] = -5
        return good, ["labels", f"[0, {VOCAB})", "-5", "-100"]
    if case == "short":
        return good[:, :3], ["labels", "(2, 3)", "(2, 5)"]
    if case == "1d":
        return good[0], ["labels", "2D", "(5,)"]
    return good.float(), ["labels", "integer", "float32"]


@pytest.mark.parametrize("case", ["too-large", "negative", "short", "1d", "float"])
@pytest.mark.parametrize("family", LM_FAMILIES)
def test_bad_labels(family, case):
    labels, parts = bad_labels(case)
    if family == "seq2seq":  # labels are the targets: compare with the decoder input given beside them
        if case == "short":
            expect(["labels", "(2, 3)", "(2, 4)"], call, family, input_ids=ids(), decoder_input_ids=ids(2, 4),
                   labels=labels)
            return
        expect(parts, call, family, input_ids=ids(), labels=labels)
        return
    expect(parts, call, family, input_ids=ids(), labels=labels)


def test_ignored_label_positions_are_accepted():
    labels = ids()
    labels[:, :2] = -100
    for family in LM_FAMILIES:
        assert call(family, input_ids=ids(), labels=labels).loss.isfinite()


# ------------------------------------------------------------------------------------------------ masks

def mask_with(value) -> torch.Tensor:
    mask = torch.ones(2, 5)
    mask[1, 2] = value
    return mask


BAD_MASKS = {
    "two": (mask_with(2), ["attention_mask", "only 0", "2.0"]),
    "half": (mask_with(0.5), ["attention_mask", "only 0", "0.5"]),
    "minus-one": (mask_with(-1), ["attention_mask", "only 0", "-1.0"]),
    "nan": (mask_with(math.nan), ["attention_mask", "only 0", "nan"]),
    "long-two": (mask_with(2).long(), ["attention_mask", "only 0", "2"]),
    "all-zero-row": (torch.tensor([[1] * 5, [0] * 5]), ["attention_mask", "row(s) [1]", "at least one 1"]),
    "all-zero-bool": (torch.tensor([[True] * 5, [False] * 5]), ["attention_mask", "row(s) [1]"]),
    "short": (torch.ones(2, 3, dtype=torch.long), ["attention_mask", "(2, 3)", "(2, 5)"]),
}


@pytest.mark.parametrize("case", list(BAD_MASKS))
@pytest.mark.parametrize("family", TEXT_FAMILIES)
def test_bad_attention_mask(family, case):
    mask, parts = BAD_MASKS[case]
    expect(parts, call, family, input_ids=ids(), attention_mask=mask)


@pytest.mark.parametrize("case", ["two", "all-zero-row", "short"])
def test_bad_decoder_attention_mask_is_named_as_such(case):
    mask = BAD_MASKS[case][0][:, :3] if case != "short" else torch.ones(2, 2)
    expect(["decoder_attention_mask"], call, "seq2seq", input_ids=ids(), decoder_input_ids=ids(2, 3),
           decoder_attention_mask=mask)


@pytest.mark.parametrize("family", ["decoder", "retnet"])
def test_bad_mask_leaves_the_cache_as_it_was(family):
    model = model_of(family)
    with torch.no_grad():
        first = model(ids(2, 4), use_cache=True)
    cache = first.past_key_values if first.past_key_values is not None else first.cache
    length = cache.get_seq_length()
    step = ids(2, 1)
    for bad in (torch.tensor([[1, 1, 1, 1, 1], [1, 1, 2, 1, 1]]), torch.tensor([[1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])):
        expect(["attention_mask"], model, step, attention_mask=bad, cache=cache, use_cache=True)
        assert cache.get_seq_length() == length


def test_a_good_mask_with_padding_is_accepted():
    mask = torch.ones(2, 5, dtype=torch.long)
    mask[0, :2] = 0  # left padding, as generate passes it
    for family in TEXT_FAMILIES:
        call(family, input_ids=ids(), attention_mask=mask)
        call(family, input_ids=ids(), attention_mask=mask.bool())


# --------------------------------------------------------------------------------------- logits_to_keep

@pytest.mark.parametrize("keep, parts", [(-1, ["logits_to_keep", "-1", ">= 0"]), (1.5, ["logits_to_keep", "1.5"]),
                                         (torch.ones(2, 2, dtype=torch.long), ["logits_to_keep", "1D", "(2, 2)"])],
                         ids=["negative", "float", "2d-tensor"])
@pytest.mark.parametrize("family", KEEP_FAMILIES)
def test_bad_logits_to_keep(family, keep, parts):
    expect(parts, call, family, input_ids=ids(), logits_to_keep=keep)


# ---------------------------------------------------------------------------------------- position ids

BAD_POSITIONS = {
    "short": (torch.arange(3)[None], ["position_ids", "(1, 3)", "(2, 5)"]),
    "negative": (torch.arange(5)[None] - 3, ["position_ids", "from -3", "0"]),
    "float": (torch.arange(5.0)[None], ["position_ids", "integer", "float32"]),
}


@pytest.mark.parametrize("case", list(BAD_POSITIONS))
@pytest.mark.parametrize("family", POSITION_FAMILIES)
def test_bad_position_ids(family, case):
    positions, parts = BAD_POSITIONS[case]
    expect(parts, call, family, input_ids=ids(), position_ids=positions)


def test_learned_positions_beyond_the_table():
    model = model_of("encoder")  # BERT-like: learned positions, max_position_embeddings=512
    expect(["position_ids", "[0, 512)", "600"], model, ids(), position_ids=torch.arange(596, 601)[None])


# --------------------------------------------------------------------------------------------- generate

def generate(family: str, prompt: torch.Tensor, mask: torch.Tensor | None):
    kwargs = dict(max_new_tokens=2, do_sample=False, pad_token_id=0)
    if mask is not None:
        kwargs["attention_mask"] = mask
    return model_of(family).generate(prompt, **kwargs)


@pytest.mark.parametrize("case, mask, parts", [
    ("short", torch.ones(2, 3, dtype=torch.long), ["attention_mask", "(2, 3)", "(2, 5)", "prompt"]),
    ("long", torch.ones(2, 7, dtype=torch.long), ["attention_mask", "(2, 7)", "(2, 5)"]),
    ("two", torch.full((2, 5), 2), ["attention_mask", "only 0", "2"]),
    ("all-zero-row", torch.tensor([[1] * 5, [0] * 5]), ["attention_mask", "row(s) [1]"]),
], ids=["short", "long", "two", "all-zero-row"])
@pytest.mark.parametrize("family", GENERATORS)
def test_generate_with_a_bad_mask(family, case, mask, parts):
    expect(parts, generate, family, ids(), mask)


@pytest.mark.parametrize("family", GENERATORS)
def test_generate_with_an_empty_or_flat_prompt(family):
    expect(["input_ids", "empty", "(1, 0)"], generate, family, torch.zeros(1, 0, dtype=torch.long), None)
    expect(["input_ids", "2D", "(5,)"], generate, family, ids()[0], None)


@pytest.mark.parametrize("family", ["decoder", "retnet", "gato"])
def test_generate_with_left_padding_still_works(family):
    mask = torch.ones(2, 5, dtype=torch.long)
    mask[0, :2] = 0
    prompt = ids()
    prompt[0, :2] = 0
    assert generate(family, prompt, mask).shape == (2, 7)


# ------------------------------------------------------------------------------------------- Gato, VLM, ViT

def gato_images(n: int = 1) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(2))


def gato_stream(with_image: bool) -> torch.Tensor:
    model = model_of("gato")
    placeholders = [model.config.image_token_id] * model.config.num_patches if with_image else []
    return torch.tensor([placeholders + [5, 6, 7]])


@pytest.mark.parametrize("modality, parts", [
    (len(MODALITIES), ["modality_ids", f"[0, {len(MODALITIES)})", str(len(MODALITIES))]),
    (-1, ["modality_ids", "-1"]),
    (99, ["modality_ids", "99"]),
], ids=["one-past", "negative", "far"])
def test_gato_modality_ids_out_of_range(modality, parts):
    stream = gato_stream(False)
    modality_ids = torch.zeros_like(stream)
    modality_ids[0, 1] = modality
    expect(parts, call, "gato", input_ids=stream, modality_ids=modality_ids)


def test_gato_modality_ids_of_the_wrong_shape_or_dtype():
    stream = gato_stream(False)
    expect(["modality_ids", "(1, 3)", "(1, 2)"], call, "gato", input_ids=stream,
           modality_ids=torch.zeros(1, 2, dtype=torch.long))
    expect(["modality_ids", "integer", "float32"], call, "gato", input_ids=stream,
           modality_ids=torch.zeros(1, 3))


def test_gato_image_placeholders_without_pixel_values():
    model = model_of("gato")
    expect(["input_ids", "image placeholder", str(model.config.image_token_id), "pixel_values"], call, "gato",
           input_ids=gato_stream(True))
    call("gato", input_ids=gato_stream(True), pixel_values=gato_images())  # with the image: fine


def test_vlm_image_placeholders_without_pixel_values():
    model = model_of("vlm")
    stream = torch.tensor([[VOCAB - 1] * model.config.num_image_tokens + [5, 6]])
    expect(["image tokens", f"id {VOCAB - 1}", "0 image(s)"], call, "vlm", input_ids=stream)


@pytest.mark.parametrize("value", [math.nan, math.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("family", ["gato", "vlm", "vit"])
def test_non_finite_pixel_values(family, value):
    images = gato_images()
    images[0, 0, 3, 3] = value
    if family == "vit":
        expect(["pixel_values", "NaN or inf", "1 "], model_of("vit"), images)
    elif family == "gato":
        expect(["pixel_values", "NaN or inf"], call, "gato", input_ids=gato_stream(True), pixel_values=images)
    else:
        model = model_of("vlm")
        stream = torch.tensor([[VOCAB - 1] * model.config.num_image_tokens + [5, 6]])
        expect(["pixel_values", "NaN or inf"], call, "vlm", input_ids=stream, pixel_values=images)


def test_vit_empty_image_batch():
    expect(["pixel_values", "no image", "(0, 1, 8, 8)"], model_of("vit"), torch.zeros(0, 1, 8, 8))


# -------------------------------------------------------------------------------------------- diffusion

DENOISERS = {
    "unet": lambda: HfGenUNet2DModel(sample_size=8, block_out_channels=(8, 16), num_attention_heads=2,
                                     norm_num_groups=4),
    "dit": lambda: HfGenDiTModel(sample_size=8, patch_size=2, hidden_size=16, num_layers=1, num_attention_heads=2),
}


@pytest.mark.parametrize("timestep", [math.nan, math.inf, torch.tensor([3.0, math.nan])],
                         ids=["nan", "inf", "nan-in-batch"])
@pytest.mark.parametrize("kind", list(DENOISERS))
def test_non_finite_diffusion_timesteps(kind, timestep):
    torch.manual_seed(0)
    model = DENOISERS[kind]().eval()
    sample = torch.randn(2, model.config.in_channels, 8, 8)
    with torch.no_grad():
        model(sample, torch.tensor([3.0, 7.0]))  # finite timesteps: fine
        expect(["timestep", "finite", "nan" if not isinstance(timestep, float) or math.isnan(timestep) else "inf"],
               model, sample, timestep)


@pytest.mark.parametrize("value", [math.nan, -math.inf], ids=["nan", "-inf"])
def test_non_finite_images_into_the_vae(value):
    torch.manual_seed(0)
    vae = HfGenVAEModel(in_channels=1, latent_channels=2, block_out_channels=(8, 8), norm_num_groups=4).eval()
    images = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        vae.encode(images)  # finite images: fine
        images[1, 0, 2, 2] = value
        expect(["x", "1 NaN or inf", "of 128"], vae.encode, images)
        expect(["z", "NaN or inf"], vae.decode, torch.full((1, 2, 4, 4), value))


# ------------------------------------------------------------------------------------------------ speed

HOST_READS = {torch.Tensor.tolist, torch.Tensor.item, torch.Tensor.__bool__, torch.Tensor.__int__,
              torch.Tensor.__float__, torch.Tensor.__index__}


class HfgenHostReads(torch.overrides.TorchFunctionMode):
    """Counts the reads of tensor values back to Python (each a device sync on an accelerator) made by hfgen's own
    code (transformers' mask builders make their own, the same before and after the checks)."""

    def __init__(self):
        super().__init__()
        self.reads: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in HOST_READS:
            caller = sys._getframe(1).f_code.co_filename
            if "/hfgen/" in caller:
                self.reads.append(f"{func.__name__} in {caller.rsplit('/', 1)[-1]}")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("family", ["decoder", "retnet", "gato", "vlm"])
def test_one_host_read_per_decoding_step(family):
    """Checking ids, mask and positions costs one read back per decoding step, as the token-id check alone did."""
    model = model_of(family)
    prompt = ids(2, 5)
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[0, 0] = 0  # left padding
    with torch.no_grad():
        first = model(prompt, attention_mask=mask[:, :5], use_cache=True)
        cache = getattr(first, "past_key_values", None) or first.cache
        with HfgenHostReads() as counter:
            model(prompt[:, :1], attention_mask=mask, position_ids=torch.tensor([[4], [5]]), cache=cache,
                  use_cache=True)
    assert len(counter.reads) == 1, counter.reads


# ------------------------------------------------------------------------------------- classification labels

def classifier(kind: str, **keys):
    from hfgen import (HfGenDecoderForSequenceClassification, HfGenEncoderForSequenceClassification,
                       HfGenEncoderForTokenClassification, HfGenSeq2SeqForSequenceClassification)
    torch.manual_seed(0)
    config_class, model_class = {
        "decoder": (HfGenDecoderConfig, HfGenDecoderForSequenceClassification),
        "encoder": (HfGenEncoderConfig, HfGenEncoderForSequenceClassification),
        "seq2seq": (HfGenSeq2SeqConfig, HfGenSeq2SeqForSequenceClassification),
        "encoder-tokens": (HfGenEncoderConfig, HfGenEncoderForTokenClassification),
    }[kind]
    return model_class(config_class(**TEXT, num_labels=3, **keys)).eval()


@pytest.mark.parametrize("labels, parts", [
    (torch.tensor([0, 3]), ["labels", "[0, 3)", "to 3"]),
    (torch.tensor([-1, 2]), ["labels", "[0, 3)", "from -1"]),
    (torch.tensor([0, 1, 2]), ["labels", "(3,)", "(2,)"]),
    (torch.tensor([[0, 1], [1, 2]]), ["labels", "(2, 2)"]),
], ids=["too-large", "negative", "batch", "2d"])
@pytest.mark.parametrize("kind", ["decoder", "encoder", "seq2seq"])
def test_bad_sequence_classification_labels(kind, labels, parts):
    model = classifier(kind)
    assert model(ids(), labels=torch.tensor([0, 2])).loss.isfinite()  # good labels: fine
    expect(parts, model, ids(), labels=labels)


@pytest.mark.parametrize("kind", ["decoder", "encoder", "seq2seq"])
def test_bad_multi_label_targets(kind):
    model = classifier(kind, problem_type="multi_label_classification")
    assert model(ids(), labels=torch.ones(2, 3)).loss.isfinite()
    expect(["labels", "multi-label", "(2, 2)", "(2, 3)"], model, ids(), labels=torch.ones(2, 2))


@pytest.mark.parametrize("labels, parts", [
    (torch.full((2, 5), 3), ["labels", "[0, 3)", "-100", "to 3"]),
    (torch.zeros(2, 4, dtype=torch.long), ["labels", "(2, 4)", "(2, 5)"]),
    (torch.zeros(2, 5), ["labels", "integer", "float32"]),
], ids=["too-large", "short", "float"])
def test_bad_token_classification_labels(labels, parts):
    model = classifier("encoder-tokens")
    good = torch.zeros(2, 5, dtype=torch.long)
    good[:, 0] = -100
    assert model(ids(), labels=good).loss.isfinite()
    expect(parts, model, ids(), labels=labels)
