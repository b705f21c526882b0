"""Rule data: one dataset entry -> its cleaned table and the rows it dropped, with reasons (cdssl.data)."""

import sys

sys.path.insert(0, snakemake.scriptdir)
from _bootstrap import finish, start

log = start(snakemake)
from cdssl.data import build_table, read_table, write_table
from cdssl.utils import atomic_path

try:
    settings = snakemake.params.settings
    # the input tables come in the order settings["exclude"] names them
    # (a user's file entry declares no exclude input)
    exclude = dict(zip(settings["exclude"], map(read_table, snakemake.input.get("exclude", [])), strict=True))
    table, dropped = build_table(snakemake.wildcards.dataset, settings["entry"], settings["data_dir"], exclude)
    write_table(table, snakemake.output.table)
    with atomic_path(snakemake.output.skipped) as tmp:
        dropped.to_csv(tmp, index=False)
    finish(f"{len(table)} rows, {len(dropped)} dropped")
except Exception:
    log.exception("data stage failed for dataset %s", snakemake.wildcards.dataset)
    raise
