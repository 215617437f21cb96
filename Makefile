# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# .venv is (re)built when missing or when pyproject.toml is newer than its stamp.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   := runs/demo

.PHONY: demo test lint docs bench clean device-wheels

$(STAMP): pyproject.toml
	@test -x $(BIN)/python && $(BIN)/python -c "import sys" 2>/dev/null || $(PYTHON) -m venv --clear $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/walkthrough.py --out $(DEMO)

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check auxgen pipelines tests benchmarks examples

# The docs site (mkdocs.yml), into site/; --strict as CI builds it: a broken link, anchor or API reference fails.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

bench: $(STAMP)
	$(BIN)/python benchmarks/step_cost.py

# Wheels the GPU machine lacks (it has no internet; its python3 is 3.12 with torch, numpy and pyyaml but no
# webdataset), carried by the device tool's `run` (carry [".device-wheels"]); see docs/benchmarks.md, Devices.
# Both are pure Python; webdataset's other needs (numpy, pyyaml) are there already.
DEVICE_WHEELS := .device-wheels
device-wheels:
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux2014_x86_64 -d $(DEVICE_WHEELS) webdataset==1.0.2 braceexpand==0.1.7
	@ls $(DEVICE_WHEELS)

clean:
	rm -rf $(VENV) runs site .pytest_cache
