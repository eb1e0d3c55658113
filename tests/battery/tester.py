"""The checks of the battery, each a plain function ``check_<name>(family, variant)``.

A :class:`Family` says how to build a family's config (from a variant's overrides), which classes to test and
which inputs they take. The same checks run on transformers' own Llama / BERT / T5 (``control=True``): a check that
the control fails is a problem of the check, not of hfgen.

Each check compares against something independent of the code under test: an invariant (cached == uncached,
each example alone == in a batch, padded == alone, with == without gradient checkpointing, save -> load),
transformers' own conventions (output fields and shapes, the parallel styles it knows), or the formula.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import os
import re
from collections.abc import Callable

import pytest
import torch
from transformers import PreTrainedConfig
from transformers.utils import ModelOutput

# Tolerance of "the same computation, differently batched / checkpointed / reloaded" in fp32 (transformers'
# batching test uses 1e-5 as well).
ATOL = 1e-5
# Output fields that are not per-example (the loss is a batch mean; the cache holds the batch).
NOT_PER_EXAMPLE = {"loss", "cache", "past_key_values", "aux_loss", "z_loss", "router_aux_loss", "router_z_loss"}


@dataclasses.dataclass(frozen=True)
class Family:
    """What the checks need to know about one model family (or one control).

    ``kind``: ``causal`` (decoder-only, generates), ``masked`` (bidirectional encoder), ``seq2seq``
    (encoder-decoder, generates) or ``vlm`` (image + text, generates).
    """

    name: str
    make_config: Callable[..., PreTrainedConfig]
    base: type
    head: type  # the language-modelling head (logits over the vocabulary)
    kind: str
    control: bool = False
    has_attentions: bool = True
    # (config, inputs) -> inputs: e.g. image placeholders in the ids and pixel_values beside them
    extra_inputs: Callable[[PreTrainedConfig, dict], dict] | None = None
    # parameters the head's loss never reaches, by design (e.g. a pooler beside a masked-LM head)
    unused_parameters: tuple[str, ...] = ()

    def config(self, variant: dict, **overrides) -> PreTrainedConfig:
        return self.make_config(**{**variant, **overrides})

    def build(self, model_class: type, variant: dict, attn_implementation: str = "eager", seed: int = 0,
              **overrides):
        torch.manual_seed(seed)
        config = self.config(variant, **overrides)
        if self.has_attentions:  # (RetNet has no attention implementation to choose)
            config._attn_implementation = attn_implementation
        return model_class(copy.deepcopy(config)).eval()

    @property
    def causal(self) -> bool:
        """Decoder-only: causal attention, left padding (as generate pads), positions from the mask."""
        return self.kind in ("causal", "vlm")

    @property
    def generates(self) -> bool:
        return self.kind in ("causal", "seq2seq", "vlm")

    def num_layers(self, config, decoder: bool = False) -> int:
        if decoder:
            return getattr(config, "num_decoder_layers", None) or config.num_hidden_layers
        text = config.get_text_config()
        return text.num_hidden_layers

    def inputs(self, config, batch: int = 3, length: int = 7, seed: int = 1) -> dict:
        """Token ids avoiding 0 (the pad id of every tiny config here) and a full attention mask."""
        generator = torch.Generator().manual_seed(seed)
        vocab = self.text_vocab(config)
        ids = torch.randint(1, vocab, (batch, length), generator=generator)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if self.kind == "seq2seq":
            inputs["decoder_input_ids"] = torch.randint(1, vocab, (batch, max(length - 2, 2)), generator=generator)
        return self.extra_inputs(config, inputs) if self.extra_inputs is not None else inputs

    @staticmethod
    def text_vocab(config) -> int:
        text = config.get_text_config()
        # the VLM's last ids are image placeholders: keep plain text below them
        return min(text.vocab_size, getattr(config, "image_token_id", None) or text.vocab_size)


def xfail(reason: str):
    return pytest.mark.xfail(strict=True, reason=reason)


def cases(families: list[tuple[Family, dict[str, dict]]], checks: dict[str, Callable],
          variant_checks: tuple[str, ...] | None = None,
          expected_failures: dict[tuple[str, str, str], str] | None = None) -> list:
    """``pytest.param(family, variant, check)`` for every family x variant x check. The default variant (the first)
    and the control run every check; other variants only ``variant_checks`` (those whose outcome depends on the
    variant's math). ``expected_failures[(family, variant, check)]`` marks a known failure owned elsewhere as a
    strict xfail (``"*"`` matches any variant)."""
    expected_failures = expected_failures or {}
    params = []
    for family, variants in families:
        for index, (variant_name, variant) in enumerate(variants.items()):
            for check_name, check in checks.items():
                if index and variant_checks is not None and check_name not in variant_checks:
                    continue
                reason = (expected_failures.get((family.name, variant_name, check_name))
                          or expected_failures.get((family.name, "*", check_name)))
                params.append(pytest.param(family, variant, check, id=f"{family.name}-{variant_name}-{check_name}",
                                           marks=[xfail(reason)] if reason else []))
    return params


# ------------------------------------------------------------------------------------------------- helpers


def tensors(output, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of a ModelOutput (nested tuples flattened as ``name.i``) by field name."""
    found = {}
    items = output.items() if isinstance(output, (ModelOutput, dict)) else enumerate(output)
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, torch.Tensor):
            found[name] = value
        elif isinstance(value, (tuple, list)) and not isinstance(value, str):
            found.update(tensors(value, name + "."))
    return found


