# The two commands a new user types: `make test` and `make simulate train evaluate`.
# Every target installs what it needs into .venv first.
PIPELINE ?= pipelines/default.toml
PYTHON   ?= python3
VENV     := .venv
BIN      := $(VENV)/bin
STAMP    := $(VENV)/.stamp
XS       := $(BIN)/xrayscatter
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: all install test simulate preview train train-resnet train-autoencoder evaluate predict bench tensorboard clean

all: simulate train evaluate

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

simulate: $(STAMP)
	$(XS) simulate run --pipeline $(PIPELINE)

preview: $(STAMP)
	$(XS) simulate preview --pipeline $(PIPELINE)

train: $(STAMP)
	$(XS) train resnet --pipeline $(PIPELINE)
	$(XS) train autoencoder --pipeline $(PIPELINE)

train-resnet: $(STAMP)
	$(XS) train resnet --pipeline $(PIPELINE)

train-autoencoder: $(STAMP)
	$(XS) train autoencoder --pipeline $(PIPELINE)

evaluate: $(STAMP)
	$(XS) evaluate --pipeline $(PIPELINE)

bench: $(STAMP)
	$(XS) bench simulate
	$(XS) bench train --pipeline pipelines/smoke.toml
	$(XS) bench features --pipeline pipelines/smoke.toml
	$(XS) bench evaluate
	$(XS) bench predict

tensorboard: $(STAMP)
	$(BIN)/tensorboard --logdir logs

clean:
	rm -rf tfrecords/*/ saved_models/*/ reports/*/ logs cache
