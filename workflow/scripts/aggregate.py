"""Rule aggregate: fine-tuning and baseline metrics -> jobs.csv, cells.csv, summary.json (cdssl.statistics)."""

from _bootstrap import finish, start

start(snakemake)
from cdssl.statistics import write_aggregates

summary = write_aggregates(
    snakemake.input.metrics,
    snakemake.output.jobs,
    snakemake.output.cells,
    snakemake.output.summary,
    baseline_files=snakemake.input.baselines,
    min_prediction_spread=snakemake.params.min_prediction_spread,
)
# the console line: per task, SSL against the strongest answer without pretraining
verdicts = [
    f"{dataset}: {ssl} minus {v['strongest_without_pretraining']} "
    + (f"{mean:+.4g}" if (mean := v["ssl_minus_strongest"]["mean"]) == mean else "not counted (a model did not learn)")
    for ssl, verdict in summary["verdict"].items()
    for dataset, v in verdict["per_dataset"].items()
]
finish("; ".join(verdicts) or f"see {snakemake.output.summary}")
