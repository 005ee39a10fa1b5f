# Two entry points: `make demo` (the main job) and `make test`.
# Set-up makes its own virtual environment and installs the CPU torch wheel first, so that
# resolving pytorch-lightning does not pull a multi-GB CUDA build. Override for a GPU box:
#   make demo TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu124"
# or TORCH_SPEC= to keep whatever torch the resolver picks.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python

.PHONY: setup demo test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	if [ -n "$(TORCH_SPEC)" ]; then $(PY) -m pip install -q $(TORCH_SPEC); fi
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(PY) examples/demo.py --logdir runs

test: setup
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs lightning_logs .pytest_cache .hypothesis
