"""Rule blend: the validation-best model and the blend of a (dataset, fraction)'s models, every seed (cdssl.blend)."""

from _bootstrap import start

start(snakemake)
from cdssl.blend import run_blend

wc = snakemake.wildcards
run_blend(
    snakemake.params.candidates,
    dataset=wc.dataset,
    fraction=float(wc.fraction),
    seeds=snakemake.params.seeds,
    min_prediction_spread=snakemake.params.min_prediction_spread,
    units=snakemake.params.units,
    metrics_jsons=snakemake.output.metrics,
    predictions_csvs=snakemake.output.predictions,
)
