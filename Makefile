# Everything installs itself: on a fresh machine with only python3, `make test` is enough.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: all test test-slow lint typecheck pytest docs demo bench clean

all: test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check midvary tests benchmarks
	$(BIN)/ruff format --check midvary tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy midvary tests/typing_check.py

## The suite on PYTEST_WORKERS processes (pytest-xdist; 0 runs it in this process, serially).
## 4 on 2 cores: the tests mostly wait on sockets and subprocesses. worksteal: the long
## campaigns are not left to one worker at the end.
## Bytecode is written even where PYTHONDONTWRITEBYTECODE is set (git ignores __pycache__):
## otherwise each worker rewrites and compiles every test module, and each of the suite's
## subprocesses (the CLI, workers, the fake server) compiles midvary again.
PYTEST_WORKERS ?= 4
pytest: $(STAMP)
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest -m "not slow" -n $(PYTEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

## The documentation site, built strictly (a broken link or reference fails); output in .site/.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

## The README's test command: lint, strict typing, the suite with warnings as errors, the docs.
## The four run at once (the suite mostly waits; the others are a few seconds of CPU); make
## exits non-zero if any fails.
test: $(STAMP)
	$(MAKE) --no-print-directory -j4 lint typecheck pytest docs

## Large reliability campaigns (not part of `make test`).
test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

## The main job, offline, against the in-process fake provider. It needs only midvary[cli],
## so it gets a small venv of its own rather than the whole dev toolchain.
DEMO_VENV := .venv-demo
$(DEMO_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(DEMO_VENV)
	$(DEMO_VENV)/bin/python -m pip install --quiet -e ".[cli]"
	touch $@

demo: $(DEMO_VENV)/.installed
	$(DEMO_VENV)/bin/midvary demo

## Benchmarks report figures; they are never tests.
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[dev,bench]"
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) $(DEMO_VENV) .mypy_cache .ruff_cache .pytest_cache .site midvary-demo
