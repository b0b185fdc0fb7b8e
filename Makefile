# Two commands matter: `make run` and `make test`. Both create .venv when it is missing.
# `make run PORT=8300 HOST=0.0.0.0` serves the API elsewhere; `make demo` adds the demo.
PYTHON ?= python3
HOST ?= 127.0.0.1
PORT ?= 8000
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: run demo test fuzz lint bench bench-api clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

run: $(STAMP)
	$(BIN)/retl up --host $(HOST) --port $(PORT)

demo: $(STAMP)
	$(BIN)/retl up --demo --host $(HOST) --port $(PORT)

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q $(PYTEST_ARGS)

# The schemathesis run of tests/api/test_fuzz.py, deeper than the one `make test` includes.
fuzz: $(STAMP)
	RETL_FUZZ_EXAMPLES=300 $(BIN)/python -m pytest -n 2 -q tests/api/test_fuzz.py

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python bench/run.py

bench-api: $(STAMP)
	$(BIN)/python bench/load.py

clean:
	rm -rf $(VENV) .retl .pytest_cache