def per_example(output) -> dict[str, torch.Tensor]:
    return {k: v for k, v in tensors(output).items() if k.split(".")[0] not in NOT_PER_EXAMPLE}


def rows(inputs: dict, index: slice) -> dict:
    """Rows ``index`` of every batched input (one image per row where there are images)."""
    return {k: (v[index] if isinstance(v, torch.Tensor) and v.dim() else v) for k, v in inputs.items()}


def logits_of(model, inputs: dict, **kwargs) -> torch.Tensor:
    return model(**inputs, **kwargs).logits


def backward_scalar(output) -> torch.Tensor:
    """A scalar that depends on every output position: random projection of the logits (a sum of softmax-normalised
    things can have zero gradient)."""
    logits = output.logits if hasattr(output, "logits") else output.last_hidden_state
    weights = torch.randn(logits.shape, generator=torch.Generator().manual_seed(7)).to(logits.dtype)
    return (logits * weights).sum()


def gradients(model, inputs: dict) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    backward_scalar(model(**inputs)).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# ------------------------------------------------------------------------------------------ model checks


def check_forward_outputs(family: Family, variant: dict) -> None:
    """ModelOutput dataclasses with transformers' field names and shapes; ``return_dict=False`` gives the same
    tensors as a tuple; labels give a finite scalar loss."""
    head = family.build(family.head, variant)
    base = family.build(family.base, variant)
    config = head.config
    inputs = family.inputs(config)
    batch, length = inputs["input_ids"].shape
    target_length = inputs["decoder_input_ids"].shape[1] if family.kind == "seq2seq" else length
    with torch.no_grad():
        out = base(**inputs)
        assert isinstance(out, ModelOutput)
        hidden = config.get_text_config().hidden_size
        assert out.last_hidden_state.shape == (batch, target_length, hidden)
        lm = head(**inputs)
        assert isinstance(lm, ModelOutput)
        assert lm.logits.shape == (batch, target_length, head.get_output_embeddings().weight.shape[0])
        as_tuple = head(**inputs, return_dict=False)
        assert isinstance(as_tuple, tuple)
        expected = lm.to_tuple()  # (the fields that are not None, in order: Mixtral's aux_loss comes first)
        assert len(as_tuple) == len(expected)
        for got, want in zip(tensors(as_tuple).values(), tensors(expected).values()):
            torch.testing.assert_close(got, want, atol=0, rtol=0)
        labels = inputs["decoder_input_ids"] if family.kind == "seq2seq" else inputs["input_ids"]
        with_loss = head(**inputs, labels=labels)
    assert with_loss.loss.dim() == 0 and torch.isfinite(with_loss.loss)
    if family.kind == "seq2seq":
        assert out.encoder_last_hidden_state.shape == (batch, length, hidden)


def _expected_states(family: Family, config, inputs) -> list[tuple[str, int, tuple]]:
    """``(field, count, shape of each)`` of the hidden states and attentions the family must return."""
    text = config.get_text_config()
    batch, length = inputs["input_ids"].shape
    heads, hidden = text.num_attention_heads, text.hidden_size
    if family.kind == "seq2seq":
        target = inputs["decoder_input_ids"].shape[1]
        enc, dec = family.num_layers(config), family.num_layers(config, decoder=True)
        fields = [("encoder_hidden_states", enc + 1, (batch, length, hidden)),
                  ("decoder_hidden_states", dec + 1, (batch, target, hidden))]
        if family.has_attentions:
            fields += [("encoder_attentions", enc, (batch, heads, length, length)),
                       ("decoder_attentions", dec, (batch, heads, target, target)),
                       ("cross_attentions", dec, (batch, heads, target, length))]
        return fields
    layers = family.num_layers(config)
    fields = [("hidden_states", layers + 1, (batch, length, hidden))]
    if family.has_attentions:
        fields.append(("attentions", layers, (batch, heads, length, length)))
    return fields


