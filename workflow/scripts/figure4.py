import sys

sys.path.insert(0, snakemake.scriptdir)
from _bootstrap import start

log = start(snakemake)
from cdssl.analysis import figure4

figure4(snakemake.input.cells, snakemake.params.modes, snakemake.output.png, snakemake.output.per_dataset)
