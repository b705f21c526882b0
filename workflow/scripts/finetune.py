"""Rules finetune and finetune_ssl: every seed of one (dataset, fraction, mode) cell (cdssl.finetune)."""

from _bootstrap import finish, start

start(snakemake)
from cdssl.finetune import run_cell

wc, out = snakemake.wildcards, snakemake.output
runs = run_cell(
    snakemake.input.graphs,
    snakemake.params.seeds,
    dataset=wc.dataset,
    fraction=float(wc.fraction),
    # rule finetune_ssl has no mode wildcard: its cells are ssl at the noise scale sigma
    mode=wc.get("mode", "ssl"),
    sigma=float(wc.sigma) if "sigma" in wc.keys() else None,
    # with several pretraining seeds, the run's seed labels its results (a bootstrap level)
    pretrain_seed=int(wc.pretrain_seed) if "pretrain_seed" in wc.keys() else None,
    # with pretrain.export_epochs, the encoder's pretraining budget (epochs) labels its model
    budget=int(wc.budget) if "budget" in wc.keys() else None,
    **snakemake.params.settings,
    accelerator=snakemake.params.accelerator,
    encoder_dir=snakemake.input.get("encoder"),
    metrics_jsons=out.metrics,
    predictions_csvs=out.predictions,
    split_csvs=out.split,
    history_csvs=out.history,
    model_dirs=out.model,
    ckpt_dirs=snakemake.params.ckpt_dirs,
)
mae = sum(r["test_mae"] for r in runs) / len(runs)
finish(f"test MAE {mae:.4g} {runs[0]['units']} (mean of {len(runs)} seed(s))")