def check_hidden_states_and_attentions(family: Family, variant: dict) -> None:
    """One hidden state per layer plus the embeddings, one attention map per layer (eager), requested by argument
    or by the config; none of them without the request."""
    model = family.build(family.head, variant)
    inputs = family.inputs(model.config)
    expected = _expected_states(family, model.config, inputs)
    flags = dict(output_hidden_states=True, output_attentions=family.has_attentions)
    with torch.no_grad():
        plain = model(**inputs)
        by_argument = model(**inputs, **flags)
        by_config = family.build(family.head, variant, **flags)(**inputs)
    for field, count, shape in expected:
        assert getattr(plain, field, None) is None, field
        for out in (by_argument, by_config):
            states = getattr(out, field)
            assert len(states) == count, (field, len(states), count)
            assert all(tuple(s.shape) == shape for s in states), (field, [tuple(s.shape) for s in states], shape)
    if family.has_attentions:
        # Probabilities: every row of a standard softmax sums to 1 (the variants change exactly this).
        if variant.get("softmax_variant", "standard") in ("standard", "temperature", "adaptive_temperature"):
            field = "decoder_attentions" if family.kind == "seq2seq" else "attentions"
            for weights in getattr(by_argument, field):
                torch.testing.assert_close(weights.sum(-1), torch.ones_like(weights.sum(-1)), atol=1e-5, rtol=0)


def check_retain_grad_hidden_states_attentions(family: Family, variant: dict) -> None:
    """transformers' ``test_retain_grad_hidden_states_attentions``: the returned hidden states and attention
    weights are the tensors of the graph (gradients reach them), not copies beside it."""
    model = family.build(family.head, variant).train()
    inputs = family.inputs(model.config)
    out = model(**inputs, output_hidden_states=True, output_attentions=family.has_attentions)
    watched = {}
    for field, _, _ in _expected_states(family, model.config, inputs):
        # the first layer's input for hidden states; the first layer's map for attentions
        watched[field] = getattr(out, field)[0]
        watched[field].retain_grad()
    backward_scalar(out).backward()
    missing = [field for field, tensor in watched.items() if tensor.grad is None]
    assert not missing, f"no gradient reached {missing}"


def check_training(family: Family, variant: dict) -> None:
    """transformers' ``test_training``: with labels, a finite loss whose gradient reaches every parameter (those the
    head never uses are the family's to list), and a few optimizer steps on one batch lower it."""
    model = family.build(family.head, variant).train()
    inputs = family.inputs(model.config)
    labels = inputs["decoder_input_ids"] if family.kind == "seq2seq" else inputs["input_ids"]
    loss = model(**inputs, labels=labels).loss
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    unused = set(family.unused_parameters)
    missing = [n for n, p in model.named_parameters()
               if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all()) and n not in unused]
    assert not missing, f"no finite gradient for {missing}"
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = loss.item()
    for _ in range(5):
        optimizer.step()
        optimizer.zero_grad()
        loss = model(**inputs, labels=labels).loss
        loss.backward()
    assert loss.item() < first, (first, loss.item())


def check_gradient_checkpointing(family: Family, variant: dict, use_reentrant: bool) -> None:
    """The same gradients, for every parameter, with gradient checkpointing as without."""
    model = family.build(family.head, variant).train()
    inputs = family.inputs(model.config)
    plain = gradients(model, inputs)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": use_reentrant})
    assert model.is_activation_checkpointing
    checkpointed = gradients(model, inputs)
    assert checkpointed.keys() == plain.keys(), sorted(set(plain) ^ set(checkpointed))
    for name in plain:  # (reentrant autograd sums the gradients of shared inputs in another order: fp32 rounding)
        torch.testing.assert_close(checkpointed[name], plain[name], atol=ATOL, rtol=1e-5, msg=name)


def check_gradient_checkpointing_reentrant(family: Family, variant: dict) -> None:
    check_gradient_checkpointing(family, variant, use_reentrant=True)


def check_gradient_checkpointing_non_reentrant(family: Family, variant: dict) -> None:
    check_gradient_checkpointing(family, variant, use_reentrant=False)


