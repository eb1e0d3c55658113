"""transformers' static cache and whole-graph ``torch.compile`` on every text family (decoder, seq2seq, VLM, Gato;
the encoder's forward) and every position type: the maintained decoding machinery (``cache_implementation="static"``,
``compile_config``) must give the tokens of eager decoding with a dynamic cache and without a cache.

``fullgraph=True`` raises on any graph break, so a run that finishes is the check that the step compiles as one
graph. Dynamo's tracing is what breaks or not; the default suite hands the captured graph to a counting backend
that runs it as captured (seconds per model), and the ``slow`` part compiles through inductor, the default backend,
for every family x position type and the softmax / scoring variants (each inductor compilation takes 10-40 s on a
CPU core).

On a CPU, ``generate`` compiles only when the compile config says so: ``_compile_all_devices`` is the flag
transformers' own tests set for that ("useful for testing purposes", ``CompileConfig``).
"""

from __future__ import annotations

import pytest
import torch
from transformers import CompileConfig, StaticCache

from conftest import build, padded, random_ids, tiny_config
from hfgen import (HfGenDecoderForCausalLM, HfGenEncoderConfig, HfGenEncoderForMaskedLM,
                   HfGenSeq2SeqForConditionalGeneration)
from hfgen.models.configuration_hfgen_vlm import FUSIONS
from test_gato import tiny_gato
from test_seq2seq_fixtures import source_batch, tiny_seq2seq_config
from test_vlm import build_vlm, images, prompt

POSITIONS = ("rotary", "sinusoidal", "learned", "relative_bias", "alibi", "none")
NEW_TOKENS = 6
GREEDY = dict(do_sample=False, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, eos_token_id=None,
              output_logits=True, return_dict_in_generate=True)
# Softmax and scoring variants: each takes another attention path (SDPA with a scale, a prepended zero key, two
# passes for the entropy, chunked eager probabilities).
VARIANTS = {
    "temperature": dict(softmax_variant="temperature", softmax_temperature=2.0),
    "adaptive_temperature": dict(softmax_variant="adaptive_temperature"),
    "off_by_one-mqa": dict(softmax_variant="off_by_one", num_key_value_heads=1),
    "clipped-gate": dict(softmax_variant="clipped", attention_gate=True),
    "additive": dict(attention_scoring="additive"),
    "general": dict(attention_scoring="general"),
    "dot_product": dict(attention_scoring="dot_product"),
}


def case(family: str, position: str = "rotary", **variant):
    """``(model, generate inputs)`` for a tiny model of ``family`` with ``position`` embeddings: a left-padded
    decoder batch, a padded seq2seq source batch, two image prompts (VLM, Gato)."""
    if family == "decoder":
        model = build(HfGenDecoderForCausalLM, tiny_config(position_embedding=position, **variant))
        ids, mask = padded([random_ids(1, 7, seed=2)[0], random_ids(1, 4, seed=3)[0]], "left")
        return model, dict(input_ids=ids, attention_mask=mask, pad_token_id=0)
    if family == "seq2seq":
        model = build(HfGenSeq2SeqForConditionalGeneration, tiny_seq2seq_config(position_embedding=position, **variant))
        ids, mask = source_batch()
        return model, dict(input_ids=ids, attention_mask=mask)
    if family.startswith("vlm-"):
        model = build_vlm(family[4:], position_embedding=position, **variant)
        return model, dict(input_ids=torch.stack([prompt(model, [5, 6, 7]), prompt(model, [9, 3, 2])]),
                           pixel_values=images(2))
    assert family == "gato" and position == "rotary" and not variant, "Gato's tiny model keeps its own config"
    model = tiny_gato()
    c = model.config
    return model, dict(input_ids=torch.tensor([[c.image_token_id] * c.num_patches + [5, 6]] * 2),
                       pixel_values=torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(4)),
                       suppress_tokens=[c.image_token_id])


