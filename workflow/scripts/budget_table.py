"""Rule budget_table: each pretraining budget's ssl model against the references -> budget.csv (cdssl.budget)."""

import sys

sys.path.insert(0, snakemake.scriptdir)
from _bootstrap import finish, start

log = start(snakemake)
from cdssl.budget import budget_lines, write_budget_table

try:
    inp = snakemake.input
    table = write_budget_table(inp.jobs, inp.cells, inp.summary, list(inp.selected), snakemake.output.budget)
    lines = budget_lines(table)
    log.info("pretraining budget:\n%s", "\n".join(lines))
    finish(f"{table['budget'].nunique()} budgets")
except Exception:
    log.exception("budget table failed")
    raise