def check_batching_equivalence(family: Family, variant: dict) -> None:
    """transformers' ``test_batching_equivalence``: each example alone gives what it gives in the batch, in every
    per-example output field (logits, hidden states, attentions, ...)."""
    model = family.build(family.head, variant)
    inputs = family.inputs(model.config)
    flags = dict(output_hidden_states=True, output_attentions=family.has_attentions)
    batch, length = inputs["input_ids"].shape
    with torch.no_grad():
        batched = per_example(model(**inputs, **flags))
        for row in range(batch):
            alone = per_example(model(**rows(inputs, slice(row, row + 1)), **flags))
            assert alone.keys() == batched.keys()
            for name, tensor in alone.items():
                whole = batched[name]
                # Router logits come flattened over batch and tokens, [B * S, E] (Mixtral's format): a row's tokens
                # are rows row * S ... (row + 1) * S.
                flat = whole.shape[0] == batch * length and tensor.shape[0] == length
                part = whole[row * length:(row + 1) * length] if flat else whole[row:row + 1]
                torch.testing.assert_close(tensor, part, atol=ATOL, rtol=1e-4, msg=name)


def _padded(family: Family, config, lengths=(7, 4, 2), seed: int = 3):
    """Rows of different lengths in one batch (left padding for decoder-only models, as ``generate`` pads;
    right padding for encoders) and each row alone."""
    generator = torch.Generator().manual_seed(seed)
    vocab = family.text_vocab(config)
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    alone, spans = [], []
    for i, n in enumerate(lengths):
        row = torch.randint(1, vocab, (n,), generator=generator)
        span = slice(width - n, width) if family.causal else slice(0, n)
        ids[i, span], mask[i, span] = row, 1
        alone.append(row[None])
        spans.append(span)
    return ids, mask, alone, spans


def check_padded_equals_alone(family: Family, variant: dict) -> None:
    """A padded batch gives each row's outputs alone at its real positions (padding is masked, positions count
    from each row's first token)."""
    model = family.build(family.head, variant, attn_implementation="sdpa")
    ids, mask, alone, spans = _padded(family, model.config)
    extra = {}
    if family.kind == "seq2seq":
        target = torch.randint(1, family.text_vocab(model.config), (ids.shape[0], 4),
                               generator=torch.Generator().manual_seed(4))
        extra = {"decoder_input_ids": target}
    if family.causal:  # as generate() does: positions count from each row's first real token
        extra = {"position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}
    with torch.no_grad():
        batched = model(input_ids=ids, attention_mask=mask, **extra).logits
        for i, row in enumerate(alone):
            row_extra = {k: v[i:i + 1] for k, v in extra.items() if k != "position_ids"}
            single = model(input_ids=row, **row_extra).logits
            got = batched[i:i + 1] if family.kind == "seq2seq" else batched[i:i + 1, spans[i]]
            torch.testing.assert_close(got, single, atol=1e-4, rtol=1e-4)


def check_save_load(family: Family, variant: dict, tmp_path) -> None:
    """``save_pretrained`` writes safetensors only (nothing pickled) and ``from_pretrained`` gives identical
    outputs; ``dtype=`` / ``torch_dtype=`` load in bf16 except ``_keep_in_fp32_modules``, which stay fp32."""
    model = family.build(family.head, variant)
    inputs = family.inputs(model.config)
    model.save_pretrained(tmp_path)
    files = os.listdir(tmp_path)
    assert any(f.endswith(".safetensors") for f in files), files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))], files
    reloaded = type(model).from_pretrained(tmp_path, attn_implementation="eager").eval()
    with torch.no_grad():
        torch.testing.assert_close(logits_of(reloaded, inputs), logits_of(model, inputs), atol=0, rtol=0)
        reference = logits_of(model, inputs)
    # transformers keeps _keep_in_fp32_modules in fp32 under fp16 only, _keep_in_fp32_modules_strict under both
    strict = set(getattr(model, "_keep_in_fp32_modules_strict", None) or [])
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or []) | strict
    for argument, dtype in (("dtype", torch.bfloat16), ("torch_dtype", torch.bfloat16), ("dtype", torch.float16)):
        half = type(model).from_pretrained(tmp_path, attn_implementation="eager", **{argument: dtype})
        fp32_modules = keep if dtype == torch.float16 else strict
        for name, parameter in half.named_parameters():
            in_fp32 = any(re.search(rf"(^|\.){re.escape(k)}(\.|$)", name) for k in fp32_modules)
            assert parameter.dtype == (torch.float32 if in_fp32 else dtype), (argument, name, parameter.dtype)
        with torch.no_grad():
            got = logits_of(half.eval(), inputs).float()
        scale = reference.abs().max()
        assert (got - reference).abs().max() < 0.1 * scale, (argument, float((got - reference).abs().max()))


def check_resize_token_embeddings(family: Family, variant: dict) -> None:
    """``resize_token_embeddings`` grows and shrinks the vocabulary: old rows kept, config and head follow, tied
    weights stay tied, the new ids run."""
    model = family.build(family.head, variant)
    config = model.config.get_text_config()
    vocab = config.vocab_size
    embeddings = model.get_input_embeddings().weight.detach().clone()
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    # (not below a special id the model's inputs hold: the VLM's image placeholder is its last id)
    for new_size in (vocab + 10, max(vocab - 6, getattr(model.config, "image_token_id", -1) + 1)):
        model.resize_token_embeddings(new_size)
        assert model.get_input_embeddings().weight.shape[0] == new_size
        assert model.get_output_embeddings().weight.shape[0] == new_size
        assert model.config.get_text_config().vocab_size == new_size
        keep = min(vocab, new_size)
        torch.testing.assert_close(model.get_input_embeddings().weight[:keep], embeddings[:keep], atol=0, rtol=0)
        assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tied
        inputs = family.inputs(model.config)
        if new_size - 1 != getattr(model.config, "image_token_id", None):
            inputs["input_ids"][0, -1] = new_size - 1  # the last id runs
        with torch.no_grad():
            assert logits_of(model, inputs).shape[-1] == new_size
    model.resize_token_embeddings(vocab + 3, pad_to_multiple_of=8)
    assert model.get_input_embeddings().weight.shape[0] % 8 == 0


def check_tied_weights(family: Family, variant: dict, tmp_path) -> None:
    """``tie_word_embeddings=True``: the LM head is the input embedding, also after save -> load;
    ``False``: two separate tensors."""
    text = family.config(variant).get_text_config()
    if not hasattr(text, "tie_word_embeddings"):
        pytest.fail("the config declares no tie_word_embeddings: it can never tie (transformers 5)")
    tied = family.build(family.head, variant, tie_word_embeddings=True)
    assert tied.get_output_embeddings().weight is tied.get_input_embeddings().weight
    tied.save_pretrained(tmp_path)
    reloaded = type(tied).from_pretrained(tmp_path)
    assert reloaded.get_output_embeddings().weight is reloaded.get_input_embeddings().weight
    torch.testing.assert_close(reloaded.get_input_embeddings().weight, tied.get_input_embeddings().weight)
    untied = family.build(family.head, variant, tie_word_embeddings=False)
    # (T5's config always ties: the model must follow what its config says)
    separate = not untied.config.get_text_config().tie_word_embeddings
    assert separate == (untied.get_output_embeddings().weight.data_ptr()
                        != untied.get_input_embeddings().weight.data_ptr())


def no_router_logits(family: Family, variant: dict) -> dict:
    """Config overrides that turn the router logits off where they are on: transformers' load-balancing loss takes
    only a 2D mask of the current tokens (Mixtral fails with a 4D mask and in static-cache generation too)."""
    return {"output_router_logits": False} if getattr(family.config(variant), "output_router_logits", False) else {}


def check_custom_4d_attention_mask(family: Family, variant: dict) -> None:
    """A 4D mask is used as given. Decoder: two sequences packed in one row with a block-diagonal causal mask and
    restarting positions give each sequence's logits alone. Encoder: the 4D expansion of a padding mask equals the
    2D mask (for an encoder-decoder: of its encoder; and its decoder takes two packed targets as the causal one)."""
    model = family.build(family.head, variant, attn_implementation="sdpa", **no_router_logits(family, variant))
    if family.kind == "seq2seq":
        _check_packed_targets(model, family, variant)
        model = model.get_encoder()
    vocab = family.text_vocab(model.config)
    generator = torch.Generator().manual_seed(5)
    if family.causal:
        first, second = (torch.randint(1, vocab, (1, n), generator=generator) for n in (5, 4))
        packed = torch.cat((first, second), dim=1)
        allowed = torch.zeros(9, 9, dtype=torch.bool)
        allowed[:5, :5] = torch.ones(5, 5, dtype=torch.bool).tril()
        allowed[5:, 5:] = torch.ones(4, 4, dtype=torch.bool).tril()
        position_ids = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3]])
        with torch.no_grad():
            got = model(input_ids=packed, attention_mask=allowed[None, None], position_ids=position_ids).logits
            torch.testing.assert_close(got[:, :5], model(input_ids=first).logits, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(got[:, 5:], model(input_ids=second).logits, atol=1e-4, rtol=1e-4)
    else:
        ids, mask, _, _ = _padded(family, model.config)
        four_d = (mask[:, None, None, :].bool()).expand(-1, 1, ids.shape[1], -1)
        with torch.no_grad():
            expected = model(input_ids=ids, attention_mask=mask)[0]
            got = model(input_ids=ids, attention_mask=four_d)[0]
        real = mask.bool()
        torch.testing.assert_close(got[real], expected[real], atol=1e-4, rtol=1e-4)


def _check_packed_targets(model, family: Family, variant: dict) -> None:
    """Two targets packed into one decoder row under a block-diagonal causal ``decoder_attention_mask`` give each
    target's logits alone; the second one only where scores depend on relative positions alone: T5's bias, ALiBi,
    none, and rotary under dot-product scoring (additive scoring's tanh(R_i q + R_j k) is not a function of i - j)."""
    vocab = family.text_vocab(model.config)
    generator = torch.Generator().manual_seed(6)
    source = torch.randint(1, vocab, (1, 6), generator=generator)
    first, second = (torch.randint(1, vocab, (1, n), generator=generator) for n in (5, 4))
    allowed = torch.zeros(9, 9, dtype=torch.bool)
    allowed[:5, :5] = torch.ones(5, 5, dtype=torch.bool).tril()
    allowed[5:, 5:] = torch.ones(4, 4, dtype=torch.bool).tril()
    with torch.no_grad():
        got = model(input_ids=source, decoder_input_ids=torch.cat((first, second), 1),
                    decoder_attention_mask=allowed[None, None]).logits
        torch.testing.assert_close(got[:, :5], model(input_ids=source, decoder_input_ids=first).logits,
                                   atol=1e-4, rtol=1e-4)
        position = getattr(model.config, "position_embedding", "relative_bias")
        additive = getattr(model.config, "attention_scoring", None) == "additive"
        if position in ("relative_bias", "alibi", "none") or (position == "rotary" and not additive):
            torch.testing.assert_close(got[:, 5:], model(input_ids=source, decoder_input_ids=second).logits,
                                       atol=1e-4, rtol=1e-4)


def check_eager_matches_sdpa(family: Family, variant: dict) -> None:
    """The fast path equals the eager reference on a padded batch; ``output_attentions=True`` returns weights under
    eager."""
    eager = family.build(family.head, variant, attn_implementation="eager")
    sdpa = family.build(family.head, variant, attn_implementation="sdpa")
    ids, mask, _, _ = _padded(family, eager.config)
    extra = {}
    if family.kind == "seq2seq":
        extra["decoder_input_ids"] = ids[:, :4].clamp(min=1)
    with torch.no_grad():
        expected = eager(input_ids=ids, attention_mask=mask, **extra, output_attentions=True)
        got = sdpa(input_ids=ids, attention_mask=mask, **extra).logits
    real = mask.bool() if family.kind != "seq2seq" else torch.ones(got.shape[:2], dtype=torch.bool)
    torch.testing.assert_close(got[real], expected.logits[real], atol=1e-4, rtol=1e-4)
    field = "encoder_attentions" if family.kind == "seq2seq" else "attentions"
    assert getattr(expected, field) is not None and all(w is not None for w in getattr(expected, field))


def check_typed_kwargs(family: Family, variant: dict) -> None:
    """Every forward that takes ``**kwargs`` types them as ``Unpack[TransformersKwargs]``, as transformers' models
    do (its attention backends, output recording and tests read the annotation)."""
    untyped = []
    for cls in {family.base, family.head}:
        for klass in cls.__mro__:
            forward = klass.__dict__.get("forward")
            if forward is None or klass.__module__.startswith(("torch.", "transformers.generation")):
                continue
            parameter = inspect.signature(forward).parameters.get("kwargs")
            if parameter is not None and "TransformersKwargs" not in str(parameter.annotation):
                untyped.append(f"{klass.__qualname__}.forward")
    assert not untyped, untyped


TP_STYLES = None


def check_tp_plan(family: Family, variant: dict) -> None:
    """A ``base_model_tp_plan`` (and ``base_model_pp_plan``) like Llama's, checked structurally on the plans
    transformers applies: the model's ``tp_plan`` / ``_pp_plan``, which merge its config's plans with those of its
    sub-models under their names (a VLM's language model: ``language_model.layers.*...``). Every pattern names
    modules of the base model, every style is one transformers knows. (A real tensor-parallel run needs GPUs.)"""
    from transformers.integrations.tensor_parallel import ALL_PARALLEL_STYLES

    model = family.build(family.base, variant)
    plan = model.tp_plan
    if family.control and not plan:
        pytest.skip(f"transformers' {type(model).__name__} declares no tensor-parallel plan")
    assert plan, "no base_model_tp_plan"
    names = [n for n, _ in model.named_modules()] + [n for n, _ in model.named_parameters()]
    for pattern, style in plan.items():
        assert style in ALL_PARALLEL_STYLES, (pattern, style, sorted(ALL_PARALLEL_STYLES))
        regex = re.compile("^" + re.escape(pattern).replace(r"\*", r"\d+") + "$")
        assert any(regex.match(n) for n in names), f"{pattern} names no module of {type(model).__name__}"
    assert model._pp_plan, "no base_model_pp_plan"
    for name in model._pp_plan:
        model.get_submodule(name)  # raises AttributeError for a name that is no module


# ------------------------------------------------------------------------------------------ generation


def _prompt(family: Family, model, batch: int = 2, length: int = 5) -> dict:
    inputs = family.inputs(model.config, batch=batch, length=length)
    inputs.pop("decoder_input_ids", None)
    return inputs


def _generate(model, inputs: dict, **kwargs) -> torch.Tensor:
    config = model.config.get_text_config()
    settings = dict(max_new_tokens=5, min_new_tokens=5, pad_token_id=config.pad_token_id or 0)
    return model.generate(**inputs, **{**settings, **kwargs})


def check_generate_cache_equivalence(family: Family, variant: dict) -> None:
    """Greedy, sampling (same seed) and beam search give the same tokens with the cache as without (transformers'
    ``test_greedy_generate_dict_outputs_use_cache`` and friends)."""
    model = family.build(family.head, variant, attn_implementation="sdpa")
    inputs = _prompt(family, model)
    for mode in (dict(do_sample=False), dict(do_sample=True, top_k=0), dict(do_sample=False, num_beams=2)):
        results = []
        for use_cache in (True, False):
            torch.manual_seed(11)
            results.append(_generate(model, inputs, use_cache=use_cache, **mode))
        assert torch.equal(*results), mode


def check_generate_padded_equals_alone(family: Family, variant: dict) -> None:
    """transformers' ``test_left_padding_compatibility``, through ``generate``: each prompt of a padded batch (left
    padding for decoder-only models, right for an encoder's input) gets the tokens it gets alone (text prompts)."""
    model = family.build(family.head, variant, attn_implementation="sdpa", **no_router_logits(family, variant))
    ids, mask, alone, _ = _padded(family, model.config)
    batched = _generate(model, {"input_ids": ids, "attention_mask": mask})
    for i, row in enumerate(alone):
        assert torch.equal(batched[i:i + 1, -5:], _generate(model, {"input_ids": row})[:, -5:]), i


def check_generate_from_inputs_embeds(family: Family, variant: dict) -> None:
    """``generate(inputs_embeds=...)`` gives the tokens that ``generate(input_ids=...)`` gives (decoder-only: the
    new tokens only; encoder-decoder: embeddings into the encoder)."""
    model = family.build(family.head, variant, attn_implementation="sdpa")
    inputs = _prompt(family, model)
    ids = inputs.pop("input_ids")
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids)
    by_ids = _generate(model, {"input_ids": ids, **inputs})
    by_embeds = _generate(model, {"inputs_embeds": embeds, **inputs})
    new = by_ids[:, ids.shape[1]:] if family.kind != "seq2seq" else by_ids
    assert torch.equal(by_embeds[:, -new.shape[1]:], new)


