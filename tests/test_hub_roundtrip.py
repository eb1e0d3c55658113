"""The Hub workflow end to end against a local endpoint (tests/hub_server.py, selected with ``HF_ENDPOINT``):
hfgen models pushed by the real transformers / huggingface_hub / PEFT / diffusers code in one process
(tests/fixtures/hub_push.py), then loaded by repo id and revision with ``trust_remote_code=True`` in a second process
where hfgen is NOT importable (tests/fixtures/hub_load.py, with tests/test_hub_portability.py's isolation), and
the outputs compared exactly with those computed before the push.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, ModelCard

from hub_server import HubServer
from test_hub_portability import isolated_pythonpath

FIXTURES = Path(__file__).parent / "fixtures"
TOKEN = "hf_local_fixture_token"
# What may be on the Hub after an hfgen push: safetensors, JSON, code, cards, plots, tokenizer files; no pickle.
PUSHABLE = (".safetensors", ".json", ".py", ".md", ".txt", ".png", ".jinja", ".model", ".gitattributes")


def hub_env(server: HubServer, home: Path, pythonpath: str | None = None) -> dict[str, str]:
    """The environment of a client process: the local endpoint, a token, a fresh cache; no inherited HF_*."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "HF_", "TRANSFORMERS", "DIFFUSERS", "HUGGINGFACE"))}
    env.update(HF_ENDPOINT=server.url, HF_TOKEN=TOKEN, HF_HOME=str(home), HF_HUB_DISABLE_XET="1",
               HF_HUB_DISABLE_TELEMETRY="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    return env


@pytest.fixture(scope="module")
def roundtrip(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub_roundtrip")
    with HubServer() as server:
        push = subprocess.run([sys.executable, str(FIXTURES / "hub_push.py"), str(root)], cwd=root,
                              env=hub_env(server, root / "push_home"), capture_output=True, text=True, timeout=900)
        assert push.returncode == 0, f"push failed:\n{push.stdout[-3000:]}\n{push.stderr[-6000:]}"
        workdir = root / "cwd"
        workdir.mkdir()
        load = subprocess.run([sys.executable, "-S", str(FIXTURES / "hub_load.py"), str(root)], cwd=workdir,
                              env=hub_env(server, root / "load_home", isolated_pythonpath(root)),
                              capture_output=True, text=True, timeout=900)
        assert load.returncode == 0, f"isolated load failed:\n{load.stdout[-3000:]}\n{load.stderr[-6000:]}"
        pushed = torch.load(root / "pushed.pt")
        yield dict(root=root, server=server, local=pushed["local"], commits=pushed["commits"],
                   loaded=torch.load(root / "loaded.pt"), jobs=json.loads((root / "jobs.json").read_text()),
                   api=HfApi(endpoint=server.url, token=TOKEN), push_log=push.stdout)


def hub_card(roundtrip, repo_id: str, revision: str | None = None) -> ModelCard:
    """The README.md of a repository, downloaded from the local Hub and parsed by huggingface_hub."""
    path = roundtrip["api"].hf_hub_download(repo_id, "README.md", revision=revision,
                                            cache_dir=roundtrip["root"] / "test_cache")
    return ModelCard.load(path)


def _names(roundtrip) -> list[str]:
    return [job["name"] for job in roundtrip["jobs"]]


@pytest.mark.parametrize("name", ["decoder-main", "decoder-v2", "decoder-experiment", "private", "seq2seq",
                                  "pretrained", "retnet"])
def test_generative_models_load_by_repo_id_with_identical_logits_and_tokens(roundtrip, name):
    loaded = roundtrip["loaded"][name]
    local = roundtrip["local"]["decoder-v2" if name == "decoder-main" else name]  # main's head is commit 2
    assert loaded["module"].startswith("transformers_modules"), loaded["module"]
    assert torch.equal(loaded["logits"], local["logits"])
    assert torch.equal(loaded["tokens"], local["tokens"])


def test_first_commit_still_loads_its_own_weights(roundtrip):
    """Commit 1 (model.push_to_hub + tokenizer.push_to_hub) by its id, after commit 2 replaced the weights."""
    loaded, local = roundtrip["loaded"], roundtrip["local"]
    assert torch.equal(loaded["decoder-v1"]["logits"], local["decoder-v1"]["logits"])
    assert torch.equal(loaded["decoder-v1"]["tokens"], local["decoder-v1"]["tokens"])
    assert not torch.equal(local["decoder-v1"]["logits"], local["decoder-v2"]["logits"])  # really two versions
    assert torch.equal(loaded["decoder-main"]["logits"], loaded["decoder-v2"]["logits"])  # main is the 2nd


def test_branch_keeps_main_unchanged(roundtrip):
    loaded, local = roundtrip["loaded"], roundtrip["local"]
    assert not torch.equal(local["decoder-experiment"]["logits"], local["decoder-v2"]["logits"])
    assert torch.equal(loaded["decoder-main"]["logits"], local["decoder-v2"]["logits"])
    refs = roundtrip["api"].list_repo_refs("hfgen-tester/decoder")
    branches = {ref.name: ref.target_commit for ref in refs.branches}
    assert set(branches) == {"main", "experiment"}
    assert branches["main"] == roundtrip["commits"]["decoder-v2"]


def test_history_has_every_commit_with_its_message(roundtrip):
    commits = roundtrip["api"].list_repo_commits("hfgen-tester/decoder")
    ids = [c.commit_id for c in commits]
    c = roundtrip["commits"]
    assert ids[:3] == [c["decoder-v2"], c["decoder-v1-tokenizer"], c["decoder-v1"]]
    assert commits[0].title == "Second version"
    experiment = roundtrip["api"].list_repo_commits("hfgen-tester/decoder", revision="experiment")
    assert experiment[0].title == "Experiment" and experiment[1].commit_id == c["decoder-v2"]


def test_bare_decoder_loads_with_auto_model(roundtrip):
    loaded = roundtrip["loaded"]["decoder-base"]
    assert loaded["class"] == "HfGenDecoderModel"
    assert torch.equal(loaded["last_hidden_state"], roundtrip["local"]["decoder-base"]["last_hidden_state"])


def test_tokenizer_round_trip_encodes_the_same(roundtrip):
    for name in ("decoder-main", "decoder-v2", "pretrained"):
        assert roundtrip["loaded"][name]["token_ids"] == roundtrip["local"]["token_ids"], name


def test_encoder_round_trip(roundtrip):
    if "encoder" not in _names(roundtrip):
        pytest.skip("hfgen has no HfGenEncoderForMaskedLM")
    loaded = roundtrip["loaded"]["encoder"]
    assert loaded["class"] == "HfGenEncoderForMaskedLM" and loaded["module"].startswith("transformers_modules")
    assert torch.equal(loaded["logits"], roundtrip["local"]["encoder"]["logits"])


def test_lora_adapter_round_trip(roundtrip):
    """AutoPeftModelForCausalLM fetches the base by the repo id in adapter_config.json, then the adapter."""
    loaded, local = roundtrip["loaded"]["lora"], roundtrip["local"]["lora"]
    assert loaded["module"].startswith("transformers_modules")
    assert torch.equal(loaded["logits"], local["logits"])
    assert not torch.equal(local["logits"], local["base_logits"])  # the adapter changes the outputs
    card = hub_card(roundtrip, "hfgen-tester/decoder-lora")
    assert card.data.library_name == "peft" and card.data.base_model == "hfgen-tester/decoder"
    assert {"hfgen", "peft", "lora", "softmax:off_by_one"} <= set(card.data.tags)


def test_diffusion_pipeline_round_trip(roundtrip):
    if "diffusion" not in _names(roundtrip):
        pytest.skip("hfgen.diffusion has no HfGenDiffusionPipeline")
    loaded = roundtrip["loaded"]["diffusion"]
    assert loaded["class"] == "HfGenDiffusionPipeline"
    assert any(module.startswith("diffusers_modules") for module in loaded["modules"]), loaded["modules"]
    assert torch.equal(loaded["images"], roundtrip["local"]["diffusion"]["images"])


def test_private_repo_is_invisible_without_a_token(roundtrip):
    server = roundtrip["server"]
    repo = server.repos["hfgen-tester/private-decoder"]
    assert repo.private
    url = f"{server.url}/hfgen-tester/private-decoder/resolve/main/config.json"
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(url)
    assert error.value.code == 401 and error.value.headers["X-Error-Code"] == "RepoNotFound"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    assert json.loads(urllib.request.urlopen(request).read())["model_type"] == "hfgen_decoder"
    # the isolated loader, with HF_TOKEN, did load it (identical outputs above)
    assert roundtrip["loaded"]["private"]["class"] == "HfGenDecoderForCausalLM"


def test_weights_went_through_lfs_and_code_inline(roundtrip):
    commit = roundtrip["server"].repos["hfgen-tester/decoder"].resolve("main")
    assert "model.safetensors" in commit.lfs
    for name in ("config.json", "modeling_hfgen_decoder.py", "attention.py", "tokenizer.json", "README.md"):
        assert name in commit.files and name not in commit.lfs, name


def test_hfgen_card_on_the_hub(roundtrip):
    """Commit 2 (hfgen.hub.push_to_hub) replaced transformers' generic card with hfgen's."""
    card = hub_card(roundtrip, "hfgen-tester/decoder")
    data, results = card.data, roundtrip["local"]["decoder-v2-results"]
    assert data.library_name == "transformers" and data.pipeline_tag == "text-generation"
    assert data.license == "apache-2.0"
    assert {"hfgen", "hfgen_decoder", "softmax:off_by_one", "attention:gqa"} <= set(data.tags)
    [result] = data.eval_results
    assert result.metric_type == "perplexity"
    assert result.metric_value == round(results["eval_perplexity"], 4)
    assert 'from_pretrained("hfgen-tester/decoder", trust_remote_code=True)' in card.text
    assert 'AutoTokenizer.from_pretrained("hfgen-tester/decoder", trust_remote_code=True)' in card.text
    info = roundtrip["api"].model_info("hfgen-tester/decoder")
    assert info.pipeline_tag == "text-generation" and "softmax:off_by_one" in info.tags


def test_card_written_for_a_folder_pushed_without_one(roundtrip):
    card = hub_card(roundtrip, "hfgen-tester/private-decoder")
    assert {"position:alibi", "attention:mqa"} <= set(card.data.tags)
    assert "AutoTokenizer" not in card.text  # no tokenizer was pushed, so none is promised
    assert "No training record" in card.text


def test_seq2seq_card(roundtrip):
    card = hub_card(roundtrip, "hfgen-tester/seq2seq")
    assert card.data.pipeline_tag == "text2text-generation" and "hfgen_seq2seq" in card.data.tags
    assert "AutoModelForSeq2SeqLM.from_pretrained" in card.text


def test_plain_push_keeps_a_card_with_training_numbers(roundtrip):
    """seq2seq: hfgen.hub.push_to_hub with a measured perplexity, then seq2seq.push_to_hub (other weights): the
    second commit re-uploads that card unchanged instead of replacing it (as transformers keeps an existing card)."""
    api, commits = roundtrip["api"], roundtrip["commits"]
    assert [c.commit_id for c in api.list_repo_commits("hfgen-tester/seq2seq")][:2] == [
        commits["seq2seq"], commits["seq2seq-hfgen"]]
    first = hub_card(roundtrip, "hfgen-tester/seq2seq", revision=commits["seq2seq-hfgen"])
    card = hub_card(roundtrip, "hfgen-tester/seq2seq")
    assert card.content == first.content
    head = roundtrip["server"].repos["hfgen-tester/seq2seq"].resolve("main")
    assert head.title == "Plain push" and "README.md" in head.files
    [result] = card.data.eval_results
    assert result.metric_value == round(roundtrip["local"]["seq2seq-results"]["eval_perplexity"], 4)


# Repositories pushed with transformers' / diffusers' own push_to_hub (or save_pretrained(push_to_hub=True)), with
# what hfgen's card must say: library, pipeline tag, family tag, and the Auto class of the loading lines.
PLAIN_PUSHES = {
    "decoder-v1": ("hfgen-tester/decoder", "transformers", "text-generation", "hfgen_decoder", "AutoModelForCausalLM"),
    "encoder": ("hfgen-tester/encoder", "transformers", "fill-mask", "hfgen_encoder", "AutoModelForMaskedLM"),
    "retnet": ("hfgen-tester/retnet", "transformers", "text-generation", "hfgen_retnet", "AutoModelForCausalLM"),
    "value-head": ("hfgen-tester/value-head", "transformers", "text-generation", "hfgen_decoder",
                   "AutoModelForCausalLM"),
    "gato": ("hfgen-tester/gato", "transformers", "text-generation", "hfgen_gato", "AutoModelForCausalLM"),
    "vlm": ("hfgen-tester/vlm", "transformers", "image-text-to-text", "hfgen_vlm", "AutoModelForImageTextToText"),
    "diffusion": ("hfgen-tester/diffusion", "diffusers", "unconditional-image-generation", "HfGenDiffusionPipeline",
                  "DiffusionPipeline"),
}


@pytest.mark.parametrize("name", PLAIN_PUSHES)
def test_plain_push_to_hub_uploads_hfgens_card(roundtrip, name):
    if name == "diffusion" and name not in roundtrip["commits"]:
        pytest.skip("hfgen.diffusion has no HfGenDiffusionPipeline")
    repo, library, pipeline_tag, family_tag, auto_class = PLAIN_PUSHES[name]
    revision = roundtrip["commits"].get(name) if name == "decoder-v1" else None
    card = hub_card(roundtrip, repo, revision=revision)
    assert "automatically generated" not in card.text  # not transformers' / diffusers' generic card
    assert card.data.library_name == library and card.data.pipeline_tag == pipeline_tag
    assert card.data.license == "apache-2.0" and card.data.model_name == repo
    assert {"hfgen", family_tag} <= set(card.data.tags)
    assert f'{auto_class}.from_pretrained(' in card.text and "trust_remote_code=True" in card.text
    if library == "transformers":
        assert "import hfgen" in card.text and "## Variant" in card.text


def test_plain_push_card_names_the_variant(roundtrip):
    decoder = hub_card(roundtrip, "hfgen-tester/decoder", revision=roundtrip["commits"]["decoder-v1"])
    assert {"softmax:off_by_one", "attention:gqa"} <= set(decoder.data.tags)
    assert "| `softmax_variant` | **`off_by_one`** | `standard` |" in decoder.text
    retnet = hub_card(roundtrip, "hfgen-tester/retnet")
    assert "retention:chunkwise" in retnet.data.tags and "`retention_mode`" in retnet.text
    vlm = hub_card(roundtrip, "hfgen-tester/vlm")
    assert "fusion:projection" in vlm.data.tags and "| `vision_config.patch_size` |" in vlm.text


def test_push_where_hfgen_is_not_installed_uploads_hfgens_card(roundtrip):
    """The RetNet loaded by repo id in the process without hfgen, pushed again with its push_to_hub: the card code
    (model_card.py) came from the Hub with the model code, so the new repository gets hfgen's card as well."""
    api = roundtrip["api"]
    head = api.list_repo_refs("hfgen-tester/retnet-repushed").branches[0].target_commit
    assert head == roundtrip["loaded"]["retnet"]["repush"]
    card = hub_card(roundtrip, "hfgen-tester/retnet-repushed")
    assert {"hfgen", "hfgen_retnet", "retention:chunkwise"} <= set(card.data.tags)
    assert card.data.pipeline_tag == "text-generation" and "automatically generated" not in card.text
    assert 'AutoModelForCausalLM.from_pretrained("hfgen-tester/retnet-repushed", trust_remote_code=True)' in card.text
    files = set(api.list_repo_files("hfgen-tester/retnet-repushed"))
    assert {"model.safetensors", "config.json", "modeling_hfgen_retnet.py", "model_card.py"} <= files


def test_model_pushed_again_after_its_tokenizer_gets_a_card_that_loads_it(roundtrip):
    """RetNet: model.push_to_hub (no tokenizer yet), tokenizer.push_to_hub (card re-uploaded as it was), then
    model.push_to_hub again: the card, which had no training record, is rebuilt and now loads the tokenizer."""
    commits = roundtrip["commits"]
    first = hub_card(roundtrip, "hfgen-tester/retnet", revision=commits["retnet-model"])
    assert hub_card(roundtrip, "hfgen-tester/retnet", revision=commits["retnet-tokenizer"]).content == first.content
    assert "AutoTokenizer" not in first.text
    card = hub_card(roundtrip, "hfgen-tester/retnet")
    assert 'tokenizer = AutoTokenizer.from_pretrained("hfgen-tester/retnet", trust_remote_code=True)' in card.text
    assert roundtrip["loaded"]["retnet"]["token_ids"] == roundtrip["local"]["token_ids"]


def test_recipe_pushes_with_training_arguments_flags(roundtrip):
    """recipes/pretrain_masked_lm.py --push_to_hub --hub_model_id: the finished folder with hfgen's card (the
    recipe's measured perplexity in the model-index) loads by repo id with identical logits."""
    if "mlm-recipe" not in roundtrip["loaded"]:
        pytest.skip("the push side ran with --skip-pretrain")
    card = hub_card(roundtrip, "hfgen-tester/mlm-recipe")
    assert card.data.pipeline_tag == "fill-mask" and "hfgen_encoder" in card.data.tags
    [result] = card.data.eval_results
    assert result.metric_value == round(roundtrip["local"]["mlm-recipe-results"]["eval_perplexity"], 4)
    assert 'AutoTokenizer.from_pretrained("hfgen-tester/mlm-recipe", trust_remote_code=True)' in card.text
    files = roundtrip["api"].list_repo_files("hfgen-tester/mlm-recipe")
    assert "training_args.json" in files and all(name.endswith(PUSHABLE) for name in files), sorted(files)
    loaded = roundtrip["loaded"]["mlm-recipe"]
    assert loaded["module"].startswith("transformers_modules")
    assert torch.equal(loaded["logits"], roundtrip["local"]["mlm-recipe"]["logits"])


def test_pipeline_push_where_hfgen_is_not_installed_uploads_hfgens_card(roundtrip):
    """The diffusion pipeline loaded by repo id without hfgen, pushed again with diffusers' push_to_hub: the card
    code is inlined into the pipeline's exported file, so the new repository gets hfgen's pipeline card."""
    if "diffusion" not in roundtrip["loaded"]:
        pytest.skip("hfgen.diffusion has no HfGenDiffusionPipeline")
    api = roundtrip["api"]
    head = api.list_repo_refs("hfgen-tester/diffusion-repushed").branches[0].target_commit
    assert head == roundtrip["loaded"]["diffusion"]["repush"]
    card = hub_card(roundtrip, "hfgen-tester/diffusion-repushed")
    assert card.data.library_name == "diffusers" and "automatically generated" not in card.text
    assert {"hfgen", "HfGenDiffusionPipeline", "HfGenUNet2DModel"} <= set(card.data.tags)
    files = set(api.list_repo_files("hfgen-tester/diffusion-repushed"))
    assert {"model_index.json", "pipeline_hfgen_diffusion.py", "unet/unet_hfgen.py"} <= files


def test_tags_given_to_push_to_hub_stay_on_hfgens_card(roundtrip):
    assert "my-tag" in hub_card(roundtrip, "hfgen-tester/retnet").data.tags


def test_tokenizer_push_keeps_hfgens_card(roundtrip):
    """Commit 1 is model.push_to_hub (no tokenizer in the repository yet: the card loads none), then
    tokenizer.push_to_hub re-uploads that card unchanged (transformers reuses the repository's card)."""
    commits = roundtrip["commits"]
    model_card = hub_card(roundtrip, "hfgen-tester/decoder", revision=commits["decoder-v1"])
    after = hub_card(roundtrip, "hfgen-tester/decoder", revision=commits["decoder-v1-tokenizer"])
    assert after.content == model_card.content
    assert "AutoTokenizer" not in model_card.text
    assert "written without a tokenizer in the repository" in model_card.text


def test_processor_push_rewrites_the_card_to_load_it(roundtrip):
    """VLM: the model's push writes a card without a processor; the processor's push (an hfgen class) rebuilds
    hfgen's card from the repository's config, now loading the processor."""
    commits = roundtrip["commits"]
    before = hub_card(roundtrip, "hfgen-tester/vlm", revision=commits["vlm-model"])
    assert "AutoProcessor" not in before.text
    card = hub_card(roundtrip, "hfgen-tester/vlm", revision=commits["vlm"])
    assert 'processor = AutoProcessor.from_pretrained("hfgen-tester/vlm", trust_remote_code=True)' in card.text
    files = set(roundtrip["api"].list_repo_files("hfgen-tester/vlm"))
    assert {"processor_config.json", "processing_hfgen_vlm.py", "model_card.py", "tokenizer.json",
            "model.safetensors", "modeling_hfgen_vlm.py"} <= files


def test_vlm_and_processor_load_by_repo_id_with_identical_outputs(roundtrip):
    loaded, local = roundtrip["loaded"]["vlm"], roundtrip["local"]["vlm"]
    assert loaded["class"] == "HfGenVlmForConditionalGeneration"
    assert loaded["module"].startswith("transformers_modules")
    assert loaded["processor"].startswith("transformers_modules")  # the processor's code came from the Hub too
    assert torch.equal(loaded["input_ids"], local["input_ids"])
    assert torch.equal(loaded["logits"], local["logits"])
    assert torch.equal(loaded["tokens"], local["tokens"])


@pytest.mark.parametrize("name", ["value-head", "gato"])
def test_other_families_load_by_repo_id_with_identical_logits(roundtrip, name):
    loaded, local = roundtrip["loaded"][name], roundtrip["local"][name]
    assert loaded["module"].startswith("transformers_modules")
    assert torch.equal(loaded["logits"], local["logits"])
    if name == "value-head":
        assert loaded["class"] == "HfGenDecoderForCausalLMWithValueHead"
        assert torch.equal(loaded["value"], local["value"])


def test_pretrain_pushes_its_folder_with_card_and_curve(roundtrip):
    """pretrain(TrainingArguments(push_to_hub=True, hub_model_id=...)) pushes the finished Hub-ready folder."""
    api, commit = roundtrip["api"], roundtrip["commits"]["pretrained"]
    assert api.list_repo_refs("hfgen-tester/pretrained").branches[0].target_commit == commit
    files = set(api.list_repo_files("hfgen-tester/pretrained"))
    assert {"model.safetensors", "config.json", "modeling_hfgen_decoder.py", "tokenizer.json", "loss_curve.png",
            "README.md", "training_args.json"} <= files
    # nothing pickled left the machine: the output folder holds Trainer's training_args.bin, the Hub does not
    assert all(name.endswith(PUSHABLE) for name in files), sorted(files)
    assert (roundtrip["root"] / "pretrained" / "training_args.bin").is_file()
    card = hub_card(roundtrip, "hfgen-tester/pretrained")
    [result] = card.data.eval_results
    metrics = roundtrip["local"]["pretrained-metrics"]
    assert result.metric_value == round(metrics["eval_perplexity"], 4)
    assert card.data.model_name == "hfgen-tester/pretrained"
    assert 'from_pretrained("hfgen-tester/pretrained", trust_remote_code=True)' in card.text
