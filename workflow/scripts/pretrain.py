import sys

sys.path.insert(0, snakemake.scriptdir)
from _bootstrap import start

log = start(snakemake)
from cdssl.pretrain import run_pretraining

try:
    run_pretraining(
        snakemake.input.graphs,
        snakemake.config,
        history_csv=snakemake.output.history,
        split_csv=snakemake.output.split,
        ckpt_dir=snakemake.params.ckpt_dir,
        reference_json=snakemake.output.reference,
    )
except Exception:
    log.exception("pretraining failed")
    raise
