# Two commands from a fresh clone: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CORES  ?= all

.PHONY: demo test report figures lint format dry-run clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first: the pinned CPU build; a bare `torch` could pull a multi-GB CUDA build
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --configfile config/demo.yaml --rerun-incomplete
	$(BIN)/snakemake --cores 1 --configfile config/demo.yaml --report results/report.html
	@echo "Demo results: results/ (analysis/ for tables and figures, report.html for the report)"

test: $(STAMP)
	$(BIN)/python -m pytest -q

figures: $(STAMP)
	$(BIN)/snakemake figures --cores $(CORES) --configfile config/demo.yaml

report: $(STAMP)
	$(BIN)/snakemake --cores 1 --configfile config/demo.yaml --report results/report.html

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
