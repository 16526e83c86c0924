# lorastudy: `make mini` runs the offline study and builds the book; `make test` runs the tests.
# Both set up .venv first when needed (Python 3.10+ with venv; pip reaches PyPI).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PROFILE ?= mini
STAMP  := $(VENV)/.installed

.PHONY: setup browser allocator lint test test-slow test-all mutation mini tiny book reproduce sweep clean help

help:
	@echo "make setup | lint | test | test-slow | test-all | mutation [MODULES=..] | mini | tiny | book [PROFILE=..] | reproduce PROFILE=.. | clean"

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --no-compile -c requirements.lock -e '.[dev]'  # .pyc on first import: 22 s, not 58
	touch $(STAMP)

setup: $(STAMP)

# Debian's chromium for the book's headless image check; best effort (the check skips without it)
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ; } || \
	  echo "chromium not installed: the headless book check will be skipped"

# Debian's tcmalloc, preloaded into training and evaluation (lorastudy/engine/allocator.py: 12-17% faster training on
# CPU, the same numbers); best effort: without it glibc's malloc is used
allocator: $(STAMP)
	@$(BIN)/python -c "from lorastudy.engine.allocator import find_tcmalloc as f; raise SystemExit(f() is None)" 2>/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libtcmalloc-minimal4 >/dev/null) ; } || \
	  echo "tcmalloc not installed: training uses glibc's malloc (same numbers, slower)"

lint: $(STAMP)
	$(BIN)/ruff check src tests scripts

# the fast behavioural set (about 10 minutes on 2 cores); the end-to-end sweeps are marked slow
test: $(STAMP) browser allocator
	$(BIN)/python -m pytest -q

test-slow: $(STAMP) browser allocator
	$(BIN)/python -m pytest -q --run-slow -m slow

test-all: $(STAMP) browser allocator
	$(BIN)/python -m pytest -q --run-slow

# Opt-in, not in CI nor in `make test`: mutmut over the core modules, each with its own tests only, one module
# after the other; prints the kill rate per module (outputs/mutation/summary.md). About an hour on 2 cores;
# MODULES="io config" for some, MUTATION_JOBS=2 for two mutants at a time.
MODULES ?=
MUTATION_JOBS ?= 1
mutation: $(STAMP)
	$(BIN)/python scripts/mutation.py $(MODULES) --jobs $(MUTATION_JOBS)

sweep: $(STAMP) allocator
	$(BIN)/lorastudy sweep $(PROFILE) --continue-on-error

book: $(STAMP)
	$(BIN)/lorastudy book $(PROFILE)

mini: $(STAMP) allocator
	$(BIN)/lorastudy sweep mini --continue-on-error
	$(BIN)/lorastudy book mini

tiny: $(STAMP) allocator
	$(BIN)/lorastudy sweep tiny --continue-on-error
	$(BIN)/lorastudy book tiny

reproduce: $(STAMP) allocator
	$(BIN)/lorastudy check $(PROFILE)
	$(BIN)/lorastudy sweep $(PROFILE) --continue-on-error
	$(BIN)/lorastudy book $(PROFILE)

clean:
	rm -rf outputs book/_build
