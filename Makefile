# The two commands of the README are `make run` and `make test`; both build the environment first.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test test-deps clean

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

# The ssh evaluator test needs a real sshd on localhost (Debian's openssh-server); installed when running as root.
test-deps:
	@if [ "$$(id -u)" = 0 ] && [ ! -x /usr/sbin/sshd ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server >/dev/null; fi

test: setup test-deps
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs
