"""Rule baselines: ridge and boosting on each feature matrix, every seed of a (dataset, fraction) (cdssl.baselines)."""

import sys

sys.path.insert(0, snakemake.scriptdir)
from _bootstrap import start

log = start(snakemake)
from cdssl.baselines import run_baselines

wc = snakemake.wildcards
try:
    run_baselines(
        snakemake.input.graphs,
        dict(zip(snakemake.params.featurizers, snakemake.input.features, strict=True)),
        dataset=wc.dataset,
        fraction=float(wc.fraction),
        seeds=snakemake.params.seeds,
        **snakemake.params.split,
        boosting=snakemake.params.boosting,
        metrics_jsons=snakemake.output.metrics,
    )
except Exception:
    log.exception("baselines failed for %s", dict(wc))
    raise
