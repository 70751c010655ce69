# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# .venv gets deqflow with the `train`, `serve`, `dev` and `debug` extras (`pip install deqflow` alone is the
# torch-free runtime);
# the CPU build of PyTorch is installed first unless CUDA=1 (then pip picks the default, CUDA, build).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
# Extra pip options for torch, e.g. TORCH_PIP_ARGS="--index-url <PyTorch CPU wheel index>" elsewhere.
TORCH_PIP_ARGS ?=
CUDA ?= 0
PYTEST_WORKERS ?= 2

STAMP := $(VENV)/.deqflow-installed

.PHONY: install test test-fast test-install demo lint clean bench

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	if [ "$(CUDA)" = "1" ]; then \
	  $(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)" $(TORCH_PIP_ARGS) || $(BIN)/python -m pip install --quiet torch; \
	else \
	  $(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)" $(TORCH_PIP_ARGS); \
	fi
	$(BIN)/python -m pip install --quiet -e ".[train,serve,dev,debug]"
	touch $(STAMP)

# Three runs: tests/torchfree with `import torch` blocked (the torch-free packages on a machine without
# PyTorch), the runtime-only install (test-install), then everything. test-fast leaves out the tests marked slow
# and the install check.
test: $(STAMP)
	$(BIN)/python -m pytest -q --torch-free tests
	$(BIN)/python scripts/check_runtime_install.py
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q --torch-free tests
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile -m "not slow" tests

# `pip install .` with no extras into a fresh build/runtime-venv: no torch there, and infer / compare --golden /
# bench run on the committed tiny export (scripts/check_runtime_install.py).
test-install: $(STAMP)
	$(BIN)/python scripts/check_runtime_install.py

demo: $(STAMP)
	$(BIN)/deqflow demo

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python scripts/bench_export.py

clean:
	rm -rf $(VENV) build dist *.egg-info outputs
