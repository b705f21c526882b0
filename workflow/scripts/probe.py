import sys

sys.path.insert(0, snakemake.scriptdir)
from _bootstrap import start

log = start(snakemake)
from cdssl.analysis import run_probes

table = run_probes(
    snakemake.input.encoder,
    snakemake.input.graphs,
    snakemake.input.split,
    snakemake.config,
    snakemake.output.probe,
    snakemake.output.embeddings,
)
log.info("linear probes:\n%s", table.to_string(index=False))
