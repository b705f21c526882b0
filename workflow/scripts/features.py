"""Rule features: a dataset's graph cache -> one featurizer's matrix, row per crystal (cdssl.features)."""

import sys

sys.path.insert(0, snakemake.scriptdir)
from _bootstrap import start

log = start(snakemake)
from cdssl.features import write_features

try:
    write_features(snakemake.input.graphs, snakemake.output.features, snakemake.wildcards.featurizer)
except Exception:
    log.exception("features failed for %s", dict(snakemake.wildcards))
    raise
