"""Rule select_checkpoint: the lowest-validation-loss epoch -> the exported encoder (cdssl.selection)."""

from _bootstrap import finish, start

start(snakemake)
from cdssl.selection import select_checkpoint

record = select_checkpoint(
    snakemake.input.history,
    snakemake.params.ckpt_dir,
    snakemake.output.selected,
    snakemake.output.encoder,
    # rule select_budget: the best of the first {budget} epochs
    budget=snakemake.params.get("budget"),
)
finish(f"epoch {record['epoch']} of {record['epochs_trained']}, validation loss {record['val_loss']:.4g}")
