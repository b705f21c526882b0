import sys

sys.path.insert(0, snakemake.scriptdir)
from _bootstrap import start

log = start(snakemake)
from cdssl.analysis import write_aggregates

summary = write_aggregates(snakemake.input.metrics, snakemake.output.jobs, snakemake.output.cells, snakemake.output.summary)
for name, comp in summary["comparisons"].items():
    log.info("%s: SSL lower in %d of %d cells; Wilcoxon p = %.3g over %d pairs", name, comp["ssl_wins"], comp["cells"], comp["overall"]["p_value"], comp["overall"]["n_pairs"])
