# pull-verify: every target a fresh Debian machine needs, as root (sudo otherwise).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
APT_PACKAGES := docker-registry nginx-light skopeo umoci apache2-utils chromium curl time containerd zstd
REQUIRED := /usr/bin/docker-registry /usr/sbin/nginx /usr/bin/skopeo /usr/bin/umoci /usr/bin/htpasswd /usr/bin/chromium /usr/bin/curl /usr/bin/time /usr/bin/containerd /usr/bin/ctr /usr/bin/zstd
PYTEST_ARGS ?=

.PHONY: all deps venv lint format test demo bench clean

all: test

# Real components the tests, demo and benchmarks run: installed from Debian, never mocked.
deps:
	@missing=""; for b in $(REQUIRED); do [ -x "$$b" ] || missing="$$missing $$b"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing (apt: $(APT_PACKAGES))"; \
	  if [ "$$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi; \
	  $$sudo apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -q $(APT_PACKAGES); \
	fi

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

venv: $(BIN)/.installed

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: deps venv lint
	$(BIN)/pytest $(PYTEST_ARGS)

demo: deps venv
	$(BIN)/python -m tests.kit.demo

# matplotlib (the `bench` extra) draws benchmarks/results/latest.png; uvloop is the fast loop.
bench: deps venv
	$(BIN)/pip install -q -e '.[dev,bench,fast]'
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
