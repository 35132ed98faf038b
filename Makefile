# art-backdoor-ext: `make test` and `make demo` create .venv when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev

.PHONY: test test-gpu demo lint bench-fast clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The suite runs on TEST_WORKERS processes (pytest-xdist), one torch thread each, a test file per worker at a time
# (--dist loadfile keeps each file's order and module fixtures); TEST_WORKERS=0 runs it in this process.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# On a CUDA machine: only the device-path cases (tests/devices), which the default suite skips without CUDA.
test-gpu: $(STAMP)
	$(PY) -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'test-gpu needs CUDA')"
	$(PY) -m pytest -q -m gpu

demo: $(STAMP)
	$(VENV)/bin/art-backdoor-ext demo

lint: $(STAMP)
	$(VENV)/bin/ruff check art_backdoor_ext tests examples tools
	$(VENV)/bin/mypy

bench-fast: $(STAMP)
	$(VENV)/bin/art-backdoor-ext bench all --profile fast

clean:
	rm -rf $(VENV) build *.egg-info
