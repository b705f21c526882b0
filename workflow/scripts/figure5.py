"""Rule figure5: the probe's embeddings -> Figure 5, the UMAP map (cdssl.figures)."""

import sys

sys.path.insert(0, snakemake.scriptdir)
from _bootstrap import start

log = start(snakemake)
from cdssl.figures import figure5

try:
    figure5(snakemake.input.embeddings, snakemake.output.png)
except Exception:
    log.exception("figure 5 failed")
    raise
