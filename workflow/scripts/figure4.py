"""Rule figure4: the per-seed and per-cell tables -> Figure 4, SSL against every baseline (cdssl.figures)."""

from _bootstrap import start

start(snakemake)
from cdssl.figures import figure4

out = snakemake.output
figure4(snakemake.input.jobs, snakemake.input.cells, snakemake.params.modes, out.png, out.per_dataset)
