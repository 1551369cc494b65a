# The two commands (README): `make demo` runs the main job, `make test` runs the tests.
# Both install what they need first and are safe to run twice.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install system-deps demo up test test-unit soak cluster-test check bench bench-quick clean

install: system-deps $(VENV)/.installed .stafet/kafka-libs/.resolved

system-deps:
	@bash deploy/install-system-deps.sh

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

.stafet/kafka-libs/.resolved: deploy/kafka/pom.xml $(VENV)/.installed
	$(BIN)/stafet kafka fetch

demo: install
	$(BIN)/stafet demo

up: install
	$(BIN)/stafet up

test: install
	$(BIN)/pytest -q

test-unit: install
	$(BIN)/pytest -q -m "not integration"

soak: install
	$(BIN)/pytest -q -s -m soak

# a 3-broker KRaft cluster: the leaders of the ingest and output partitions, then the active
# controller, SIGKILLed and restarted under MLLP load; every AA'd message notified exactly once
cluster-test: install
	$(BIN)/pytest -q -s -m cluster

# what an engineer runs before pushing (and .ci/run before the tests): lint + format + types,
# settings in pyproject.toml; `ruff format .` fixes the format
$(VENV)/.check-installed: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[test,check]'
	touch $@

check: $(VENV)/.check-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy stafet streams connectors schemas demo

$(VENV)/.bench-installed: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[test,bench]'
	touch $@

bench: install $(VENV)/.bench-installed
	$(BIN)/python -m bench.run

bench-quick: install $(VENV)/.bench-installed
	$(BIN)/python -m bench.run --quick

clean:
	-$(BIN)/stafet kafka stop
	rm -rf .stafet
