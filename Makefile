# nodekit developer targets. Every target creates .venv if it is missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)

.PHONY: install demo test test-slow bench docs clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	rm -f $(VENV)/.installed-*; touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/nodekit train configs/spiral.yaml --workdir runs/spiral
	@echo "summary: runs/spiral/summary.json"
	@echo "plots:   runs/spiral/plots/trajectory.png  runs/spiral/plots/loss.png"

test: install
	$(BIN)/python -m pytest -n 2 -q

test-slow: install
	$(BIN)/python -m pytest -n 2 -q -m slow

bench: install
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[bench]'
	$(BIN)/python -m benchmarks.run_all

# The documentation site: installs the docs extra (pinned by constraints.txt), then builds
# site/ with --strict (a broken link, a missing reference, a config key without a
# description or a troubleshooting example that no longer raises its message fails it).
# Offline: no web fonts, no CDN, nothing fetched at build time.
DOCS_STAMP := $(VENV)/.docs-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)

$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[docs]'
	rm -f $(VENV)/.docs-*; touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	$(BIN)/python -m pytest -q -n 0 -m docs tests/test_docs.py
	NO_MKDOCS_2_WARNING=1 JAX_PLATFORMS=cpu $(BIN)/mkdocs build --strict --site-dir site
	@echo "site: site/index.html"

clean:
	rm -rf $(VENV) runs .pytest_cache site
