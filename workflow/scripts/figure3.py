"""Rule figure3: pretraining histories and their references -> Figure 3 (cdssl.figures)."""

import sys

sys.path.insert(0, snakemake.scriptdir)
from _bootstrap import start

log = start(snakemake)
from cdssl.figures import figure3

try:
    inp = snakemake.input
    figure3(inp.history, inp.selected, inp.reference, snakemake.output.png, snakemake.params.sigmas)
except Exception:
    log.exception("figure 3 failed")
    raise
