"""Rule figure5: the probe's embeddings -> Figure 5, the UMAP map (cdssl.figures)."""

from _bootstrap import start

start(snakemake)
from cdssl.figures import figure5

figure5(snakemake.input.embeddings, snakemake.output.png)
