# The two commands a new user types (README): `make demo` and `make test`.
# Each sets up .venv on its own: CPU torch first and pinned (a plain `pip install torch`
# would pull a multi-GB CUDA build), then speechft with the extras it needs.
# GPU users: TORCH_SPEC='torch==2.13.0' TORCH_INDEX=<your CUDA wheel index> make demo
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PIP = $(VENV)/bin/python -m pip
BIN = $(VENV)/bin

.PHONY: demo test setup setup-dev clean

$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	touch $@

$(VENV)/.speechft: $(VENV)/.torch pyproject.toml constraints.txt
	$(PIP) install -q -c constraints.txt -e ".[default]"
	touch $@

$(VENV)/.speechft-dev: $(VENV)/.speechft
	$(PIP) install -q -c constraints.txt -e ".[default,dev]"
	touch $@

setup: $(VENV)/.speechft
setup-dev: $(VENV)/.speechft-dev

demo: setup
	$(BIN)/speechft demo $(DEMO_ARGS)

# ruff first (lint + format check: seconds), then the suite. pytest exits 5 when it collects nothing:
# a suite that runs no test is a failure here.
test: setup-dev
	$(BIN)/ruff check speechft tests benchmarks
	$(BIN)/ruff format --check speechft tests benchmarks
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

clean:
	rm -rf $(VENV) .pytest_cache
