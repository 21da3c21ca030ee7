# Two set-up commands: `make install` then `make test`. Every installed version comes from lock/ (`make lock`).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
# GPU=1: the CUDA install (lock/gpu.txt: PyPI's CUDA torch, torchvision, qwen-vl-utils) instead of lock/cpu.txt.
GPU ?=
LOCK := lock/$(if $(filter 1 yes true,$(GPU)),gpu,cpu).txt
# Where the CPU build of torch (torch-2.13.0+cpu) is found: a local folder on the project's machines, the
# PyTorch CPU index elsewhere (`make install WHEELS=https://download.pytorch.org/whl/cpu/torch/`).
WHEELS ?= /opt/wheels
FIND_LINKS := $(if $(filter 1 yes true,$(GPU)),,--find-links $(WHEELS))
# uv reads neither pip.conf nor PIP_* variables; the lock's hashes are checked on every file.
UV_FLAGS := --python $(PY) --no-config

.PHONY: install lock lock-check lint test test-fast test-trained golden clean bench

install:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --isolated --disable-pip-version-check --no-deps --require-hashes -r lock/uv.txt
	$(UV) pip sync $(UV_FLAGS) --require-hashes $(FIND_LINKS) $(LOCK) lock/no-deps.txt
	$(UV) pip install $(UV_FLAGS) --no-deps --no-build-isolation -e .

# Re-resolve the locks after a change to pyproject.toml or lock/*.in, keeping every pin that still fits;
# `make lock UPGRADE=1` moves every package to its newest allowed release. Then `make install && make test`.
UPGRADE ?=
LOCK_OUT ?= lock
LOCK_FLAGS = --no-config --python-version 3.11 --python-platform x86_64-manylinux_2_28 --generate-hashes \
	--quiet --custom-compile-command "make lock" $(if $(filter 1 yes true,$(UPGRADE)),--upgrade)
lock:
	$(UV) pip compile $(LOCK_FLAGS) pyproject.toml lock/cpu.in --extra test --extra audio --extra cluster \
		--find-links $(WHEELS) -o $(LOCK_OUT)/cpu.txt
	$(UV) pip compile $(LOCK_FLAGS) pyproject.toml lock/gpu.in --extra test --extra audio --extra cluster --extra gpu \
		-o $(LOCK_OUT)/gpu.txt
	$(UV) pip compile $(LOCK_FLAGS) lock/no-deps.in --no-deps -o $(LOCK_OUT)/no-deps.txt
	$(UV) pip compile $(LOCK_FLAGS) lock/uv.in -o $(LOCK_OUT)/uv.txt

