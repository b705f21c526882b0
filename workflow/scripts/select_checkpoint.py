"""Rule select_checkpoint: the lowest-validation-loss epoch -> the exported encoder (cdssl.selection)."""

import sys

sys.path.insert(0, snakemake.scriptdir)
from _bootstrap import start

log = start(snakemake)
from cdssl.selection import select_checkpoint

try:
    select_checkpoint(
        snakemake.input.history,
        snakemake.params.ckpt_dir,
        snakemake.output.selected,
        snakemake.output.encoder,
    )
except Exception:
    log.exception("checkpoint selection failed")
    raise
