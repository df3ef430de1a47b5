# The two commands of the README are `make run` and `make test`; both build the environment first.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test clean

setup: $(STAMP)

# Pinned stack from requirements.lock; onnx2tf 1.29.24 hard-pins an older numpy/tensorflow,
# so it goes in with --no-deps on top of the stack (see shared TOOLCHAIN facts).
$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps onnx2tf==1.29.24
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

run: setup
	$(BIN)/mobilereid pipeline

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs
