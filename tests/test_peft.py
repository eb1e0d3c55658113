"""PEFT on hfgen models: default target modules (registered explicitly with
``hfgen.compat.register_peft_target_modules``, or read with ``default_target_modules``); LoRA, IA3, prompt tuning and prefix
tuning train, save, reload with identical outputs, merge, and load through ``AutoPeftModelForCausalLM``; prefix
tuning's pre-filled cache gives the same logits as the real tokens it stands for."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import (
    AutoPeftModelForCausalLM,
    IA3Config,
    LoraConfig,
    PeftModel,
    PrefixTuningConfig,
    PromptTuningConfig,
    get_peft_model,
)
from peft.utils import constants
from transformers import AutoModelForCausalLM

from conftest import build, random_ids, tiny_config
from hfgen import HfGenDecoderForCausalLM, HfGenSeq2SeqConfig, HfGenSeq2SeqForConditionalGeneration
from hfgen.compat import register_peft_target_modules
from hfgen.training.peft_defaults import HFGEN_MODEL_TYPES, PEFT_TEMPLATES, check_peft_targets, default_target_modules

# What a user of LoraConfig() without target_modules does once; tests/test_compat.py checks, in fresh processes,
# that nothing of this happens on `import hfgen` alone.
register_peft_target_modules()

METHODS = {
    "lora": lambda: LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8),
    "ia3": lambda: IA3Config(task_type="CAUSAL_LM"),
    "prompt_tuning": lambda: PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3),
    "prefix_tuning": lambda: PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3),
}


def _train(model, ids: torch.Tensor, steps: int = 5, lr: float = 3e-2) -> list[float]:
    """A few AdamW steps of next-token loss on one batch; returns the losses."""
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    model.eval()
    return losses


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory):
    """A tiny decoder saved with its code, so adapters can name it as their base model."""
    folder = tmp_path_factory.mktemp("peft_base") / "base"
    build(HfGenDecoderForCausalLM, tiny_config()).save_pretrained(folder)
    return str(folder)


def test_defaults_registered_for_every_hfgen_model_type():
    for model_type in HFGEN_MODEL_TYPES:
        template = PEFT_TEMPLATES[model_type]
        for name in ("LORA", "IA3", "ADALORA", "LOHA", "LOKR", "BOFT"):
            mapping = getattr(constants, f"TRANSFORMERS_MODELS_TO_{name}_TARGET_MODULES_MAPPING")
            assert mapping[model_type] == mapping[template], (name, model_type)
    assert constants.TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING["hfgen_decoder"] == ["down_proj"]
    assert constants.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING["hfgen_encoder"] == ["query", "value"]


def test_default_targets_exist_in_the_encoder_and_retnet():
    """The templates are right only if the names exist: LoRA without targets adapts the encoder's BERT-named and
    RetNet's Llama-named projections."""
    from hfgen.models import HfGenEncoderConfig, HfGenEncoderForSequenceClassification, HfGenRetNetConfig
    from hfgen.models import HfGenRetNetForCausalLM

    sizes = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                 pad_token_id=0)
    encoder = get_peft_model(HfGenEncoderForSequenceClassification(HfGenEncoderConfig(**sizes)),
                             LoraConfig(task_type="SEQ_CLS"))
    assert {n.rsplit(".", 2)[-2] for n, _ in encoder.named_modules() if n.endswith("lora_A")} == {"query", "value"}
    retnet = get_peft_model(HfGenRetNetForCausalLM(HfGenRetNetConfig(**sizes)), LoraConfig(task_type="CAUSAL_LM"))
    assert {n.rsplit(".", 2)[-2] for n, _ in retnet.named_modules() if n.endswith("lora_A")} == {"q_proj", "v_proj"}


def test_lora_without_targets_uses_defaults_on_decoder_and_seq2seq():
    decoder = get_peft_model(build(HfGenDecoderForCausalLM, tiny_config()), LoraConfig(task_type="CAUSAL_LM"))
    assert decoder.peft_config["default"].target_modules == {"q_proj", "v_proj"}
    wrapped = {name.rsplit(".", 2)[-2] for name, _ in decoder.named_modules() if name.endswith("lora_A")}
    assert wrapped == {"q_proj", "v_proj"}

    seq2seq_config = HfGenSeq2SeqConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_decoder_layers=1, num_attention_heads=4, pad_token_id=0)
    seq2seq = get_peft_model(HfGenSeq2SeqForConditionalGeneration(seq2seq_config),
                             LoraConfig(task_type="SEQ_2_SEQ_LM"))
    # self-attention of both stacks and the decoder's cross-attention: 3 attention modules x (q, v) x 1 layer
    assert sum(name.endswith("lora_A") for name, _ in seq2seq.named_modules()) == 6


