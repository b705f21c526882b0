"""Rule pretrain: the denoising pretext task for one sigma, resumable (cdssl.pretrain)."""

import sys

sys.path.insert(0, snakemake.scriptdir)
from _bootstrap import start

log = start(snakemake)
from cdssl.pretrain import run_pretraining

try:
    run_pretraining(
        snakemake.input.graphs,
        **snakemake.params.settings,
        accelerator=snakemake.params.accelerator,
        history_csv=snakemake.output.history,
        split_csv=snakemake.output.split,
        reference_json=snakemake.output.reference,
        ckpt_dir=snakemake.params.ckpt_dir,
    )
except Exception:
    log.exception("pretraining failed")
    raise
