"""Rule graphs: a dataset's table -> its packed graph cache and skipped rows (cdssl.graphs)."""

import sys

sys.path.insert(0, snakemake.scriptdir)
from _bootstrap import finish, start

log = start(snakemake)
import pandas as pd

from cdssl.data import read_table
from cdssl.graphs import build_cache, save_cache
from cdssl.utils import atomic_path

try:
    settings = snakemake.params.settings
    table = read_table(snakemake.input.table)
    cache, skipped = build_cache(
        table, settings["cutoff"], processes=snakemake.threads, unknown_elements=settings["unknown_elements"]
    )
    for reason, count in skipped["reason"].str.split(":").str[0].value_counts().items():
        log.warning("skipped %d structure(s): %s", count, reason)
    # one list of every row that left the dataset: the data stage's (labels, site cap), then ours
    skipped = pd.concat([pd.read_csv(snakemake.input.dropped, dtype=str), skipped], ignore_index=True)
    log.info(
        "%d graphs cached, %d rows skipped in all (see %s)", len(cache["ids"]), len(skipped), snakemake.output.skipped
    )
    with atomic_path(snakemake.output.skipped) as tmp:
        skipped.to_csv(tmp, index=False)
    save_cache(cache, snakemake.output.graphs)
    finish(f"{len(cache['ids'])} graphs, {len(skipped)} rows skipped in all")
except Exception:
    log.exception("graph stage failed for dataset %s", snakemake.wildcards.dataset)
    raise
