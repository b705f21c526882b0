"""Rule figure_budget: the budget table and the pretraining curve -> the budget figure (cdssl.figures)."""

import sys

sys.path.insert(0, snakemake.scriptdir)
from _bootstrap import start

log = start(snakemake)
from cdssl.figures import figure_budget

try:
    inp = snakemake.input
    figure_budget(inp.budget, inp.history, inp.reference, snakemake.output.png)
except Exception:
    log.exception("budget figure failed")
    raise
