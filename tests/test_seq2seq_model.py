"""The encoder-decoder model's contract beyond generation: labels and the loss, shared and tied embeddings, the
output dataclasses, training features (gradient checkpointing, dropout, PEFT, Seq2SeqTrainer), and clear errors
for bad input before any state changes."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM, Seq2SeqTrainer, Seq2SeqTrainingArguments

from conftest import build
from hfgen import HfGenSeq2SeqConfig, HfGenSeq2SeqForConditionalGeneration, HfGenSeq2SeqModel
from hfgen.models.modeling_hfgen_seq2seq import shift_tokens_right
from test_seq2seq_fixtures import TINY, decoder_ids, source_batch, tiny_seq2seq_config


@pytest.fixture(scope="module")
def model():
    return build(HfGenSeq2SeqForConditionalGeneration, tiny_seq2seq_config())


# ------------------------------------------------------------------------------------------- labels, loss


def test_labels_alone_are_shifted_right_into_the_decoder_inputs(model):
    ids, mask = source_batch()
    labels = decoder_ids(3, 5)
    labels[0, 3:] = -100
    shifted = shift_tokens_right(labels, model.config.decoder_start_token_id, model.config.pad_token_id)
    assert shifted[:, 0].eq(model.config.decoder_start_token_id).all()
    assert torch.equal(shifted[1, 1:], labels[1, :-1]) and shifted[0, 4] == model.config.pad_token_id
    with torch.no_grad():
        from_labels = model(input_ids=ids, attention_mask=mask, labels=labels)
        explicit = model(input_ids=ids, attention_mask=mask, decoder_input_ids=shifted)
    assert torch.equal(from_labels.logits, explicit.logits)
    # The loss is plain cross-entropy at each position (no second shift), ignoring -100.
    expected = F.cross_entropy(explicit.logits.reshape(-1, TINY["vocab_size"]), labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(from_labels.loss, expected)
    assert torch.equal(model.prepare_decoder_input_ids_from_labels(labels), shifted)


def test_embeddings_instead_of_ids_give_the_same_output(model):
    ids, mask = source_batch()
    target = decoder_ids(3, 4)
    embed = model.get_input_embeddings()
    with torch.no_grad():
        by_ids = model(input_ids=ids, attention_mask=mask, decoder_input_ids=target).logits
        by_embeds = model(inputs_embeds=embed(ids), attention_mask=mask, decoder_inputs_embeds=embed(target)).logits
    torch.testing.assert_close(by_embeds, by_ids, atol=1e-6, rtol=1e-6)


def test_outputs_carry_every_hidden_state_and_attention(model):
    ids, mask = source_batch()
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        out = eager(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids(3, 4), output_attentions=True,
                    output_hidden_states=True)
    config = model.config
    assert len(out.encoder_hidden_states) == config.num_hidden_layers + 1
    assert len(out.decoder_hidden_states) == config.num_decoder_layers + 1
    assert out.decoder_attentions[0].shape == (3, config.num_attention_heads, 4, 4)
    assert out.cross_attentions[0].shape == (3, config.num_attention_heads, 4, 9)
    assert out.decoder_attentions[0][0, :, 0, 1:].abs().max() == 0  # causal
    assert torch.equal(out.encoder_hidden_states[-1], out.encoder_last_hidden_state)
    assert isinstance(model(input_ids=ids, decoder_input_ids=decoder_ids(3, 2), return_dict=False), tuple)


# ---------------------------------------------------------------------------------------- shared weights


@pytest.mark.parametrize("tie", [True, False])
def test_one_embedding_for_encoder_and_decoder_and_the_head_as_configured(tie, tmp_path):
    model = build(HfGenSeq2SeqForConditionalGeneration, tiny_seq2seq_config(tie_word_embeddings=tie))
    for reloaded in (model, None):
        if reloaded is None:
            model.save_pretrained(tmp_path)
            reloaded = HfGenSeq2SeqForConditionalGeneration.from_pretrained(tmp_path)
        shared = reloaded.model.shared.weight
        assert reloaded.model.encoder.embed_tokens.weight is shared
        assert reloaded.model.decoder.embed_tokens.weight is shared
        assert (reloaded.lm_head.weight is shared) == tie
    assert torch.equal(reloaded.lm_head.weight, model.lm_head.weight)
    # T5's convention: a tied LM head reads the decoder output scaled by hidden_size**-0.5.
    assert json.loads((tmp_path / "config.json").read_text())["scale_decoder_outputs"] == tie


def test_resizing_the_vocabulary_keeps_everything_tied(model):
    """What adding sentinel tokens does: resize_token_embeddings(len(tokenizer))."""
    grown = copy.deepcopy(model)
    grown.resize_token_embeddings(TINY["vocab_size"] + 10)
    assert grown.config.vocab_size == TINY["vocab_size"] + 10
    assert grown.model.encoder.embed_tokens.weight is grown.model.shared.weight is grown.lm_head.weight
    ids, mask = source_batch()
    new_tokens = torch.full((3, 2), TINY["vocab_size"] + 9)
    with torch.no_grad():
        logits = grown(input_ids=torch.cat((ids, new_tokens), 1), decoder_input_ids=new_tokens).logits
    assert logits.shape == (3, 2, TINY["vocab_size"] + 10)


def test_auto_classes_resolve_the_family(tmp_path):
    config = tiny_seq2seq_config()
    assert type(AutoModelForSeq2SeqLM.from_config(copy.deepcopy(config))) is HfGenSeq2SeqForConditionalGeneration
    assert type(AutoModel.from_config(copy.deepcopy(config))) is HfGenSeq2SeqModel
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is HfGenSeq2SeqConfig and loaded.is_encoder_decoder and loaded.num_decoder_layers == 2
    assert loaded.decoder_start_token_id == TINY["pad_token_id"]  # defaults to the pad token, as in T5


def test_decoder_view_of_the_config_sizes_the_cache():
    """transformers builds caches from get_text_config(decoder=True): the decoder's layer count, full attention."""
    config = tiny_seq2seq_config(num_hidden_layers=1, num_decoder_layers=3)
    view = config.get_text_config(decoder=True)
    assert view.num_hidden_layers == 3 and view.layer_types == ["full_attention"] * 3
    assert config.num_hidden_layers == 1 and not hasattr(config, "layer_types")


