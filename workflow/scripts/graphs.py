import sys

sys.path.insert(0, snakemake.scriptdir)
from _bootstrap import start

log = start(snakemake)
from cdssl.data import read_table
from cdssl.graphs import build_cache, save_cache
from cdssl.utils import atomic_path

try:
    table = read_table(snakemake.input.table)
    cache, skipped = build_cache(table, snakemake.params.graph["cutoff"], processes=snakemake.threads)
    for row in skipped.itertuples():
        log.warning("skipped %s: %s", row.id, row.reason)
    log.info("%d graphs cached, %d structures skipped (see %s)", len(cache["ids"]), len(skipped), snakemake.output.skipped)
    with atomic_path(snakemake.output.skipped, suffix=".csv") as tmp:
        skipped.to_csv(tmp, index=False)
    save_cache(cache, snakemake.output.graphs)
except Exception:
    log.exception("graph stage failed for dataset %s", snakemake.wildcards.dataset)
    raise
