"""Rule composition_baselines: Magpie ridge and boosting for every seed of one (dataset, fraction) (cdssl.baselines)."""

import sys

sys.path.insert(0, snakemake.scriptdir)
from _bootstrap import start

log = start(snakemake)
from cdssl.baselines import run_baselines

wc = snakemake.wildcards
try:
    run_baselines(
        snakemake.input.graphs,
        snakemake.input.features,
        dataset=wc.dataset,
        fraction=float(wc.fraction),
        seeds=snakemake.params.seeds,
        **snakemake.params.split,
        boosting=snakemake.params.boosting,
        metrics_jsons=snakemake.output.metrics,
    )
except Exception:
    log.exception("composition baselines failed for %s", dict(wc))
    raise
