"""``transformers serve`` (a real HTTP server, continuous batching) serving saved hfgen checkpoints prepared by
``hfgen.serving.prepare_for_serving``, queried with the ``openai`` client: chat and text completions, streamed and
not, each answer the text of greedy ``generate`` on the same prompt. The server runs the model code saved with the
checkpoint (``--trust-remote-code``, the user's choice on the command line)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

openai = pytest.importorskip("openai", reason="optional extra hfgen[serve] not installed")
pytest.importorskip("fastapi", reason="optional extra hfgen[serve] not installed")
pytest.importorskip("uvicorn", reason="optional extra hfgen[serve] not installed")

from conftest import build, load_hfgen_tokenizer, tiny_config  # noqa: E402
from hfgen import HfGenDecoderForCausalLM  # noqa: E402
from hfgen.serving import prepare_for_serving  # noqa: E402

NEW_TOKENS = 10
MESSAGES = [{"role": "user", "content": "What does the with statement do?"}]
PROMPT = "def read(path):\n    with open(path) as f:"
VARIANTS = {"decoder": {}, "off_by_one": {"softmax_variant": "off_by_one"}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``transformers serve`` in a subprocess on a free localhost port; stopped (terminate, then kill) on exit."""

    def __init__(self, log: Path, *extra: str):
        self.port = free_port()
        command = [str(Path(sys.executable).parent / "transformers"), "serve", "--trust-remote-code",
                   "--host", "127.0.0.1", "--port", str(self.port), "--continuous-batching",
                   # a paged cache sized for a test: left alone it takes 90 % of the machine's free memory per model
                   "--cb-num-blocks", "64", "--cb-block-size", "32", "--cb-max-batch-tokens", "256", *extra]
        self.log = log.open("w")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.client = openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key="unused", timeout=300)

    def wait_until_up(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"server exited: {Path(self.log.name).read_text()[-3000:]}"
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"server not up after {timeout} s: {Path(self.log.name).read_text()[-3000:]}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def greedy_text(model, tokenizer, ids: torch.Tensor) -> str:
    out = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """``{name: (served folder, hfgen model, tokenizer)}`` for the tiny decoder and its off-by-one variant, and
    the running server."""
    tokenizer = load_hfgen_tokenizer()
    root = tmp_path_factory.mktemp("serve")
    models = {}
    for name, overrides in VARIANTS.items():
        config = tiny_config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id, max_position_embeddings=256, **overrides)
        model = build(HfGenDecoderForCausalLM, config)
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        models[name] = (prepare_for_serving(root / name, root / f"{name}-served"), model, tokenizer)
    server = Server(root / "server.log")
    try:
        server.wait_until_up()
        yield models, server
    finally:
        server.stop()


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_chat_completion_equals_greedy_generate(served, name, stream):
    models, server = served
    folder, model, tokenizer = models[name]
    ids = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)["input_ids"]
    response = server.client.chat.completions.create(model=str(folder), messages=MESSAGES, max_tokens=NEW_TOKENS,
                                                     temperature=0, stream=stream)
    if stream:
        text = "".join(chunk.choices[0].delta.content or "" for chunk in response if chunk.choices)
    else:
        text = response.choices[0].message.content
        assert response.usage.prompt_tokens == ids.shape[1]
    assert text == greedy_text(model, tokenizer, ids)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_text_completion_equals_greedy_generate(served, stream):
    models, server = served
    folder, model, tokenizer = models["off_by_one"]
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    response = server.client.completions.create(model=str(folder), prompt=PROMPT, max_tokens=NEW_TOKENS,
                                                temperature=0, stream=stream)
    text = "".join(chunk.choices[0].text for chunk in response) if stream else response.choices[0].text
    assert text == greedy_text(model, tokenizer, ids)


def test_prepared_folder_names_no_architecture_and_keeps_the_code(served):
    models, _ = served
    folder, _, _ = models["decoder"]
    config = json.loads((folder / "config.json").read_text())
    assert "architectures" not in config and config["auto_map"]["AutoModelForCausalLM"].startswith("modeling_")
    assert (folder / "modeling_hfgen_decoder.py").is_file() and (folder / "model.safetensors").is_file()


def test_bad_checkpoints_are_refused_before_writing(tmp_path):
    with pytest.raises(ValueError, match="checkpoint=.*no config.json"):
        prepare_for_serving(tmp_path / "missing", tmp_path / "out")
    model = build(HfGenDecoderForCausalLM, tiny_config())
    model.save_pretrained(tmp_path / "no-tokenizer")
    with pytest.raises(ValueError, match="tokenizer_config.json"):
        prepare_for_serving(tmp_path / "no-tokenizer", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # SmolLM2-135M: the server's model process loads 540 MB of fp32 weights
def test_smollm2_through_hfgen_serves_the_tokens_of_generate(tmp_path):
    pytest.importorskip("gguf", reason="optional extra hfgen[pretrained] not installed")
    from hfgen.pretrained import load_smollm2

    try:
        model, tokenizer = load_smollm2()  # converts the GGUF into an hfgen checkpoint on first use
    except ImportError as error:
        pytest.skip(str(error))
    # saved again rather than served from the conversion cache, whose code files date from its conversion
    model.save_pretrained(tmp_path / "smollm2")
    tokenizer.save_pretrained(tmp_path / "smollm2")
    folder = prepare_for_serving(tmp_path / "smollm2", tmp_path / "smollm2-served")
    ids = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)["input_ids"]
    server = Server(tmp_path / "server.log")
    try:
        server.wait_until_up()
        response = server.client.chat.completions.create(model=str(folder), messages=MESSAGES,
                                                         max_tokens=NEW_TOKENS, temperature=0)
        streamed = server.client.chat.completions.create(model=str(folder), messages=MESSAGES,
                                                         max_tokens=NEW_TOKENS, temperature=0, stream=True)
        streamed_text = "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices)
    finally:
        server.stop()
    expected = greedy_text(model, tokenizer, ids)
    assert response.choices[0].message.content == expected == streamed_text