FAMILY_POSITIONS = ([("decoder", p) for p in POSITIONS] + [("seq2seq", p) for p in POSITIONS]
                    + [(f"vlm-{fusion}", "rotary") for fusion in FUSIONS] + [("gato", "rotary")])
# The default suite compiles one family per position type (every family at least once).
# (ALiBi: test_compiled_forward_on_a_static_cache_step_gives_the_eager_logits.)
REPRESENTATIVES = [("decoder", "rotary"), ("decoder", "learned"), ("decoder", "none"), ("seq2seq", "relative_bias"),
                   ("seq2seq", "sinusoidal"), ("vlm-cross_attention", "rotary"), ("gato", "rotary")]


def ids_of(pairs):
    return [f"{family}-{position}" for family, position in pairs]


class GraphCounter:
    """A ``torch.compile`` backend that runs each captured graph as it is and counts the graphs: one graph means
    one capture for every decoding step (no graph break -- ``fullgraph=True`` raises on those -- and no
    recompilation)."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, graph_module: torch.fx.GraphModule, example_inputs):
        self.graphs += 1
        return graph_module.forward

    def __deepcopy__(self, memo):
        return self  # CompileConfig.to_dict() deep-copies its backend: count in this one


def cpu_compile_config(backend) -> CompileConfig:
    config = CompileConfig(fullgraph=True, backend=backend, mode="default")  # ("reduce-overhead": CUDA graphs)
    config._compile_all_devices = True  # generate compiles on CUDA & co. only, unless told (see module docstring)
    return config


def generate(model, inputs, **kwargs):
    out = model.generate(**inputs, **GREEDY, **kwargs)
    return out.sequences, torch.stack(out.logits, dim=1)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()  # compiled code of one model must not serve (or count against) the next
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("family, position", FAMILY_POSITIONS, ids=ids_of(FAMILY_POSITIONS))
def test_static_cache_tokens_equal_dynamic_cache_and_no_cache(family, position):
    model, inputs = case(family, position)
    static, static_logits = generate(model, inputs, cache_implementation="static")
    dynamic, dynamic_logits = generate(model, inputs)
    uncached, uncached_logits = generate(model, inputs, use_cache=False)
    assert static.shape[1] >= NEW_TOKENS
    assert torch.equal(static, dynamic) and torch.equal(static, uncached)
    # Same arithmetic over a longer, masked key range: only the summation order of the softmax differs.
    torch.testing.assert_close(static_logits, dynamic_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(static_logits, uncached_logits, atol=1e-5, rtol=1e-5)


def check_compiled_generate(model, inputs, backend, atol: float):
    eager, eager_logits = generate(model, inputs, cache_implementation="static")
    compiled, compiled_logits = generate(model, inputs, cache_implementation="static",
                                         compile_config=cpu_compile_config(backend))
    assert torch.equal(compiled, eager)
    torch.testing.assert_close(compiled_logits, eager_logits, atol=atol, rtol=atol)


@pytest.mark.parametrize("family, position", REPRESENTATIVES, ids=ids_of(REPRESENTATIVES))
def test_generate_with_compile_config_is_one_graph_with_the_eager_tokens(family, position):
    """Every decoding step after the (eager) first one runs the one compiled graph. The counting backend runs the
    captured graph op for op, so its logits are the eager ones up to the order of floating-point operations."""
    model, inputs = case(family, position)
    counter = GraphCounter()
    check_compiled_generate(model, inputs, counter, atol=1e-6)
    assert counter.graphs == 1


@pytest.mark.parametrize("position", ["relative_bias", "alibi"])
def test_compiled_forward_on_a_static_cache_step_gives_the_eager_logits(position):
    """``torch.compile(model.forward, fullgraph=True)`` on a user's ``StaticCache``, the usual recipe. Relative
    biases and ALiBi count distances from the cache's length, a tensor here: they must come out of static shapes
    (before, ``torch.arange`` from that tensor made the graph's shape depend on the cache's contents)."""
    model, inputs = case("decoder", position)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    caches = [StaticCache(config=model.config, max_cache_len=16) for _ in range(2)]
    counter = GraphCounter()
    compiled_forward = torch.compile(model.forward, fullgraph=True, backend=counter)
    with torch.no_grad():
        for cache in caches:
            model(input_ids=ids, attention_mask=mask, cache=cache, use_cache=True)
        position_ids = mask.sum(-1, keepdim=True)  # the next position of each row (left padding)
        for step in range(4):
            step_ids = random_ids(2, 1, seed=10 + step)
            step_mask = torch.cat((mask, torch.ones(2, step + 1, dtype=mask.dtype)), dim=1)
            kwargs = dict(input_ids=step_ids, attention_mask=step_mask, position_ids=position_ids + step,
                          use_cache=True)
            eager = model(cache=caches[0], **kwargs).logits
            compiled = compiled_forward(cache=caches[1], **kwargs).logits
            torch.testing.assert_close(compiled, eager, atol=1e-6, rtol=1e-6)
    # The first step's graph, then one with the mask's length dynamic (it grows by one per step): not one per step.
    assert counter.graphs == 2


@pytest.mark.parametrize("position", ["disentangled",
                                      *(pytest.param(p, marks=pytest.mark.slow) for p in POSITIONS)])
def test_encoder_forward_compiles_as_one_graph(position):
    """The encoder has no cache; its forward (DeBERTa's disentangled attention included) compiles whole."""
    config = HfGenEncoderConfig(vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=4, position_embedding=position, initializer_range=0.1)
    model = build(HfGenEncoderForMaskedLM, config)
    ids = random_ids(2, 7, vocab_size=99)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    counter = GraphCounter()
    with torch.no_grad():
        eager = model(input_ids=ids, attention_mask=mask).logits
        compiled = torch.compile(model.forward, fullgraph=True, backend=counter)(input_ids=ids,
                                                                                  attention_mask=mask).logits
    torch.testing.assert_close(compiled, eager, atol=1e-6, rtol=1e-6)
    assert counter.graphs == 1


def test_bad_token_ids_still_fail_clearly_before_compiled_steps():
    """The token-id range check runs outside the compiled region: generate's first step is eager and refuses an
    id beyond the vocabulary with the usual ValueError, compile_config or not."""
    model, inputs = case("decoder", "rotary")
    bad = inputs["input_ids"].clone()
    bad[0, -1] = model.config.vocab_size
    with pytest.raises(ValueError, match=r"Token ids must lie in \[0, 128\)"):
        model.generate(**{**inputs, "input_ids": bad}, **GREEDY, cache_implementation="static",
                       compile_config=cpu_compile_config(GraphCounter()))


@pytest.mark.slow
@pytest.mark.parametrize("family, position", FAMILY_POSITIONS, ids=ids_of(FAMILY_POSITIONS))
def test_inductor_generate_gives_the_eager_tokens(family, position):
    """Inductor fuses and reorders the float32 sums: the logits (size 2-5 here) differ by a few units in the last
    place (measured <= 8e-7 for the decoder, seq2seq and VLM), so 1e-5 allows for other orders, not other maths."""
    check_compiled_generate(*case(family, position), "inductor", atol=1e-5)


CROSS = [(family, position, variant) for family, position in FAMILY_POSITIONS if family != "gato"
         for variant in ("standard", *VARIANTS)]


@pytest.mark.slow
@pytest.mark.parametrize("family, position, variant", CROSS, ids=[f"{f}-{p}-{v}" for f, p, v in CROSS])
def test_every_variant_compiles_as_one_graph(family, position, variant):
    model, inputs = case(family, position, **VARIANTS.get(variant, {}))
    counter = GraphCounter()
    check_compiled_generate(model, inputs, counter, atol=1e-6)
    assert counter.graphs == 1


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_inductor_generate_every_variant(variant):
    check_compiled_generate(*case("decoder", "rotary", **VARIANTS[variant]), "inductor", atol=1e-5)