@pytest.mark.parametrize("method", list(METHODS))
def test_train_save_reload_identical(method, base_folder, tmp_path):
    ids = random_ids(2, 12)
    base = AutoModelForCausalLM.from_pretrained(base_folder)
    frozen = {name: p.detach().clone() for name, p in base.named_parameters()}
    model = get_peft_model(base, METHODS[method]())
    with torch.no_grad():
        before = model(input_ids=ids).logits
    losses = _train(model, ids)
    assert losses[-1] < losses[0], losses
    # Only the adapter trained: the base weights are untouched.
    for name, param in model.get_base_model().named_parameters():
        if name in frozen:
            torch.testing.assert_close(param, frozen[name], rtol=0, atol=0)
    with torch.no_grad():
        after = model(input_ids=ids).logits
    assert not torch.allclose(after, before)

    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_folder), tmp_path / "adapter")
    auto = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "adapter", trust_remote_code=True)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(input_ids=ids).logits, after, rtol=0, atol=1e-6)
        torch.testing.assert_close(auto.eval()(input_ids=ids).logits, after, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_merge_and_unload_equals_unmerged(method):
    ids = random_ids(2, 12)
    model = get_peft_model(build(HfGenDecoderForCausalLM, tiny_config()), METHODS[method]())
    _train(model, ids)
    with torch.no_grad():
        unmerged = model(input_ids=ids).logits
        merged_model = model.merge_and_unload()
        assert type(merged_model) is HfGenDecoderForCausalLM
        assert not any("lora" in n or "ia3" in n for n, _ in merged_model.named_parameters())
        torch.testing.assert_close(merged_model(input_ids=ids).logits, unmerged, rtol=1e-5, atol=1e-5)


def _prefix_from_real_tokens(base, prefix_ids: torch.Tensor, config: PrefixTuningConfig) -> torch.Tensor:
    """The prefix-tuning embedding ([virtual tokens, layers * 2 * kv_heads * head_dim], PEFT's layout) that holds
    exactly the keys and values ``base`` computes for ``prefix_ids``."""
    with torch.no_grad():
        cache = base(input_ids=prefix_ids, use_cache=True).past_key_values
    per_layer = []
    for layer in range(base.config.num_hidden_layers):
        keys, values = cache.layers[layer].keys, cache.layers[layer].values  # [1, kv_heads, P, head_dim]
        per_layer += [keys[0].permute(1, 0, 2), values[0].permute(1, 0, 2)]  # [P, kv_heads, head_dim]
    return torch.stack(per_layer, dim=1).reshape(prefix_ids.shape[1], -1)


def test_prefix_tuning_cache_equals_real_prefix_tokens():
    """A prefix whose cached keys/values are those of real tokens t must give the logits of the base model run on
    t + x: the decoder has to take the pre-filled cache, place x's positions after it, and honour the attention
    mask that covers the virtual tokens -- for a right-padded batch too."""
    base = build(HfGenDecoderForCausalLM, tiny_config())
    reference = copy.deepcopy(base)
    config = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    model = get_peft_model(base, config).eval()
    prefix_ids = random_ids(1, 4, seed=7)
    with torch.no_grad():
        model.prompt_encoder["default"].embedding.weight.copy_(_prefix_from_real_tokens(reference, prefix_ids, config))

    rows = [random_ids(1, 9, seed=3)[0], random_ids(1, 5, seed=4)[0]]
    ids = torch.zeros(2, 9, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = row, 1
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
        assert logits.shape[1] == 9  # PEFT drops nothing for prefix tuning: the virtual tokens live in the cache
        for i, row in enumerate(rows):
            full = reference(input_ids=torch.cat([prefix_ids[0], row])[None]).logits[0, 4:]
            torch.testing.assert_close(logits[i, : len(row)], full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["prefix_tuning", "prompt_tuning"])
def test_prompt_learning_generate_cached_equals_uncached(method):
    model = get_peft_model(build(HfGenDecoderForCausalLM, tiny_config()), METHODS[method]())
    _train(model, random_ids(2, 12))
    prompt = random_ids(1, 6, seed=5)
    with torch.no_grad():
        cached = model.generate(input_ids=prompt, max_new_tokens=6, do_sample=False)
        tokens = prompt
        for _ in range(6):  # greedy by hand, the whole sequence each step, no cache carried over
            next_token = model(input_ids=tokens).logits[:, -1].argmax(-1, keepdim=True)
            tokens = torch.cat([tokens, next_token], dim=1)
    assert torch.equal(cached, tokens)


def test_target_names_that_match_nothing_raise_with_choices():
    model = build(HfGenDecoderForCausalLM, tiny_config())
    with pytest.raises(ValueError, match=r"\['query', 'value'\] match no module") as error:
        check_peft_targets(model, LoraConfig(target_modules=["query", "value"]))
    assert "q_proj" in str(error.value) and "down_proj" in str(error.value) and "'all-linear'" in str(error.value)
    with pytest.raises(ValueError, match="match no module"):
        check_peft_targets(model, LoraConfig(target_modules=r".*\.attn\.query"))
    # Partial matches are PEFT's business (it adapts what exists); defaults and all-linear pass.
    check_peft_targets(model, LoraConfig(target_modules=["q_proj", "query"]))
    check_peft_targets(model, LoraConfig(target_modules="all-linear"))
    check_peft_targets(model, LoraConfig())
    check_peft_targets(model, LoraConfig(target_modules=r".*\.self_attn\.(q|v)_proj"))


@pytest.mark.parametrize("method", ["prefix_tuning", "prompt_tuning"])
def test_llama_prompt_learning_generation_unchanged_by_hfgen(method):
    """transformers' own Llama with prompt learning, in a process where hfgen is imported (and its PEFT defaults
    registered): cached generation is what the uncached forward predicts. An earlier hfgen wrapped PEFT's
    ``prepare_inputs_for_generation`` on import, which made this fail for every model in the process."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from conftest import LLAMA_KEYS

    torch.manual_seed(0)
    model = get_peft_model(LlamaForCausalLM(LlamaConfig(**LLAMA_KEYS, initializer_range=0.1)), METHODS[method]())
    model.eval()
    with torch.no_grad():
        model.prompt_encoder["default"].embedding.weight.normal_()
        prompt = random_ids(1, 6, seed=5)
        cached = model.generate(input_ids=prompt, max_new_tokens=6, do_sample=False)
        tokens = prompt
        for _ in range(6):
            tokens = torch.cat([tokens, model(input_ids=tokens).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(cached, tokens)


def test_default_target_modules_reads_pefts_tables_for_every_family():
    """``default_target_modules`` gives the template's names (Llama's or BERT's) for every hfgen model type and
    PEFT's own entry for a type PEFT knows; an unknown method or type is refused with the valid choices."""
    from transformers import LlamaConfig

    from conftest import LLAMA_KEYS

    class Stub(torch.nn.Module):
        def __init__(self, model_type):
            super().__init__()
            self.config = type("Config", (), {"model_type": model_type})()

    for model_type, template in PEFT_TEMPLATES.items():
        expected = list(constants.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING[template])
        assert default_target_modules(Stub(model_type)) == expected
    assert default_target_modules(Stub("hfgen_decoder"), "ia3") == ["k_proj", "v_proj", "down_proj"]
    llama = LlamaConfig(**LLAMA_KEYS)
    assert default_target_modules(Stub(llama.model_type)) == ["q_proj", "v_proj"]
    with pytest.raises(ValueError, match=r"method='lorax' has no default target modules in PEFT; valid: .*'lora'"):
        default_target_modules(Stub("hfgen_decoder"), "lorax")
    with pytest.raises(ValueError, match=r"model_type='mystery'.*hfgen knows"):
        default_target_modules(Stub("mystery"))


@pytest.mark.parametrize("family", ["vlm", "gato", "vit"])
def test_lora_without_targets_on_the_multimodal_families(family):
    """The README says the defaults cover every family: LoRA without target_modules adapts the q/v projections of
    the VLM (text decoder and vision encoder), Gato and the ViT, and trains only the adapters."""
    from hfgen import HfGenGatoConfig, HfGenGatoForCausalLM, HfGenViTConfig, HfGenViTModel, HfGenVlmConfig
    from hfgen import HfGenVlmForConditionalGeneration

    sizes = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4)
    if family == "vlm":
        model = HfGenVlmForConditionalGeneration(HfGenVlmConfig(
            text_config=dict(vocab_size=64, pad_token_id=0, **sizes), vision_config=dict(image_size=8, patch_size=4,
                                                                                          **sizes)))
    elif family == "gato":
        model = HfGenGatoForCausalLM(HfGenGatoConfig(text_vocab_size=64, num_bins=16, **sizes))
    else:
        model = HfGenViTModel(HfGenViTConfig(image_size=8, patch_size=4, **sizes))
    attention_layers = sum(name.endswith("q_proj") for name, _ in model.named_modules())
    peft_model = get_peft_model(model, LoraConfig(r=2))
    adapted = [name.rsplit(".", 2)[-2] for name, _ in peft_model.named_modules() if name.endswith("lora_A")]
    assert sorted(set(adapted)) == ["q_proj", "v_proj"] and len(adapted) == 2 * attention_layers
    assert all("lora_" in name for name, p in peft_model.named_parameters() if p.requires_grad)
