# The two commands of the README are `make run` and `make test`; both build the environment first.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test test-fast lint docs test-deps clean

setup: $(STAMP)

# Pinned stack from requirements.lock; onnx2tf 1.29.24 hard-pins an older numpy/tensorflow,
# so it goes in with --no-deps on top of the stack (see shared TOOLCHAIN facts).
$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q --no-compile -r requirements.lock
	$(BIN)/python -m pip install -q --no-compile --no-deps onnx2tf==1.29.24
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	@# byte-compile what pip installed on every core (pip compiles file by file on one); a file some package ships
	@# that is not Python 3 (templates, test data) does not compile, which is harmless, hence the `|| true`
	$(BIN)/python -m compileall -q -q -j 0 $(VENV)/lib >/dev/null || true
	touch $(STAMP)

run: setup
	$(BIN)/mobilereid pipeline

KOTLINC := android_demo/tools/node_modules/kotlin-compiler/bin/kotlinc

# System tools the tests use, installed when running as root: a real sshd on localhost for the ssh evaluator
# (Debian's openssh-server), JUnit 5's console launcher (Debian's junit5) and a JDK for the Android demo's Kotlin
# core, a headless browser that opens report.html (Debian's chromium); the Kotlin compiler itself comes from npm, pinned by android_demo/tools/package-lock.json; the emulated
# arm64 board (debootstrap + qemu-user 10 from Debian, aarch64 wheels from PyPI).
test-deps: setup $(KOTLINC)
	@missing=""; \
	[ -x /usr/sbin/sshd ] || missing="$$missing openssh-server"; \
	[ -f /usr/share/java/junit-platform-console-standalone.jar ] || missing="$$missing junit5"; \
	command -v javac >/dev/null || missing="$$missing default-jdk-headless"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi
	@# the emulated arm64 board (tests/test_arm64.py): built once into ~/.cache/mobilereid/arm64 (~8 min, ~450 MB),
	@# reused afterwards; without root or binfmt_misc its tests are skipped and say why
	@if [ "$$(id -u)" = 0 ] && [ "$$(uname -m)" = x86_64 ] && command -v apt-get >/dev/null; then \
		$(BIN)/mobilereid board setup arm64 || echo "warning: the emulated arm64 board could not be set up; tests/test_arm64.py will skip"; fi

$(KOTLINC): android_demo/tools/package-lock.json
	cd android_demo/tools && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# two workers, one test file each at a time (module fixtures that share exported artifacts stay in one worker), the
# files in the order of tests/conftest.py (longest first)
test: setup test-deps
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

# the edit loop: everything but the converter and end-to-end tests (CI runs `make lint` and the whole `make test`)
test-fast: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder -m "not convert and not e2e"

# ruff check + format check (line length 120, pyproject.toml), and the generated reference pages of docs/ in date
lint: setup
	$(BIN)/ruff check mobilereid tests scripts
	$(BIN)/ruff format --check mobilereid tests scripts
	$(BIN)/python scripts/gen_docs.py --check

# rewrite the generated docs pages (cli, pipeline-config, recipes, targets) from the code
docs: setup
	$(BIN)/python scripts/gen_docs.py

clean:
	rm -rf $(VENV) runs