def check_generate_static_cache(family: Family, variant: dict) -> None:
    """``cache_implementation="static"`` gives the dynamic cache's tokens, and the model declares full-graph
    compilation (``_can_compile_fullgraph``), which generate's static-cache compilation needs."""
    model = family.build(family.head, variant, attn_implementation="sdpa", **no_router_logits(family, variant))
    inputs = _prompt(family, model)
    dynamic = _generate(model, inputs)
    static = _generate(model, inputs, cache_implementation="static")
    assert torch.equal(static, dynamic)
    assert model._can_compile_fullgraph


# --------------------------------------------------------------------------------------------- config


def check_config(family: Family, variant: dict, tmp_path) -> None:
    """transformers' ``ConfigTester``: common properties, to_dict / from_dict and JSON round trips, save -> load,
    ``num_labels``."""
    config = family.config(variant)
    text = config.get_text_config()
    for name in ("vocab_size", "hidden_size", "num_attention_heads", "num_hidden_layers"):
        assert isinstance(getattr(text, name), int), name
    cls = type(config)
    as_dict = config.to_dict()
    assert cls.from_dict(as_dict).to_dict() == as_dict
    assert cls.from_dict(json.loads(config.to_json_string())).to_dict() == as_dict
    config.save_pretrained(tmp_path)
    assert cls.from_pretrained(tmp_path).to_dict() == as_dict
    # keys set by the variant survive the round trip
    reloaded = cls.from_pretrained(tmp_path)
    for key, value in variant.items():
        assert getattr(reloaded, key) == getattr(config, key), key
    assert cls.from_dict({**as_dict, "num_labels": 5}).num_labels == 5
    relabelled = family.config(variant, num_labels=3)
    assert len(relabelled.id2label) == 3 and len(relabelled.label2id) == 3
    relabelled.num_labels = 4
    assert len(relabelled.id2label) == 4


