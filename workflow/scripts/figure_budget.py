"""Rule figure_budget: the budget table and the pretraining curve -> the budget figure (cdssl.figures)."""

from _bootstrap import start

start(snakemake)
from cdssl.figures import figure_budget

inp = snakemake.input
figure_budget(inp.budget, inp.history, inp.reference, snakemake.output.png)
