# DeskPilot: `make run` and `make test` are the whole set-up on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU build of torch, installed first and pinned so nothing pulls a CUDA build.
TORCH_VERSION ?= 2.13.0
HOST ?= 127.0.0.1
PORT ?= 8000

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

PACKAGES := core tickets ingest knowledge agent delivery review app

.PHONY: install install-dev run test lint bench browser test-services llm llm-test-runtime clean

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.torch: | $(PY)
	$(PIP) install --quiet torch==$(TORCH_VERSION)
	touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.torch
	$(PIP) install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(PIP) install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

# Debian's chromium for the trace-viewer browser tests (the tests skip, saying why, where it cannot be had).
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
		|| echo "chromium not installed: browser tests will be skipped"; }

# Debian's Dovecot for the mailbox connector's tests, which start it themselves as an unprivileged process with a
# temporary configuration (they skip, saying why, where it cannot be had). Nothing is started here.
test-services:
	@test -x /usr/sbin/dovecot || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dovecot-imapd >/dev/null) \
		|| echo "dovecot-imapd not installed: the IMAP mailbox tests will be skipped"; }

run: install
	$(VENV)/bin/deskpilot serve --host $(HOST) --port $(PORT) --demo

# The local model (no API key, nothing leaves the machine): llama.cpp built once from its package and the verified
# weights, cached outside the repo in DESKPILOT_LLM_HOME (~/.cache/deskpilot/llm). `make llm` serves the default
# model on 127.0.0.1:8091 (first time: a 7-15 minute build); then `DESKPILOT_LLM=local make run` drafts with it.
#   make llm LLM_ARGS="--model qwen2.5-coder-0.5b --threads 2"
LLM_ARGS ?=
LLM_TEST_MODEL := smollm2-135m

llm: install
	$(VENV)/bin/deskpilot llm serve $(LLM_ARGS)

# The runtime and the small model the real-server tests use; the check is a fraction of a second once they exist.
llm-test-runtime: install
	@$(PY) -m app.local_llm ready $(LLM_TEST_MODEL) || \
		{ $(VENV)/bin/deskpilot llm build && $(VENV)/bin/deskpilot llm fetch $(LLM_TEST_MODEL); }

# Two pytest-xdist workers (one on a one-core machine), each with its own PostgreSQL and data folders: a file's tests
# stay on one worker, and the end-to-end files that start many processes against time limits run one after another
# (tests/conftest.py). In one process: make test PYTEST_ARGS="-p no:xdist" (or plain .venv/bin/pytest).
PYTEST_ARGS ?= -n auto --maxprocesses 2 --dist loadfile --no-loadscope-reorder

test: install-dev browser test-services llm-test-runtime
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# Style, formatting, the one-way layers ([tool.importlinter]), declared imports ([tool.deptry]: the packages may use
# only the runtime dependencies; tests/ and bench/ the dev extra too) and types.
lint: install-dev
	$(VENV)/bin/ruff check $(PACKAGES) tests bench
	$(VENV)/bin/ruff format --check $(PACKAGES) tests bench
	$(VENV)/bin/lint-imports
	$(VENV)/bin/deptry $(PACKAGES)
	$(VENV)/bin/deptry tests bench --exclude '\.venv' --ignore DEP002,DEP004
	$(VENV)/bin/mypy

# Runs every benchmark in bench/ and writes docs/benchmarks.md, one report with each ratio against its bare limit
# measured in the same run, which targets hold, and the machine's load around each benchmark (busy: said so).
# The report is written even when a benchmark misses its target (exit 1) or fails (exit 2).
#   make bench BENCH_ARGS=--quick    make bench BENCH_ARGS="--only ingest pipeline"    make bench SOAK_MINUTES=30
BENCH_ARGS ?=
SOAK_MINUTES ?=
bench: install-dev
	$(PY) bench/report.py $(if $(SOAK_MINUTES),--soak-minutes $(SOAK_MINUTES)) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .deskpilot .pytest_cache
