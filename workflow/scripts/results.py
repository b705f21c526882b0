"""Rule results: the run's tables under one metadata line -> analysis/results.md (cdssl.document)."""

from _bootstrap import finish, start

start(snakemake)
from cdssl.document import write_results_document

write_results_document(
    snakemake.input.cells,
    snakemake.input.summary,
    list(snakemake.input.selected),
    list(snakemake.input.reference),
    snakemake.output.results,
    probe_csv=snakemake.input.probe,
    workflow_dir=snakemake.scriptdir,
    configfiles=snakemake.params.configfiles,
    benchmarks_dir=snakemake.params.benchmarks,
    map_csv=snakemake.input.map,
    trend_csv=snakemake.input.trend,
    budget_csv=snakemake.input.budget[0] if snakemake.input.budget else None,
)
finish(snakemake.output.results)
