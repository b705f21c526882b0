import sys

sys.path.insert(0, snakemake.scriptdir)
from _bootstrap import start

log = start(snakemake)
from cdssl.analysis import figure3

try:
    inp = snakemake.input
    figure3(inp.history, inp.selected, inp.reference, snakemake.output.png, snakemake.params.sigmas)
except Exception:
    log.exception("figure 3 failed")
    raise