# -------------------------------------------------------------------------------------------- training


@pytest.mark.parametrize("position_embedding", ["rotary", "relative_bias"])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(position_embedding):
    """relative_bias: the shared bias has parameters, and must not be first computed inside a checkpointed layer."""
    config = tiny_seq2seq_config(position_embedding=position_embedding)
    plain = build(HfGenSeq2SeqForConditionalGeneration, config).train()
    checkpointed = build(HfGenSeq2SeqForConditionalGeneration, config).train()
    checkpointed.activation_checkpointing_enable()
    ids, mask = source_batch()
    labels = decoder_ids(3, 5)
    losses = []
    for m in (plain, checkpointed):
        loss = m(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[0], losses[1])
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_hidden_dropout_acts_in_training_only():
    model = build(HfGenSeq2SeqForConditionalGeneration, tiny_seq2seq_config(hidden_dropout=0.3))
    ids, mask = source_batch()
    inputs = dict(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids(3, 4))
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, model(**inputs).logits)
        model.train()
        assert not torch.equal(model(**inputs).logits, model(**inputs).logits)


def test_seq2seq_trainer_learns_a_copy_task(tmp_path):
    from datasets import Dataset

    model = build(HfGenSeq2SeqForConditionalGeneration,
                  tiny_seq2seq_config(initializer_range=0.02, tie_word_embeddings=False)).train()
    g = torch.Generator().manual_seed(0)
    rows = torch.randint(1, TINY["vocab_size"], (4, 6), generator=g).repeat(8, 1).tolist()
    data = Dataset.from_dict({"input_ids": rows, "labels": rows})
    args = Seq2SeqTrainingArguments(output_dir=str(tmp_path), max_steps=20, per_device_train_batch_size=8,
                                    learning_rate=1e-2, report_to=[], use_cpu=True, logging_steps=5,
                                    disable_tqdm=True, save_strategy="no")
    trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=data)
    history = [log["loss"] for log in trainer.train() and trainer.state.log_history if "loss" in log]
    assert history[-1] < history[0] - 1.0, history


def test_lora_adapters_train_and_generate():
    from peft import LoraConfig, get_peft_model

    base = build(HfGenSeq2SeqForConditionalGeneration, tiny_seq2seq_config())
    peft_model = get_peft_model(copy.deepcopy(base), LoraConfig(task_type="SEQ_2_SEQ_LM", r=4,
                                                                target_modules=["q_proj", "v_proj"]))
    ids, mask = source_batch()
    peft_model(input_ids=ids, attention_mask=mask, labels=decoder_ids(3, 4)).loss.backward()
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any("cross_attn" in n for n in trainable)
    out = peft_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False)
    assert out.shape == (3, 4)


