# The two set-up commands of the README: `make demo` and `make test`.
# Each creates the virtual environment on first use (torch==2.13.0 CPU first, then the project).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fedrec-installed

.PHONY: demo test lint env clean

$(STAMP): setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e '.[dev]'
	touch $(STAMP)

env: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fedrec demo

lint: $(STAMP)
	$(VENV)/bin/ruff check fedrec training serving benchmarks tests
	$(VENV)/bin/mypy fedrec

test: lint
	$(VENV)/bin/pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) build *.egg-info
