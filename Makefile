# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
DEMO_ARGS ?= --fast

.PHONY: demo test venv data bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: the CPU wheel on disk; anything later that asks for torch is then satisfied.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

data: $(STAMP)
	$(VENV)/bin/medfake data fetch

demo: $(STAMP)
	$(VENV)/bin/medfake data fetch
	$(VENV)/bin/medfake demo $(DEMO_ARGS)

test: $(STAMP)
	$(VENV)/bin/medfake data fetch
	$(PY) -m pytest -q

bench: $(STAMP)
	for f in benchmarks/*.py; do $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
