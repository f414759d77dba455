# Environments install the CPU torch 2.13.0 wheel first (an unpinned torch pulls a multi-GB CUDA build).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= out/demo

.PHONY: venv test predict benchmark clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -c constraints.txt -r requirements-dev.txt
	touch $(STAMP)

# Architecture rules (.importlinter), then the whole test suite, CPU-only.
test: venv
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q tests

# Main job on the built-in default input: a synthetic CT is written to $(DEMO_DIR)/inputs and segmented.
# Uses the shipped weights/; where weights/cascade.json is missing it first makes them with `make weights`.
predict: venv
	@if [ ! -f weights/cascade.json ]; then \
		echo "weights/cascade.json missing: training the cascade first (make weights)"; $(MAKE) weights; fi
	$(PY) -m inference --demo $(DEMO_DIR)

benchmark: venv
	$(PY) -m inference.benchmark

clean:
	rm -rf out .pytest_cache

# Build the container and run it like the organisers on synthetic cases (needs root; not part of `make test`).
.PHONY: docker-test
docker-test: venv
	bash docker/test_image.sh

# Regenerate the shipped weights/ from nothing: synthetic FLARE23-format data, the semi-supervised cascade
# recipe (steps 1-4, nnU-Net on the CPU), export, evaluation on held-out cases and the pseudo-label ablation.
# 90 to 130 minutes on the 2-core dev machines, which differ 1.7x in speed (measured, BENCHMARKS.md). Resumable: rerunning skips done
# steps; `rm -rf $(TRAIN_DIR)` starts over. Real FLARE23 on GPUs: see `python -m training --help` (preset paper).
TRAIN_DIR ?= out/train
.PHONY: weights
weights: venv
	$(PY) -m training --preset demo --make-data --data $(TRAIN_DIR)/data --work $(TRAIN_DIR)/work \
		--weights weights --ablation --threads 2 --parallel 2
