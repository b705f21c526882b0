"""Rule aggregate: fine-tuning and baseline metrics -> jobs.csv, cells.csv, summary.json (cdssl.statistics)."""

import sys

sys.path.insert(0, snakemake.scriptdir)
from _bootstrap import finish, start

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
    )
    lines = summary_lines(summary)
    for line in lines:
        log.info("%s", line)
    verdicts = [line for line in lines if line.startswith("verdict")]
    finish("; ".join(verdicts) if verdicts else f"see {out.summary}")
except Exception:
    log.exception("aggregation failed")
    raise
