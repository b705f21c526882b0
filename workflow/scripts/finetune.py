import sys

sys.path.insert(0, snakemake.scriptdir)
from _bootstrap import start

log = start(snakemake)
from cdssl.finetune import run_finetune

wc = snakemake.wildcards
try:
    run_finetune(
        snakemake.input.graphs,
        dataset=wc.dataset,
        fraction=float(wc.fraction),
        seed=int(wc.seed),
        mode=wc.mode,
        **snakemake.params.settings,
        accelerator=snakemake.params.accelerator,
        encoder_dir=snakemake.input.get("encoder"),
        metrics_json=snakemake.output.metrics,
        predictions_csv=snakemake.output.predictions,
        history_csv=snakemake.output.history,
        ckpt_dir=snakemake.params.ckpt_dir,
    )
except Exception:
    log.exception("fine-tuning failed for %s", dict(wc))
    raise
