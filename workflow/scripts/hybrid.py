"""Rule hybrid: boosting on descriptors and an encoder's components, and its control, every seed (cdssl.hybrid)."""

from _bootstrap import start

start(snakemake)
from cdssl.hybrid import run_hybrid

wc = snakemake.wildcards
run_hybrid(
    snakemake.input.graphs,
    snakemake.input.descriptors,
    snakemake.input.embeddings,
    snakemake.input.baselines,
    dataset=wc.dataset,
    fraction=float(wc.fraction),
    seeds=snakemake.params.seeds,
    **snakemake.params.split,
    boosting=snakemake.params.boosting,
    # the keys of the encoder the runs belong to (cdssl.runs.MODEL_KEYS, RUN_KEYS)
    encoder={
        "sigma": float(wc.sigma),
        "budget": int(wc.budget) if "budget" in wc.keys() else None,
        "pretrain_seed": int(wc.pretrain_seed),
    },
    units=snakemake.params.units,
    metrics_jsons=snakemake.output.metrics,
    predictions_csvs=snakemake.output.predictions,
    model_dirs=snakemake.output.models,
    encoder_folder=snakemake.input.encoder,
)
