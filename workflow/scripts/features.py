"""Rule features: a dataset's graph cache -> one featurizer's matrix, row per crystal (cdssl.features)."""

from _bootstrap import start

start(snakemake)
from cdssl.features import write_features

write_features(snakemake.input.graphs, snakemake.output.features, snakemake.wildcards.featurizer)
