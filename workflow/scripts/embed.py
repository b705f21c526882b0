"""Rule embed: a dataset through a frozen pretrained encoder and its untrained twin (cdssl.hybrid)."""

from _bootstrap import start

start(snakemake)
from cdssl.hybrid import encoder_embeddings

encoder_embeddings(
    snakemake.input.encoder,
    snakemake.input.graphs,
    # the untrained twin's weights: drawn with the pretraining run's own seed
    int(snakemake.wildcards.pretrain_seed),
    snakemake.output.embeddings,
)
