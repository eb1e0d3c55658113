"""Gist tokens in the encoder-decoder family (Mu et al. 2023's FLAN-T5 setting): the encoder and cross-attention
masks against their definition written out, the prompt reaching the decoder only through the gist activations (an
invariant), inference from the gist-only cache against the full gist-masked forward, instruction data, bad input."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import load_hfgen_tokenizer, random_ids, tiny_config
from hfgen import HfGenDecoderForCausalLM, HfGenSeq2SeqConfig, HfGenSeq2SeqForConditionalGeneration
from hfgen.models.configuration_hfgen_seq2seq import T5_LIKE_KEYS
from hfgen.models.gist_seq2seq import (
    compress_prompt_seq2seq,
    encode_from_gist,
    generate_from_gist,
    gist_cross_attention_mask,
    gist_encoder_attention_mask,
)

GIST = [120, 121]  # two ids of the tiny vocabulary used as gist tokens
PROMPT, INPUT = 5, 6  # prompt tokens before the gist, input tokens after it


def seq2seq_config(**overrides) -> HfGenSeq2SeqConfig:
    keys = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                pad_token_id=0, initializer_range=0.1, **T5_LIKE_KEYS)
    return HfGenSeq2SeqConfig(**{**keys, **overrides})


def build(config=None, seed: int = 0) -> HfGenSeq2SeqForConditionalGeneration:
    torch.manual_seed(seed)
    return HfGenSeq2SeqForConditionalGeneration(copy.deepcopy(config or seq2seq_config())).eval()


@pytest.fixture(scope="module")
def model():
    return build()


def with_gist(prompt: int = PROMPT, rest: int = INPUT, seed: int = 1) -> torch.Tensor:
    ids = random_ids(1, prompt + len(GIST) + rest, vocab_size=120, seed=seed)
    ids[0, prompt:prompt + len(GIST)] = torch.tensor(GIST)
    return ids


def gisted(model, ids, decoder_input_ids, mode="gist"):
    with torch.no_grad():
        return model(ids, attention_mask=gist_encoder_attention_mask(ids, GIST, mode=mode),
                     cross_attention_mask=gist_cross_attention_mask(ids, GIST, mode=mode),
                     decoder_input_ids=decoder_input_ids).logits


@pytest.mark.parametrize("mode", ["gist", "positive", "negative"])
def test_masks_match_their_definition(mode):
    rows = [with_gist(3, 4), with_gist(5, 2, seed=2), random_ids(1, 9, vocab_size=120, seed=3)]  # the last: no gist
    ids = torch.cat(rows)
    padding = torch.ones_like(ids)
    padding[1, -1] = 0
    encoder = gist_encoder_attention_mask(ids, GIST, padding, mode=mode)
    cross = gist_cross_attention_mask(ids, GIST, padding, mode=mode)
    assert encoder.shape == (3, 1, 9, 9) and cross.shape == (3, 9)
    for row, span in enumerate([(3, 5), (5, 7), None]):
        for j in range(9):
            readable = bool(padding[row, j])
            if span and mode == "gist":
                readable &= j >= span[0]
            if span and mode == "negative":
                readable &= j >= span[1]
            assert bool(cross[row, j]) == readable, (mode, row, j)
            for i in range(9):
                allowed = bool(padding[row, j])  # bidirectional: every query sees every real key ...
                if span and mode != "positive":
                    start, end = span
                    if i < end:  # ... the prompt and the gist tokens see nothing after the gist ...
                        allowed &= j < end
                    else:  # ... and what follows sees the gist (gist mode) or nothing of the prompt+gist (negative)
                        allowed &= j >= (start if mode == "gist" else end)
                assert bool(encoder[row, 0, i, j]) == allowed, (mode, row, i, j)


def test_the_prompt_reaches_the_decoder_only_through_the_gist_activations(model):
    """Change the prompt tokens but give the encoder the gist activations computed from the old prompt (every
    encoder layer's output at the gist positions): under the gist mask the decoder's logits are those of the old
    prompt. Without the patch they change (the gist carries the prompt); under the positive mask the patch does not
    help (the input reads the prompt directly)."""
    a = with_gist()
    b = a.clone()
    b[0, :PROMPT] = random_ids(1, PROMPT, vocab_size=120, seed=9)[0]
    decoder_ids = random_ids(1, 4, vocab_size=120, seed=5)
    gist = slice(PROMPT, PROMPT + len(GIST))

    def run(ids, mode, patch_from=None):
        recorded, hooks = [], []
        for index, layer in enumerate(model.model.encoder.layers):
            def hook(module, args, output, index=index):
                recorded.append(output.detach().clone())
                if patch_from is not None:
                    output = output.clone()
                    output[:, gist] = patch_from[index][:, gist]
                return output
            hooks.append(layer.register_forward_hook(hook))
        try:
            return gisted(model, ids, decoder_ids, mode), recorded
        finally:
            for h in hooks:
                h.remove()

    for mode in ("gist", "positive"):
        logits_a, activations_a = run(a, mode)
        logits_b, _ = run(b, mode)
        patched_b, _ = run(b, mode, patch_from=activations_a)
        assert not torch.allclose(logits_b, logits_a, atol=1e-4)
        if mode == "gist":
            torch.testing.assert_close(patched_b, logits_a, atol=1e-5, rtol=1e-5)
        else:
            assert not torch.allclose(patched_b, logits_a, atol=1e-4)
    negative_a, negative_b = gisted(model, a, decoder_ids, "negative"), gisted(model, b, decoder_ids, "negative")
    torch.testing.assert_close(negative_b, negative_a, atol=1e-5, rtol=1e-5)  # the negative control cannot see it


@pytest.mark.parametrize("position_embedding", ["relative_bias", "rotary"])
def test_cached_gist_inference_equals_the_full_gist_masked_forward(position_embedding):
    model = build(seq2seq_config(position_embedding=position_embedding))
    ids = with_gist()
    p = PROMPT + len(GIST)
    decoder_ids = random_ids(1, 5, vocab_size=120, seed=4)
    reference = gisted(model, ids, decoder_ids)
    gist = compress_prompt_seq2seq(model, ids[:, :p], GIST)
    assert gist.next_position == p and gist.num_positions == len(GIST)
    assert [layer.keys.shape[2] for layer in gist.key_values.layers] == [2, 2]  # only the gist activations are kept
    encoder_outputs = encode_from_gist(model, gist, ids[:, p:])
    assert encoder_outputs.last_hidden_state.shape[1] == len(GIST) + INPUT
    assert gist.key_values.get_seq_length() == len(GIST)  # encoding an input leaves the gist cache as it was
    with torch.no_grad():
        cached = model(encoder_outputs=encoder_outputs, decoder_input_ids=decoder_ids,
                       attention_mask=torch.ones(1, len(GIST) + INPUT, dtype=torch.long)).logits
    torch.testing.assert_close(cached, reference, atol=1e-5, rtol=1e-5)
    # generate from the gist cache (KV-cached decoding) = greedy decoding of the full gist-masked forward, step by step
    generated = generate_from_gist(model, gist, ids[:, p:], do_sample=False, max_new_tokens=5, min_new_tokens=5)
    greedy = torch.full((1, 1), model.config.decoder_start_token_id)
    for _ in range(5):
        greedy = torch.cat((greedy, gisted(model, ids, greedy)[:, -1:].argmax(-1)), dim=1)
    torch.testing.assert_close(generated, greedy, atol=0, rtol=0)


def test_instruction_data_and_training_under_each_mask(tmp_path):
    from hfgen.data.gist import (
        GistSeq2SeqCollator,
        add_gist_tokens,
        gist_instruction_examples,
        gist_seq2seq_examples,
    )
    from hfgen.training.gist import compare_with_controls

    tokenizer = load_hfgen_tokenizer()
    ids = add_gist_tokens(tokenizer, 2)
    examples = gist_seq2seq_examples(tokenizer, 2, 8, words_per_input=3)
    decoder_examples = gist_instruction_examples(tokenizer, 2, 8, words_per_input=3)
    for example, same in zip(examples, decoder_examples):  # the same tasks and words, split at the output
        p = example["prompt_length"]
        assert example["input_ids"][p - 2:p] == ids and example["labels"][-1] == tokenizer.eos_token_id
        assert example["input_ids"] + example["labels"] == same["input_ids"]
    config = seq2seq_config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    batch = GistSeq2SeqCollator(ids, tokenizer.pad_token_id)(examples)
    assert batch["attention_mask"].shape == (8, 1, *batch["input_ids"].shape[1:] * 2)
    assert batch["cross_attention_mask"].shape == batch["input_ids"].shape
    assert (batch["labels"] == -100).any()  # padded targets are ignored
    runs = compare_with_controls(build(config), examples, examples[:4], ids, tokenizer.pad_token_id, batch_size=4,
                                 progress=False)
    assert set(runs) == {"positive", "gist", "negative"}
    for run in runs.values():
        assert len(run.train_losses) == 2 and torch.isfinite(torch.tensor(run.validation_loss))


def test_bad_input(model):
    from hfgen.data.gist import GistSeq2SeqCollator, gist_seq2seq_examples

    tokenizer = load_hfgen_tokenizer()
    with pytest.raises(ValueError, match=r"no gist tokens \['<\|gist_0\|>', '<\|gist_1\|>'\].*add_gist_tokens"):
        gist_seq2seq_examples(tokenizer, 2, 4)
    with pytest.raises(ValueError, match=r"mode='both'.*'gist', 'positive', 'negative'"):
        GistSeq2SeqCollator(GIST, 0, mode="both")
    with pytest.raises(ValueError, match=r"mode='both'"):
        gist_cross_attention_mask(with_gist(), GIST, mode="both")
    ids = with_gist()
    decoder_ids = random_ids(1, 3)
    with pytest.raises(ValueError, match=r"4D attention_mask .* pass cross_attention_mask"):
        model(ids, attention_mask=gist_encoder_attention_mask(ids, GIST), decoder_input_ids=decoder_ids)
    with pytest.raises(ValueError, match=r"cross_attention_mask must be 2D"):
        model(ids, cross_attention_mask=gist_encoder_attention_mask(ids, GIST), decoder_input_ids=decoder_ids)
    with pytest.raises(ValueError, match=r"holds no gist token"):
        compress_prompt_seq2seq(model, random_ids(1, 4, vocab_size=120), GIST)
    with pytest.raises(ValueError, match=r"must end the prompt"):
        compress_prompt_seq2seq(model, ids, GIST)
    with pytest.raises(ValueError, match=r"one non-empty row"):
        compress_prompt_seq2seq(model, torch.cat((ids, ids)), GIST)
    with pytest.raises(ValueError, match=r"not an hfgen encoder-decoder .* hfgen.models.gist.compress_prompt"):
        compress_prompt_seq2seq(HfGenDecoderForCausalLM(tiny_config()), ids, GIST)
    gist = compress_prompt_seq2seq(model, ids[:, :PROMPT + 2], GIST)
    with pytest.raises(ValueError, match=r"Seq2SeqGistCache .* not DynamicCache"):
        encode_from_gist(model, gist.key_values, ids[:, PROMPT + 2:])
    with pytest.raises(ValueError, match=r"one non-empty row"):
        encode_from_gist(model, gist, ids[:, :0])
