"""Rule figure4: the per-seed and per-cell tables -> Figure 4, SSL against every baseline (cdssl.figures)."""

import sys

sys.path.insert(0, snakemake.scriptdir)
from _bootstrap import start

log = start(snakemake)
from cdssl.figures import figure4

try:
    out = snakemake.output
    figure4(snakemake.input.jobs, snakemake.input.cells, snakemake.params.modes, out.png, out.per_dataset)
except Exception:
    log.exception("figure 4 failed")
    raise
