import sys

sys.path.insert(0, snakemake.scriptdir)
from _bootstrap import start

log = start(snakemake)
from cdssl.analysis import figure3

figure3(snakemake.input.history, snakemake.input.selected, snakemake.input.reference, snakemake.output.png)
