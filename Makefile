# Two targets: `make demo` and `make test`. Each creates .venv when missing and installs
# what it needs, so a fresh machine needs only python3.
PYTHON ?= python3
VENV ?= .venv
# The CPU wheel of torch; on a GPU machine use e.g. `make test TORCH=torch`.
TORCH ?= torch==2.13.0
# `make test` runs pytest twice: pytest-xdist spreads the single-threaded tests over one worker
# per logical CPU (each test file on one worker, so a module's fixtures are built once), then the
# tests marked `multicore` (two threads or two processes of their own) run alone, so they keep the
# cores they were written for. TEST_WORKERS=0 runs the first part in pytest's own process.
TEST_WORKERS ?= logical
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check

.PHONY: demo test install

$(PY):
	$(PYTHON) -m venv $(VENV)

# Dependencies change rarely: installed once, redone when pyproject.toml changes.
$(VENV)/.deps: pyproject.toml | $(PY)
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q hatchling ".[test]"
	touch $@

# The package itself is reinstalled every time (a real wheel install, so the
# relspec_lmeval_hook.pth that plugs us into lm_eval is what users get).
install: $(VENV)/.deps
	$(PIP) install -q --no-deps --no-build-isolation --force-reinstall .

demo: install
	$(PY) scripts/demo.py

test: install
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not multicore"
	$(PY) -m pytest -q -m multicore
