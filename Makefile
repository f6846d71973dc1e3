# The two commands a new user runs: `make demo` and `make test`. Every target makes .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-integration lint bench soak format clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples
	$(BIN)/mypy

# pytest exits 5 when it collects nothing: that is a failure here, as any non-zero code is
# (with -n too). A third of the suite's time is waiting on subprocesses and sandboxes, so one
# worker per core halves it (2 cores: about 6 minutes instead of 12).
test: lint
	$(BIN)/python -m pytest -q -p no:cacheprovider -n auto

# Against a real llama.cpp server and model (docs/integration.md). The first run builds them
# (about 6 minutes) into ~/.cache/rowprompt-integration; later runs reuse them.
test-integration: $(STAMP)
	PY=$(PY) scripts/integration_env.sh
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/integration

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

# The long reliability campaigns (crash anywhere, faults, fuzz); figures in docs/reliability.md.
soak: $(STAMP)
	$(BIN)/python bench/soak.py

format: $(STAMP)
	$(BIN)/ruff format src tests bench examples
	$(BIN)/ruff check --fix src tests bench examples

clean:
	rm -rf $(VENV) build dist src/*.egg-info .rowprompt
