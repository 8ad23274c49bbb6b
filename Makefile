# Two commands do all set-up on a fresh machine:
#   make demo   — the main job on the embedded digits data
#   make test   — the test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
OUT ?= demo-out
JOBS ?= 2
BENCH_MODELS ?= bench-models

.PHONY: demo test install bench clean

$(BIN)/unlearnctl: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -e ".[test]"
	touch $@

install: $(BIN)/unlearnctl

demo: install
	$(BIN)/unlearnctl demo --jobs $(JOBS) --out $(OUT)

test: install
	$(BIN)/python -m pytest -q

# the benchmarks' shared base models: the default `train` recipe (about 5 minutes each on 2 cores)
$(BENCH_MODELS)/digits-cond-small.safetensors: | install
	mkdir -p $(BENCH_MODELS)
	$(BIN)/unlearnctl train --data digits --conditional --out $@

$(BENCH_MODELS)/canary-uncond-small.safetensors: | install
	mkdir -p $(BENCH_MODELS)
	$(BIN)/unlearnctl train --data digits+canary --unconditional --out $@

bench: install $(BENCH_MODELS)/digits-cond-small.safetensors $(BENCH_MODELS)/canary-uncond-small.safetensors
	UNLEARNCTL_BENCH_MODELS=$(BENCH_MODELS) $(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) $(OUT)
