# Two commands from a fresh clone: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CORES  ?= all
# the config of `make demo`, `make figures` and `make report`: CONFIG=config/mine.yaml
CONFIG ?= config/demo.yaml
RESULTS = $(shell $(BIN)/python -c "import sys; sys.path.insert(0, 'src'); from cdssl.config import load_config; print(load_config('$(CONFIG)')['results_dir'])" 2>/dev/null || echo results)

.PHONY: demo test test-fast test-slurm test-gpu report figures lint format dry-run clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first: the pinned CPU build; a bare `torch` could pull a multi-GB CUDA build
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

# The console shows Snakemake's progress and one line per finished job; each job's
# detail (its rule block, Lightning's output, warnings) is in results/logs/.
demo: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --configfile $(CONFIG) --rerun-incomplete --quiet rules host reason
	$(BIN)/snakemake --cores 1 --configfile $(CONFIG) --report $(RESULTS)/report.html --quiet all
	@echo "Results: $(RESULTS)/ (<backbone>/analysis/ for tables and figures and results.md, report.html)"

# Test tiers (markers in pyproject.toml): lint first and the fast tier next, so a lint or
# unit failure stops within minutes; then the slow tier (real workflows, kills and
# resumes), its tests spread over TEST_WORKERS processes (pytest-xdist; the tests that
# share a module's run stay in one process, which builds that run once, and the rest go
# to whichever process is free: tests/conftest.py; the 25 slowest are listed, to see
# what bounds the tier against CI's limit). The fast tier stays in one process: two
# workers each paying the imports and fixtures made it slower (150 s, not 105). The
# SLURM tests take the machine's SLURM over and run only when asked: CDSSL_SLURM_TESTS=1 (make test-slurm, or
# CI on its throwaway machine); they run last, alone, as a SLURM client without a
# controller would slow every later Snakemake start.
FAST := not slow and not network and not slurm
TEST_WORKERS ?= 2
XDIST = -n $(TEST_WORKERS) --dist loadgroup

test: $(STAMP)
	$(BIN)/python -m pytest -q -m lint
	$(BIN)/python -m pytest -q -m "$(FAST) and not lint"
	$(BIN)/python -m pytest -q $(XDIST) --durations=25 -m "not ($(FAST)) and not lint and not slurm"
	$(BIN)/python -m pytest -q -m slurm

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "lint or ($(FAST))"

test-slurm: $(STAMP)
	CDSSL_SLURM_TESTS=1 $(BIN)/python -m pytest -q -m slurm

# on a machine with a CUDA device: the GPU tier and the step benchmarks (tools/gpu_check.sh)
test-gpu: $(STAMP)
	tools/gpu_check.sh gpu-check

figures: $(STAMP)
	$(BIN)/snakemake figures --cores $(CORES) --configfile $(CONFIG)

report: $(STAMP)
	$(BIN)/snakemake --cores 1 --configfile $(CONFIG) --report $(RESULTS)/report.html

lint: $(STAMP)
	$(BIN)/snakemake --lint --configfile config/test.yaml
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/snakefmt Snakefile workflow/rules
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

dry-run: $(STAMP)
	$(BIN)/snakemake -n --configfile config/config.yaml

clean:
	rm -rf results .snakemake
