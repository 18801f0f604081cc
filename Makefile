# Two commands do everything on a fresh machine: `make demo` and `make test`
# (`make test-fast` is the quick tier while developing).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= out/demo

.PHONY: demo test test-fast test-stack lint install clean

# constraints.txt pins the versions checked together (pip's resolver backtracks for many
# minutes between s3fs/aiobotocore and moto/botocore without it).
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[test,s3]"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/covid-pipeline demo --out $(OUT)

lint: $(VENV)/.installed
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest

# The fast tier (a few minutes): the library, task logic, flow wiring on a temporary Prefect
# API with the in-process thread runner. `make test` (CI) runs everything.
test-fast: lint
	$(BIN)/python -m pytest -m "not slow"

# The Docker stack built and started for real (root, a Debian machine: installs docker.io),
# then a benchmark through it (tests/test_stack.py). CI runs it after `make test`.
test-stack: $(VENV)/.installed
	bash docker/ci/stack.sh up
	COVID_STACK=1 $(BIN)/python -m pytest -p no:cacheprovider tests/test_stack.py; \
	  rc=$$?; bash docker/ci/stack.sh down >/dev/null 2>&1; exit $$rc

clean:
	rm -rf $(VENV) out .pytest_cache
