"""Rule pretrain: the denoising pretext task for one sigma, resumable (cdssl.pretrain).

With several ranks inside a SLURM allocation, this process only starts them with srun
(cdssl.distributed) and waits; each rank runs run_pretraining with the same arguments.
"""

from _bootstrap import start

start(snakemake)
from cdssl.distributed import run_ranks

run_ranks(
    "cdssl.pretrain:run_pretraining",
    # the settings name nodes themselves when above 1
    dict(
        graphs=snakemake.input.graphs,
        **snakemake.params.settings,
        accelerator=snakemake.params.accelerator,
        history_csv=snakemake.output.history,
        split_csv=snakemake.output.split,
        reference_json=snakemake.output.reference,
        ckpt_dir=snakemake.params.ckpt_dir,
    ),
    nodes=snakemake.params.nodes,
    devices=snakemake.params.devices,
    cpus_per_rank=snakemake.threads,
    # beside the checkpoint folder, which rank 0 may wipe on a change of identity
    spec_path=f"{snakemake.params.ckpt_dir}.ranks.json",
    log_path=snakemake.log[0],
)
