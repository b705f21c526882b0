"""Rule aggregate: fine-tuning and baseline metrics -> jobs.csv, cells.csv, summary.json (cdssl.aggregate)."""

from _bootstrap import finish, start

start(snakemake)
from cdssl.aggregate import write_aggregates
from cdssl.markdown import verdict_line

summary = write_aggregates(
    # the networks' runs, then the hybrids' and the blends' (a file holds two families)
    [*snakemake.input.metrics, *snakemake.input.hybrids, *snakemake.input.blends],
    snakemake.output.jobs,
    snakemake.output.cells,
    snakemake.output.summary,
    baseline_files=snakemake.input.baselines,
    min_prediction_spread=snakemake.params.min_prediction_spread,
    backbone=snakemake.params.backbone,
    pool=snakemake.params.pool,
    run_keys=snakemake.params.run_keys,
)
# the console line: per task, SSL against the strongest answer without pretraining
finish(verdict_line(summary) or f"see {snakemake.output.summary}")
