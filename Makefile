# Set-up and the README's two commands. `make run` and `make test` create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch (a few hundred MB). On a GPU machine: make setup TORCH_SPEC=torch
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: setup run test lock clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements.lock -e ".[test]"
	touch $@

run: setup
	$(BIN)/synthmix run

# Two test processes: the end-to-end tests spend most of their time waiting on Ray process
# start-up, so two overlap well even on 2 cores (TEST_WORKERS=0 runs them in this process).
TEST_WORKERS ?= 2

test: setup
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal

# Refresh the constraint file after changing dependencies (torch is left to TORCH_SPEC).
lock: setup
	$(BIN)/python -m pip freeze --exclude-editable | grep -viE '^(torch|nvidia-|triton)' > requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
