# make run   : installs what is needed (venv, requirements, Fashion-MNIST) and trains the default supernet
# make test  : installs what is needed and runs the test suite
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: run test test-slow lint data cluster setup clean

setup: $(STAMP) data cluster

# A one-node SLURM cluster for the cluster tests (tests/slurm_cluster.py starts and stops it):
# Debian's packages where apt can be used as root; otherwise those tests skip and say why.
SLURM_PACKAGES := slurmctld slurmd slurm-client munge
cluster:
	@if ! command -v slurmctld >/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SLURM_PACKAGES) >/dev/null 2>&1 || \
		 (apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SLURM_PACKAGES) >/dev/null 2>&1)) || \
		echo "note: could not install $(SLURM_PACKAGES) with apt; the SLURM tests will skip"; \
	fi

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt 2>&1 | { grep -v "is ignored" || true; }
	$(PY) -c "import torch, torchvision, pytorch_lightning, hydra, torchmetrics, onnx, onnxruntime, onnxscript"
	touch $(STAMP)

# Fashion-MNIST from Debian where apt can be used as root; otherwise train.py falls back to a
# torchvision download (or dataset.data_dir=...).
data:
	@if [ ! -d $(FMNIST) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
		 (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1)) || \
		echo "note: could not install dataset-fashion-mnist with apt; train.py will try a download"; \
	fi

# The main job: train a strictly fair supernet, then search it (NSGA-II) and write best.yaml.
RUN_DIR := outputs/make-run/$(shell date +%Y-%m-%d_%H-%M-%S)
run: setup
	$(PY) train.py hydra.run.dir=$(RUN_DIR)
	$(PY) search.py ckpt_path=$(RUN_DIR)/checkpoints/last.ckpt hydra.run.dir=$(RUN_DIR)/search
	@echo "supernet: $(RUN_DIR)   search results: $(RUN_DIR)/search (best.yaml, pareto.png)"

test: setup
	$(PY) -m pytest -q -n auto --dist worksteal --durations=10

test-slow: setup
	$(PY) -m pytest -q -m slow

lint: setup
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

clean:
	rm -rf outputs multirun .pytest_cache
