# Two commands do all set-up on a fresh machine:
#   make demo   — the main job on the embedded digits data
#   make test   — the test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
OUT ?= demo-out

.PHONY: demo test install bench clean

$(BIN)/unlearnctl: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -e ".[test]"
	touch $@

install: $(BIN)/unlearnctl

demo: install
	$(BIN)/unlearnctl demo --out $(OUT)

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) $(OUT)