# Fails when pyproject.toml or lock/*.in ask for something the committed locks do not pin (asks PyPI; the
# offline half of this check is tests/repo/test_lock.py).
lock-check:
	@tmp=$$(mktemp -d) && cp lock/*.txt $$tmp/ && $(MAKE) -s lock LOCK_OUT=$$tmp && \
	if diff -r -x '*.in' lock $$tmp >/dev/null; then echo "lock/ matches pyproject.toml and lock/*.in"; rm -rf $$tmp; \
	else diff -r -x '*.in' lock $$tmp | grep '^[<>] [a-z]'; rm -rf $$tmp; \
	echo "error: lock/ is out of date: run 'make lock' and commit lock/"; exit 1; fi

# ruff (settings in pyproject.toml); part of `make test`, so CI keeps it clean
lint:
	$(VENV)/bin/ruff check .

# everything: lint, then the whole suite (golden checks included)
test: lint
	$(PY) -m pytest -q

test-fast:
	$(PY) -m pytest -q -m "not slow and not golden"

# The trained tiny LLaVA-NeXT end to end, alone (a fresh build of its recipe, trained once into ~/.cache/tamp and
# evaluated dense, then a sweep of the shipped weights through the harness); part of `make test` too
test-trained:
	$(PY) -m pytest -q -m trained

# Golden checks of every method's pruned weights (tests/golden/pruned_weights.json: masks and values within what
# rounding can move on any CPU, tests/golden_weights.py), alone (~5 min); `make test` runs them too.
golden:
	$(PY) -m pytest -q -m golden

clean:
	rm -rf $(VENV) build *.egg-info

SIZE ?= cpu
bench:
	$(PY) -m bench.run --size $(SIZE)

# One prepared GPU check (docs/benchmarks.md, "GPU check"; bench/README.md): CUDA tests, bench --size 8b, the tokens
# section at 7B shapes, batched throughput; at most 8 minutes on one H100, each part under its own time limit; one
# JSON under results/bench/ and a table. DRY=1: the same code at tiny sizes on the CPU, the JSON under out/gpu-check/
# (part of `make test`: tests/bench/test_gpu_check.py). PARTS=bench-8b,... runs a subset.
DRY ?=
PARTS ?=
.PHONY: gpu-check
gpu-check:
	$(PY) -m bench.gpu_check $(if $(filter 1 yes true,$(DRY)),--dry) $(if $(PARTS),--parts $(PARTS))

# The paper's main table (grids/table1.yaml): `make reproduce-table1 DRY_RUN=1` prints the plan only.
# LIMIT=N evaluates the first N documents of each task (a quick look; records are kept apart).
# EXECUTOR=ray|slurm spreads the cells over a Ray cluster or SLURM jobs (docs/harness.md, "Grids on a cluster");
# CLUSTER_FLAGS passes more, e.g. CLUSTER_FLAGS="--partition gpu --time 600" or "--ray-address auto".
DRY_RUN ?=
LIMIT ?=
EXECUTOR ?=
CLUSTER_FLAGS ?=
GRID_FLAGS = $(if $(filter 1 yes true,$(DRY_RUN)),--dry-run) $(if $(LIMIT),--limit $(LIMIT)) \
	$(if $(EXECUTOR),--executor $(EXECUTOR)) $(CLUSTER_FLAGS)
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

# Weight pruning, token reduction and both on one table and one accuracy-vs-TFLOPs plot:
# The field's standard token table: every registered token method that runs on the model (`tamp methods --for`,
# plugins included) at the three
# shares of visual tokens kept (192 / 128 / 64 of 576: TOKEN_BUDGETS; a method whose settings fix no token count,
# AIM's or YOPO's schedule, runs once at its own defaults), beside dense, on TOKEN_SWEEP_MODEL (default the trained
# tiny LLaVA-NeXT) and the first TOKEN_SWEEP_LIMIT held-out picture questions. Under TOKEN_SWEEP_OUT (git-ignored):
# token-sweep.md (score, visual tokens kept, prefill FLOPs with the vision encoder's and projector's parts, measured
# prefill latency), token-sweep_tokens.png (score vs visual tokens kept), token-sweep_tflops.png (score vs prefill
# FLOPs), the sweep's own table and plots, leaderboard.csv, runs/ and artifacts/. `make token-sweep-results` copies
# the table and plots to results/token-sweep/ (committed).
TOKEN_SWEEP_MODEL ?= tiny-trained-llava-next
TOKEN_SWEEP_OUT ?= out/token-sweep
TOKEN_SWEEP_LIMIT ?= $(DEMO_LIMIT)
TOKEN_SWEEP_TASKS ?= tamp_heldout_vqa
TOKEN_BUDGETS ?= 0.333,0.222,0.111
TOKEN_METHODS ?= $(shell $(VENV)/bin/tamp methods --json --for $(TOKEN_SWEEP_MODEL) | $(PY) -c \
	"import json, sys; print(','.join(m['name'] for m in json.load(sys.stdin) if m['kind'] == 'token'))")
.PHONY: token-sweep token-sweep-results
token-sweep:
	$(VENV)/bin/harness sweep --model $(TOKEN_SWEEP_MODEL) --methods dense,$(TOKEN_METHODS) \
		--token-budgets $(TOKEN_BUDGETS) --tasks $(TOKEN_SWEEP_TASKS) --limit $(TOKEN_SWEEP_LIMIT) --device cpu \
		--out-dir $(TOKEN_SWEEP_OUT) --csv $(TOKEN_SWEEP_OUT)/leaderboard.csv --output $(TOKEN_SWEEP_OUT)/runs \
		--artifacts $(TOKEN_SWEEP_OUT)/artifacts $(if $(filter 1 yes true,$(DRY_RUN)),--dry-run)
	$(if $(filter 1 yes true,$(DRY_RUN)),,$(VENV)/bin/harness table --runs $(TOKEN_SWEEP_OUT)/runs \
		--model $(TOKEN_SWEEP_MODEL) --cost tokens,layers,flops,encoder,projector,latency \
		--out $(TOKEN_SWEEP_OUT)/token-sweep.md > /dev/null)
	$(if $(filter 1 yes true,$(DRY_RUN)),,$(VENV)/bin/harness plot --runs $(TOKEN_SWEEP_OUT)/runs \
		--model $(TOKEN_SWEEP_MODEL) --x tokens --out $(TOKEN_SWEEP_OUT)/token-sweep_tokens.png)
	$(if $(filter 1 yes true,$(DRY_RUN)),,$(VENV)/bin/harness plot --runs $(TOKEN_SWEEP_OUT)/runs \
		--model $(TOKEN_SWEEP_MODEL) --x tflops --out $(TOKEN_SWEEP_OUT)/token-sweep_tflops.png)

token-sweep-results: token-sweep
	mkdir -p results/token-sweep
	cp $(TOKEN_SWEEP_OUT)/token-sweep* $(TOKEN_SWEEP_OUT)/leaderboard.csv results/token-sweep/

# The first real curve: every weight method at 30, 50 and 70% on the trained tiny LLaVA-NeXT (the weights shipped in
# tamp/testing/trained/: nothing is trained, every machine prunes the same model), on the first DEMO_LIMIT held-out
# picture questions. Everything goes under DEMO_OUT (out/ is git-ignored): the table and plots, leaderboard.csv, the
# run records (runs/) and the pruned artifacts (artifacts/). Run again, it reuses them and rewrites the same files;
# after a change to tamp's code or the shipped weights their records are refused as made from another artifact:
# `rm -rf out/demo` (or DEMO_OUT=another folder) first.
DEMO_OUT ?= out/demo
DEMO_LIMIT ?= 80
DEMO_METHODS ?= magnitude,wanda,sparsegpt,owl,ecoflap,das,amia,tamp
DEMO_SPARSITIES ?= 0.3,0.5,0.7
DEMO_WHERE = --tasks tamp_heldout_vqa --limit $(DEMO_LIMIT) --device cpu $(if $(filter 1 yes true,$(DRY_RUN)),--dry-run)
.PHONY: demo token-demo demo-results
demo:
	$(VENV)/bin/harness sweep --model tiny-trained-llava-next --methods $(DEMO_METHODS) --sparsities $(DEMO_SPARSITIES) \
		$(DEMO_WHERE) --out-dir $(DEMO_OUT) --csv $(DEMO_OUT)/leaderboard.csv \
		--output $(DEMO_OUT)/runs --artifacts $(DEMO_OUT)/artifacts

# Token reduction beside weight pruning on the same model and questions: TAMP 50%, FastV, AIM, YOPO and compositions,
# one table and one accuracy-vs-prefill-FLOPs plot, under TOKEN_DEMO_OUT (git-ignored).
TOKEN_DEMO_OUT ?= out/token-demo
TOKEN_DEMO_METHODS ?= tamp,fastv,aim,tamp+aim,yopo,tamp+yopo
token-demo:
	$(VENV)/bin/harness sweep --model tiny-trained-llava-next --methods $(TOKEN_DEMO_METHODS) --sparsities 0.5 \
		$(DEMO_WHERE) --out-dir $(TOKEN_DEMO_OUT) --csv $(TOKEN_DEMO_OUT)/leaderboard.csv \
		--output $(TOKEN_DEMO_OUT)/runs --artifacts $(TOKEN_DEMO_OUT)/artifacts

# Refresh the committed copies that docs/benchmarks.md shows (results/demo/, results/token-demo/) from the two demos
# above: runs them (or reuses their runs) and copies their tables, plots and leaderboards. Then update its tables
# from the copied .md files and commit. Only this target writes into committed files.
demo-results: demo token-demo
	mkdir -p results/demo results/token-demo
	cp $(DEMO_OUT)/*.md $(DEMO_OUT)/*.png $(DEMO_OUT)/*.svg $(DEMO_OUT)/leaderboard.csv results/demo/
	cp $(TOKEN_DEMO_OUT)/*.md $(TOKEN_DEMO_OUT)/*.png $(TOKEN_DEMO_OUT)/*.svg $(TOKEN_DEMO_OUT)/leaderboard.csv \
		results/token-demo/
