# make run: the worker on the embedded SQLite default.  make test: lint, type check, every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum requirements.txt | cut -d' ' -f1)

.PHONY: install lint typecheck test unit run clean

# The package itself is installed editable, so scripts and task modules outside the checkout import agent.scheduler.
$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet -e .
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/python -m pytest tests/ -k "schedule or scheduler"

unit: install
	$(BIN)/python -m pytest tests/unit -q

run: install
	$(BIN)/python worker.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache
