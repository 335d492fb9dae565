# Two entry points for a fresh clone: `make demo` (install + the main job) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install demo test lint

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

demo: install
	$(VENV)/bin/faceattr run

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff format --check src tests bench tools
	$(VENV)/bin/ruff check src tests bench tools
