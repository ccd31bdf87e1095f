# vae-lit: `make help` lists the targets.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "} {printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev,sweep]"
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install vae-lit with its pinned dependencies (torch CPU/GPU pair)

# One intra-op thread unless OMP_NUM_THREADS says otherwise: at 32 px a second thread gains nothing,
# and on a machine with other jobs two threads wait on each other at every op (27 ms a step against
# 3-4 s at a load of 2-4 on 2 cores). Larger images: OMP_NUM_THREADS=2 make train ARGS=...
# experiment=first_run: the seed's network with a discretized logistic likelihood, which learns the
# shapes in this budget; EXPERIMENT=<name> trains another setup (EXPERIMENT=vae: the seed's model).
EXPERIMENT ?= first_run
train: $(STAMP) ## Train a VAE on the embedded sprites data (3-5 minutes on 2 CPU cores)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python -m vae_lit.train experiment=$(EXPERIMENT) $(ARGS)

eval: $(STAMP) ## Evaluate a checkpoint on its test split: make eval CKPT=<run>/checkpoints/last.ckpt
	$(BIN)/python -m vae_lit.eval ckpt=$(CKPT) $(ARGS)

test: $(STAMP) ## Run the test suite (two processes: ~12 min on 2 cores)
	$(BIN)/python -m pytest -n 2 $(ARGS)

test-fast: $(STAMP) ## Run the tests not marked slow
	$(BIN)/python -m pytest -m "not slow" $(ARGS)

lint: $(STAMP) ## Lint and check formatting with ruff
	$(BIN)/ruff check src tests benchmarks docs
	$(BIN)/ruff format --check src tests benchmarks docs

format: $(STAMP) ## Format the code with ruff
	$(BIN)/ruff check --fix src tests benchmarks docs
	$(BIN)/ruff format src tests benchmarks docs

clean: ## Remove training outputs (logs/) and caches, keep .venv
	rm -rf logs .pytest_cache .ruff_cache

.PHONY: help install train eval test test-fast lint format clean
