"""Rule data: one dataset entry -> its cleaned table and the rows it dropped, with reasons (cdssl.data)."""

from _bootstrap import finish, start

start(snakemake)
from cdssl.data import run_data

kept, dropped = run_data(
    snakemake.wildcards.dataset,
    **snakemake.params.settings,
    # a user's file entry declares no exclude input
    exclude_tables=snakemake.input.get("exclude", []),
    table_out=snakemake.output.table,
    skipped_csv=snakemake.output.skipped,
)
finish(f"{kept} rows, {dropped} dropped")
