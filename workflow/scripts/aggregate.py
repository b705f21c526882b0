"""Rule aggregate: fine-tuning and baseline metrics -> jobs.csv, cells.csv, summary.json (cdssl.statistics)."""

import sys

sys.path.insert(0, snakemake.scriptdir)
from _bootstrap import start

log = start(snakemake)
from cdssl.statistics import summary_lines, write_aggregates

try:
    out = snakemake.output
    summary = write_aggregates(
        snakemake.input.metrics,
        out.jobs,
        out.cells,
        out.summary,
        baseline_files=snakemake.input.baselines,
        min_prediction_spread=snakemake.params.min_prediction_spread,
        results_md=out.results,
    )
    for line in summary_lines(summary):
        log.info("%s", line)
except Exception:
    log.exception("aggregation failed")
    raise
