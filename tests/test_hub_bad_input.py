"""Bad input to the Hub workflow (issue 9, section 4): a folder that is not a saved hfgen model, an invalid repo
id, code that would not be self-contained on the Hub, a card that promises a missing tokenizer. Each is a clear
``ValueError`` (exit status 2 from ``hfgen push``) raised before anything reaches the Hub: the local endpoint
(tests/hub_server.py) must have received no request at all."""

from __future__ import annotations

import json
import shutil

import pytest
from huggingface_hub import ModelCard

from conftest import build, tiny_config
from hfgen import HfGenDecoderForCausalLM
from hfgen.cli import main as hfgen_cli
from hfgen.hub import check_repo_id, inspect_saved_folder, push_folder, push_to_hub, write_model_card
from hub_server import HubServer

TOKEN = "hf_local_fixture_token"


@pytest.fixture(scope="module")
def server():
    # The fixture speaks git-LFS, not Xet: the client's own switch (HF_HUB_DISABLE_XET, read at import) is set
    # for this process the way the environment variable would have set it.
    patch = pytest.MonkeyPatch()
    patch.setattr("huggingface_hub.constants.HF_HUB_DISABLE_XET", True)
    with HubServer() as hub:
        yield hub
    patch.undo()


@pytest.fixture(autouse=True)
def _no_request_yet(server):
    server.requests.clear()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A valid saved decoder folder (no tokenizer), to copy and break."""
    folder = tmp_path_factory.mktemp("saved") / "decoder"
    build(HfGenDecoderForCausalLM, tiny_config()).save_pretrained(folder)
    return folder


@pytest.fixture
def copy_of(saved, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(saved, target)
    return target


def push(server, folder, repo_id="hfgen-tester/model", **kwargs):
    return push_folder(folder, repo_id, endpoint=server.url, token=TOKEN, **kwargs)


def expect_refusal(server, folder, match, repo_id="hfgen-tester/model", **kwargs):
    with pytest.raises(ValueError, match=match):
        push(server, folder, repo_id, **kwargs)
    assert server.requests == [], "something was sent to the Hub before the error"


@pytest.mark.parametrize("repo_id, reason", [
    ("a/b/c", "namespace/repo_name"),
    ("user/bad--name", r"--"),
    ("user/-starts-with-dash", "alphanumeric"),
    ("user/has space", "alphanumeric"),
    ("user/model.git", r"\.git"),
    ("", "non-empty"),
    ("x" * 97, "96"),
])
def test_invalid_repo_id(server, saved, repo_id, reason):
    expect_refusal(server, saved, f"(?s)repo id.*{reason}", repo_id=repo_id)


def test_repo_id_that_is_a_local_path(server, saved):
    expect_refusal(server, saved, "local path", repo_id=str(saved))


def test_valid_repo_ids_pass():
    for repo_id in ("model", "user/model", "User_1/model-v2.0"):
        assert check_repo_id(repo_id) == repo_id


def test_folder_that_does_not_exist(server, tmp_path):
    expect_refusal(server, tmp_path / "missing", "is not a folder")


def test_empty_folder(server, tmp_path):
    expect_refusal(server, tmp_path, "no config.json, adapter_config.json or model_index.json")


def test_folder_of_another_library(server, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    expect_refusal(server, tmp_path, "not a saved hfgen model: its config.json has model_type 'llama'")


def test_missing_weights(server, copy_of):
    (copy_of / "model.safetensors").unlink()
    expect_refusal(server, copy_of, "no safetensors weights")


def test_missing_auto_map(server, copy_of):
    config = json.loads((copy_of / "config.json").read_text())
    del config["auto_map"]
    (copy_of / "config.json").write_text(json.dumps(config))
    expect_refusal(server, copy_of, "no auto_map")


def test_missing_sibling_module(server, copy_of):
    """The model file imports `from .attention import ...`: without attention.py it would not load remotely."""
    (copy_of / "attention.py").unlink()
    expect_refusal(server, copy_of, r"imports \.attention, but attention\.py is not in the folder")


def test_absolute_import_of_hfgen(server, copy_of):
    path = copy_of / "modeling_hfgen_decoder.py"
    path.write_text("from hfgen.models.variants import ATTENTION_SCORINGS\n" + path.read_text())
    expect_refusal(server, copy_of, "imports hfgen.models.variants, which a user without hfgen")


def test_import_reaching_outside_the_folder(server, copy_of):
    path = copy_of / "layers.py"
    path.write_text("from ..data import load_tokenizer\n" + path.read_text())
    expect_refusal(server, copy_of, "reaches outside the folder")


def test_auto_map_naming_a_missing_class(server, copy_of):
    config = json.loads((copy_of / "config.json").read_text())
    config["auto_map"]["AutoModelForCausalLM"] = "modeling_hfgen_decoder.HfGenDecoderForTypo"
    (copy_of / "config.json").write_text(json.dumps(config))
    expect_refusal(server, copy_of, "does not define HfGenDecoderForTypo")


def test_card_promising_a_missing_tokenizer(server, copy_of):
    config = build(HfGenDecoderForCausalLM, tiny_config()).config
    write_model_card(copy_of, config, {}, has_tokenizer=True)  # says AutoTokenizer.from_pretrained(...)
    expect_refusal(server, copy_of, "loads a tokenizer .* but the folder has none")


def test_card_promising_a_missing_processor(server, tmp_path):
    """A VLM folder with its tokenizer but without the processor its card loads (AutoProcessor)."""
    from hfgen.data.captions import vlm_tokenizer
    from test_vlm_hub import tiny_vlm

    tokenizer = vlm_tokenizer()
    model = tiny_vlm(tokenizer, "projection")
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    write_model_card(tmp_path, model.config, {}, task="image-text-to-text", has_tokenizer=True)
    expect_refusal(server, tmp_path, "loads a processor .* no processor_config.json")


def test_empty_commit_message(server, saved):
    expect_refusal(server, saved, "commit message is empty", commit_message="  ")


def test_push_to_hub_of_a_model_checks_the_repo_id_before_saving(server):
    model = build(HfGenDecoderForCausalLM, tiny_config())
    with pytest.raises(ValueError, match="Invalid repo id"):
        push_to_hub(model, "bad//id", endpoint=server.url, token=TOKEN)
    assert server.requests == []


def test_every_problem_is_listed_at_once(server, copy_of):
    (copy_of / "model.safetensors").unlink()
    (copy_of / "attention.py").unlink()
    with pytest.raises(ValueError) as error:
        inspect_saved_folder(copy_of)
    assert "no safetensors weights" in str(error.value) and "attention.py is not in the folder" in str(error.value)


def test_cli_reports_the_error_and_exits_2(server, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", server.url)
    assert hfgen_cli(["push", str(tmp_path), "hfgen-tester/model"]) == 2
    assert "hfgen push: error:" in capsys.readouterr().err
    assert hfgen_cli(["push", str(tmp_path), "not/a/repo"]) == 2
    assert "Invalid repo id" in capsys.readouterr().err
    assert server.requests == []


def test_valid_folder_is_pushed_unchanged_with_a_generated_card(server, saved):
    """The positive control of the checks above: the same folder, unbroken, goes up as one commit; the card is
    added to the commit only (the folder is not changed)."""
    before = sorted(p.name for p in saved.iterdir())
    commit = push(server, saved, "hfgen-tester/valid", private=True, commit_message="Valid")
    assert sorted(p.name for p in saved.iterdir()) == before and "README.md" not in before
    repo = server.repos["hfgen-tester/valid"]
    head = repo.resolve("main")
    assert repo.private and head.oid == commit.oid and head.title == "Valid"
    for name in before:
        assert head.files[name] == (saved / name).read_bytes(), name
    card = ModelCard(head.files["README.md"].decode())
    assert card.data.library_name == "transformers" and "hfgen_decoder" in card.data.tags
    assert "AutoTokenizer" not in card.text


def test_adapter_folder_is_accepted_and_needs_its_weights(saved, tmp_path):
    from peft import LoraConfig, get_peft_model

    from hfgen.training.peft_defaults import default_target_modules

    base = build(HfGenDecoderForCausalLM, tiny_config())
    model = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", r=2, target_modules=default_target_modules(base)))
    model.peft_config["default"].base_model_name_or_path = "hfgen-tester/base"
    model.save_pretrained(tmp_path / "adapter")
    found = inspect_saved_folder(tmp_path / "adapter")
    assert found["kind"] == "adapter" and found["config"]["base_model_name_or_path"] == "hfgen-tester/base"
    (tmp_path / "adapter" / "adapter_model.safetensors").unlink()
    with pytest.raises(ValueError, match="adapter_model.safetensors is not"):
        inspect_saved_folder(tmp_path / "adapter")


def test_pipeline_folder_is_accepted_and_needs_its_component_code(tmp_path):
    pytest.importorskip("hfgen.diffusion")
    from diffusers import DDIMScheduler

    from hfgen.diffusion import HfGenDiffusionPipeline, HfGenUNet2DModel

    unet = HfGenUNet2DModel(sample_size=8, block_out_channels=(8, 16), num_attention_heads=2, norm_num_groups=4)
    HfGenDiffusionPipeline(unet, DDIMScheduler(num_train_timesteps=10)).save_pretrained(tmp_path / "pipe")
    assert inspect_saved_folder(tmp_path / "pipe")["kind"] == "pipeline"
    (tmp_path / "pipe" / "unet" / "unet_hfgen.py").unlink()
    with pytest.raises(ValueError, match=r"model_index.json \(unet\) maps unet to unet_hfgen.HfGenUNet2DModel"):
        inspect_saved_folder(tmp_path / "pipe")


def test_cli_push_help(capsys):
    with pytest.raises(SystemExit) as done:
        hfgen_cli(["push", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for flag in ("PATH", "REPO_ID", "--private", "--revision", "--commit-message", "HF_ENDPOINT"):
        assert flag in text, flag
