"""Rule backbone_table: each backbone's SSL against its references -> backbones.csv, .md (cdssl.comparison)."""

from _bootstrap import finish, start

start(snakemake)
from cdssl.comparison import write_backbone_table

table = write_backbone_table(
    snakemake.params.runs,
    table_csv=snakemake.output.table,
    markdown=snakemake.output.markdown,
    workflow_dir=snakemake.scriptdir,
    configfiles=snakemake.params.configfiles,
    benchmarks_dir=snakemake.params.benchmarks,
)
finish(f"{table['backbone'].nunique()} backbones compared in {snakemake.output.markdown}")