# ------------------------------------------------------------------------------------------- bad input


def test_missing_decoder_inputs_without_labels_fail_before_the_encoder_runs(model):
    ids, mask = source_batch()
    calls = []
    hook = model.model.encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match="decoder_input_ids or decoder_inputs_embeds, or labels"):
            model(input_ids=ids, attention_mask=mask)
        with pytest.raises(ValueError, match="decoder_input_ids or decoder_inputs_embeds"):
            model.model(input_ids=ids, attention_mask=mask)
    finally:
        hook.remove()
    assert not calls


def test_labels_need_a_decoder_start_token_and_valid_ids():
    model = build(HfGenSeq2SeqForConditionalGeneration, tiny_seq2seq_config(pad_token_id=None))
    ids, _ = source_batch()
    with pytest.raises(ValueError, match="decoder_start_token_id is None"):
        model(input_ids=ids, labels=decoder_ids(3, 4))
    for bad in (TINY["vocab_size"], -5):
        labels = decoder_ids(3, 4)
        labels[0, 1] = bad
        with pytest.raises(ValueError, match=rf"labels must be token ids in \[0, {TINY['vocab_size']}\).*or -100"):
            model(input_ids=ids, labels=labels)


@pytest.mark.parametrize("side", ["input_ids", "decoder_input_ids"])
def test_token_ids_outside_the_vocabulary_fail_before_touching_the_cache(model, side):
    from transformers import DynamicCache, EncoderDecoderCache

    ids, mask = source_batch()
    inputs = dict(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids(3, 2))
    inputs[side] = inputs[side].clone()
    inputs[side][0, 0] = TINY["vocab_size"]
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    with pytest.raises(ValueError, match=rf"Token ids must lie in \[0, {TINY['vocab_size']}\)"):
        model(**inputs, cache=cache)
    assert cache.get_seq_length() == 0 and not any(cache.is_updated.values())


def test_learned_positions_beyond_the_table_say_so():
    model = build(HfGenSeq2SeqForConditionalGeneration,
                  tiny_seq2seq_config(position_embedding="learned", max_position_embeddings=8))
    ids, _ = source_batch()  # 9 tokens
    with pytest.raises(ValueError, match="beyond max_position_embeddings=8"):
        model(input_ids=ids, decoder_input_ids=decoder_ids(3, 2))
    with pytest.raises(ValueError, match="beyond max_position_embeddings=8"):
        model(input_ids=ids[:, :8], decoder_input_ids=decoder_ids(3, 9))


def test_mismatched_batch_and_mask_shapes(model):
    ids, mask = source_batch()
    with pytest.raises(ValueError, match="decoder inputs hold 2 rows but the encoder output 3"):
        model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids(2, 3))
    encoder_out = model.model.encoder(input_ids=ids, attention_mask=mask)
    with pytest.raises(ValueError, match=r"attention_mask \(of the encoder input\) has shape \(3, 5\)"):
        model(encoder_outputs=encoder_out, attention_mask=mask[:, :5], decoder_input_ids=decoder_ids(3, 2))
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        model(decoder_input_ids=decoder_ids(3, 2))


@pytest.mark.parametrize("overrides, pattern", [
    (dict(softmax_variant="softmax1"), r"Unknown softmax_variant='softmax1'; valid choices are: 'standard'"),
    (dict(position_embedding="disentangled_typo"), r"Unknown position_embedding=.*'relative_bias'"),
    (dict(num_decoder_layers=0), "num_decoder_layers must be a positive integer"),
    (dict(hidden_dropout=1.0), r"hidden_dropout must be in \[0, 1\)"),
    (dict(num_key_value_heads=3), "multiple of num_key_value_heads"),
])
def test_bad_config_keys(overrides, pattern):
    with pytest.raises(ValueError, match=pattern):
        tiny_seq2seq_config(**overrides)


def test_bad_keys_through_from_pretrained(tmp_path):
    build(HfGenSeq2SeqForConditionalGeneration, tiny_seq2seq_config()).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="Unknown attention_scoring='cosine'"):
        AutoModelForSeq2SeqLM.from_pretrained(tmp_path, attention_scoring="cosine")
