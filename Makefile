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
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup --no-loadscope-reorder --durations=25 tests

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

# Every bench, then one table of every ratio against its target: reports/bench/bench.md and bench.json.
# What the benches need (smoke data, a smoke model, bench data sets) is made under reports/bench/work,
# never in tfrecords/ or saved_models/. The default model is measured too when saved_models/ has one.
BENCH := reports/bench
bench: $(STAMP)
	mkdir -p $(BENCH) && rm -f $(BENCH)/*.json
	$(XS) bench prepare --work-dir $(BENCH)/work
	$(XS) bench simulate --seconds 4 --json $(BENCH)/simulate.json
	$(XS) bench input --work-dir $(BENCH)/work --json $(BENCH)/input.json
	$(XS) bench train --pipeline pipelines/default.toml --work-dir $(BENCH)/work --seconds 15 --json $(BENCH)/train.json
	$(XS) bench features --pipeline pipelines/default.toml --json $(BENCH)/features.json
	$(XS) bench evaluate --folds 1 --no-compare --json $(BENCH)/evaluate.json
	$(XS) bench predict --model $(BENCH)/work/saved_models/smoke/resnet --model saved_models/resnet --json $(BENCH)/predict.json
	$(XS) bench report --folder $(BENCH)

tensorboard: $(STAMP)
	$(BIN)/tensorboard --logdir logs

clean:
	rm -rf tfrecords/*/ saved_models/*/ reports/*/ logs cache
