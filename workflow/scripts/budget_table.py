"""Rule budget_table: each pretraining budget's ssl model against the references -> budget.csv (cdssl.budget)."""

from _bootstrap import finish, start

start(snakemake)
from cdssl.budget import write_budget_table

inp = snakemake.input
table = write_budget_table(inp.jobs, inp.cells, inp.summary, list(inp.selected), snakemake.output.budget)
finish(f"{table['budget'].nunique()} budgets; the verdict per budget in {snakemake.output.budget}")