MODEL_CHECKS = {
    "forward_outputs": check_forward_outputs,
    "hidden_states_and_attentions": check_hidden_states_and_attentions,
    "retain_grad": check_retain_grad_hidden_states_attentions,
    "gradient_checkpointing_reentrant": check_gradient_checkpointing_reentrant,
    "gradient_checkpointing_non_reentrant": check_gradient_checkpointing_non_reentrant,
    "training": check_training,
    "batching_equivalence": check_batching_equivalence,
    "padded_equals_alone": check_padded_equals_alone,
    "save_load": check_save_load,
    "resize_token_embeddings": check_resize_token_embeddings,
    "tied_weights": check_tied_weights,
    "custom_4d_attention_mask": check_custom_4d_attention_mask,
    "eager_matches_sdpa": check_eager_matches_sdpa,
    "typed_kwargs": check_typed_kwargs,
    "tp_plan": check_tp_plan,
    "config": check_config,
}
GENERATION_CHECKS = {
    "generate_cache_equivalence": check_generate_cache_equivalence,
    "generate_padded_equals_alone": check_generate_padded_equals_alone,
    "generate_from_inputs_embeds": check_generate_from_inputs_embeds,
    "generate_static_cache": check_generate_static_cache,
}
# The checks whose outcome depends on a variant's math: every variant runs these.
VARIANT_CHECKS = ("hidden_states_and_attentions", "retain_grad", "training", "generate_padded_equals_alone", "gradient_checkpointing_reentrant",
                  "gradient_checkpointing_non_reentrant", "batching_equivalence", "padded_equals_alone",
                  "save_load", "custom_4d_attention_mask", "eager_matches_sdpa", "generate_cache_equivalence",
                  "config")


def run(check: Callable, family: Family, variant: dict, tmp_path) -> None:
    """Call ``check`` with ``tmp_path`` when it takes one."""
    if "tmp_path" in inspect.signature(check).parameters:
        check(family, variant, tmp_path)
    else:
        check(family, variant)


# ----------------------------------------------------------------------------------------------- rope


def check_rope_scaling_from_config(family: Family, variant: dict) -> None:
    """transformers' ``test_model_rope_scaling_from_config``, for rotary positions: a ``rope_parameters`` of another
    type changes the outputs where that type changes the frequencies and nowhere else -- ``dynamic`` leaves inputs
    within ``max_position_embeddings`` alone and rescales longer ones; ``linear`` and ``yarn`` change every
    input."""
    config = family.config(variant)
    text = config.get_text_config()
    theta = text.rope_parameters["rope_theta"]
    limit = text.max_position_embeddings
    short, long = (family.inputs(config, batch=1, length=n) for n in (7, limit + 8))

    def outputs(rope: dict | None, inputs: dict) -> torch.Tensor:
        overrides = {"rope_parameters": {"rope_theta": theta, **rope}} if rope else {}
        model = family.build(family.base, variant, **overrides)
        with torch.no_grad():
            return model(**inputs).last_hidden_state

    base_short, base_long = outputs(None, short), outputs(None, long)
    dynamic = {"rope_type": "dynamic", "factor": 2.0}
    torch.testing.assert_close(outputs(dynamic, short), base_short, atol=ATOL, rtol=1e-4)
    assert not torch.allclose(outputs(dynamic, long), base_long, atol=ATOL), "dynamic rope ignored beyond the limit"
    for rope in ({"rope_type": "linear", "factor": 2.0},
                 {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": limit}):
        assert not torch.allclose(outputs(rope, short), base_short, atol=ATOL), f"{rope['rope_type']} rope ignored"
