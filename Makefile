# The same steps CI runs (.ci/run), one at a time.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install format lint mypy compose test serve all

install:
	python3 -m venv $(VENV)
	$(BIN)/pip install -e '.[dev]'

format:
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

mypy:
	$(BIN)/mypy

compose:
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml docker-compose.sentinel.yml

test:
	$(BIN)/python -m pytest

serve:
	$(BIN)/queuenet serve

all: lint mypy compose test
