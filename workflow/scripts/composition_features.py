"""Rule composition_features: a dataset's graph cache -> its Magpie feature matrix (cdssl.baselines)."""

import sys

sys.path.insert(0, snakemake.scriptdir)
from _bootstrap import start

log = start(snakemake)
from cdssl.baselines import write_magpie

try:
    write_magpie(snakemake.input.graphs, snakemake.output.features)
except Exception:
    log.exception("Magpie features failed for dataset %s", snakemake.wildcards.dataset)
    raise
