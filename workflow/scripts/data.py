import sys

sys.path.insert(0, snakemake.scriptdir)
from _bootstrap import start

log = start(snakemake)
from cdssl.data import build_table, write_table

try:
    table = build_table(snakemake.wildcards.dataset, snakemake.params.entry, snakemake.params.data_dir)
    write_table(table, snakemake.output.table)
except Exception:
    log.exception("data stage failed for dataset %s", snakemake.wildcards.dataset)
    raise
