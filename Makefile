# The README's two commands. Each sets up what it needs (system packages, .venv) first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test setup system-deps lint bench clean

demo: setup
	$(BIN)/dfstream demo

test: setup
	$(BIN)/pytest $(PYTEST_ARGS)

setup: system-deps $(STAMP)
	$(BIN)/dfstream models pull retinaface-mobilenet0.25

system-deps:
	@./scripts/install_system_deps.sh

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

lint: setup
	$(BIN)/ruff check stream engines tests scripts
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
