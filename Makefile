# The README's two commands: `make demo` and `make test`. Both bootstrap .venv from nothing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PYTHONUNBUFFERED := 1

.PHONY: demo test test-fast deps bench bench-quick soak lint compose-check clean browser-test api-load venv-check

# Python >= 3.11 (pyproject's requires-python). A .venv whose interpreter is older, or gone (a system
# upgrade), is rebuilt, saying so in one line, instead of being reused until something breaks.
OLDER_THAN_311 := import sys; sys.exit(sys.version_info < (3, 11))
venv-check:
	@$(PYTHON) -c '$(OLDER_THAN_311)' 2>/dev/null || { echo "error: cryptobt needs Python >= 3.11; $(PYTHON) is $$(command -v $(PYTHON) >/dev/null && $(PYTHON) -V 2>&1 || echo "not found"): install 3.11 or newer and run: make PYTHON=python3.11 ..." >&2; exit 1; }
	@if [ -e $(VENV) ] && ! $(PY) -c '$(OLDER_THAN_311)' 2>/dev/null; then echo "$(VENV) was made by $$($(PY) -V 2>/dev/null || echo "a Python that no longer runs") (not a working Python >= 3.11): rebuilding it with $$($(PYTHON) -V)"; rm -rf $(VENV); fi

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	rm -f $(VENV)/.installed-* && touch $(STAMP)

demo: venv-check $(STAMP)
	$(VENV)/bin/cryptobt demo

# Two xdist workers: most tests wait on subprocesses, PostgreSQL, Prefect or sleeps, so one worker left a
# 2-core machine half idle. Each worker has its own PostgreSQL databases, Redis key prefix, temporary folders
# and free ports (tests/conftest.py). Work stealing, not a file per worker (loadfile): the docs pages and the
# other slow files no longer end the run on one worker while the other idles (2026-12-06: 864 s with
# loadfile, 740 s with worksteal; a module's fixtures may be built once per worker).
test: venv-check $(STAMP)
	$(VENV)/bin/ruff check pipeline flows tests bench
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -n 2 --dist worksteal

# The edit-run loop: the unit tests that need no server and spawn no CLI (markers in tests/conftest.py and
# pyproject), under a minute on 2 cores once numba's cache is warm. `make test` stays the full suite.
test-fast: venv-check $(STAMP)
	$(PY) -m pytest -n 2 -q -m "not services and not slow" --durations=5

bench: $(STAMP)
	$(PY) -m pip install -q -e ".[test,bench]"
	$(PY) -m bench.run
	$(PY) -m bench.profile_sweep

bench-quick: $(STAMP)
	$(PY) -m bench.run --quick

# An hour of mixed load (imports, exports, backtests, sweeps, vacuum, invalidations); writes bench/SOAK.md.
soak: $(STAMP)
	$(PY) -m bench.soak --minutes 60

# Validates docker-compose.yml with Debian's docker-compose (skips, saying why, when it is not installed).
compose-check: $(STAMP)
	$(PY) -m pytest -q -rs tests/test_compose.py

# The dashboard and /docs in Debian's headless chromium (apt packages chromium + chromium-driver; pip
# selenium). Nothing downloads a browser. Screenshots go to a temporary folder (their paths are
# printed); CRYPTOBT_SCREENSHOT=$PWD/docs/dashboard.png make browser-test refreshes the README's.
browser-test: venv-check $(STAMP)
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		(apt-get update && apt-get install -y chromium chromium-driver)
	$(PY) -m pip install -q -e ".[test,browser]"
	$(PY) -m pytest -s tests/test_dashboard_browser.py tests/test_api_docs.py

# Loopback load on `cryptobt api`: 50 concurrent stream clients, 200 cached single-symbol requests.
api-load: $(STAMP)
	$(PY) -m bench.api_load

lint: $(STAMP)
	$(VENV)/bin/ruff check pipeline flows tests bench

clean:
	rm -rf $(VENV) .prefect .pytest_cache data/lake data/results data/trades data/runs out

# The import graph, drawn from the code (pydeps; needs Graphviz's `dot`): docs/architecture.svg.
deps: $(STAMP)
	command -v dot >/dev/null || (apt-get update && apt-get install -y graphviz)
	$(VENV)/bin/pydeps pipeline --only pipeline flows --max-module-depth 2 --rankdir TB --max-bacon 0 --noshow -T svg -o docs/architecture.svg
	$(VENV)/bin/pydeps pipeline --only pipeline flows --rankdir TB --max-bacon 0 --noshow -T svg -o docs/modules.svg
