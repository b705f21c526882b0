"""Rule baselines: ridge and boosting on each feature matrix, every seed of a (dataset, fraction) (cdssl.baselines)."""

from _bootstrap import start

start(snakemake)
from cdssl.baselines import run_baselines

wc = snakemake.wildcards
run_baselines(
    snakemake.input.graphs,
    dict(zip(snakemake.params.featurizers, snakemake.input.features, strict=True)),
    dataset=wc.dataset,
    fraction=float(wc.fraction),
    seeds=snakemake.params.seeds,
    **snakemake.params.split,
    boosting=snakemake.params.boosting,
    metrics_jsons=snakemake.output.metrics,
    predictions_csvs=snakemake.output.predictions,
    model_dirs=snakemake.output.models,
)
