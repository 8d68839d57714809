# The two quick-start commands: `make up` (run the stack) and `make test` (run the tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: up test lint clean

$(BIN)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("chatbus needs Python 3.11 or newer" if sys.version_info < (3, 11) else 0)'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

up: $(BIN)/.installed
	$(BIN)/chatbus up

test: $(BIN)/.installed
	$(BIN)/python -m pytest

lint: $(BIN)/.installed
	$(BIN)/ruff check contracts services chatbus_client tests
	$(BIN)/mypy contracts services chatbus_client

clean:
	rm -rf $(VENV) .chatbus .pytest_cache .mypy_cache .ruff_cache
