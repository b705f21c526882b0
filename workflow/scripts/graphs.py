"""Rule graphs: a dataset's table -> its packed graph cache and skipped rows (cdssl.graphs)."""

from _bootstrap import finish, start

start(snakemake)
from cdssl.graphs import run_graphs

n_graphs, n_skipped = run_graphs(
    snakemake.input.table,
    snakemake.output.graphs,
    snakemake.output.skipped,
    **snakemake.params.settings,
    # one list of every row that left the dataset: the data stage's (labels, site cap), then ours
    dropped=snakemake.input.dropped,
    processes=snakemake.threads,
)
finish(f"{n_graphs} graphs, {n_skipped} rows skipped in all")
