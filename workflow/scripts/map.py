"""Rule map: the run's verdicts and pretraining runs -> the map's table, trend and figure
(cdssl.pretraining_map, cdssl.figures)."""

from _bootstrap import finish, start

start(snakemake)
from cdssl.figures import figure_map
from cdssl.pretraining_map import write_map

inp, out = snakemake.input, snakemake.output
table = write_map(
    inp.summary, list(inp.selected), list(inp.reference), list(inp.split), snakemake.params.run_keys, out.map, out.trend
)
figure_map(out.map, out.png)
finish(f"{len(table)} task x encoder cells, {int((table['verdict'] == 'wins').sum()) if len(table) else 0} SSL wins")
