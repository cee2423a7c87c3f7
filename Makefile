# Two entry points, each setting up the virtual environment from scratch when needed:
#   make demo   fusion build recipes/sst2_minilm.yaml (bundled SST-2 sample, real all-MiniLM-L6-v2), then predict
#   make test   ruff + the whole test suite
# torch is installed first and pinned, so nothing resolves a newer torch with gigabytes of CUDA packages.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PIN ?= torch==2.13.0
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo test lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH_PIN)"
	$(BIN)/python -m pip install --quiet -e ".[demo,dev,ray]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/fusion build recipes/sst2_minilm.yaml
	$(BIN)/fusion predict out/sst2-minilm/ensemble --text "a gorgeous, witty, seductive movie." \
		--text "the plot is nothing but boilerplate clichés."

lint: $(STAMP)
	$(BIN)/ruff check fusion recipes tests benchmarks

test: $(STAMP) lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) out .pytest_cache
