"""Rule figure3: pretraining histories and their references -> Figure 3 (cdssl.figures)."""

from _bootstrap import start

start(snakemake)
from cdssl.figures import figure3

inp = snakemake.input
figure3(
    inp.history,
    inp.selected,
    inp.reference,
    snakemake.output.png,
    snakemake.params.sigmas,
    snakemake.params.pool_sizes,
)
