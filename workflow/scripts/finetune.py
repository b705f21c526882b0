"""Rules finetune and finetune_ssl: every seed of one (dataset, fraction, mode) cell (cdssl.finetune)."""

import sys

sys.path.insert(0, snakemake.scriptdir)
from _bootstrap import finish, start

log = start(snakemake)
from cdssl.finetune import run_finetune

wc = snakemake.wildcards
out = snakemake.output
# rule finetune_ssl has no mode wildcard: its cells are ssl at the noise scale sigma
mode = wc.get("mode", "ssl")
sigma = float(wc.sigma) if "sigma" in wc.keys() else None
# with several pretraining seeds, the run's seed labels its results (a bootstrap level)
pretrain_seed = int(wc.pretrain_seed) if "pretrain_seed" in wc.keys() else None
# with pretrain.export_epochs, the encoder's pretraining budget (epochs) labels its model
budget = int(wc.budget) if "budget" in wc.keys() else None
# one cell, every seed in turn; the output lists follow params.seeds
maes = []
for i, seed in enumerate(snakemake.params.seeds):
    try:
        metrics = run_finetune(
            snakemake.input.graphs,
            dataset=wc.dataset,
            fraction=float(wc.fraction),
            seed=int(seed),
            mode=mode,
            sigma=sigma,
            pretrain_seed=pretrain_seed,
            budget=budget,
            **snakemake.params.settings,
            accelerator=snakemake.params.accelerator,
            encoder_dir=snakemake.input.get("encoder"),
            metrics_json=out.metrics[i],
            predictions_csv=out.predictions[i],
            split_csv=out.split[i],
            history_csv=out.history[i],
            model_dir=out.model[i],
            ckpt_dir=snakemake.params.ckpt_dirs[i],
        )
    except Exception:
        log.exception("fine-tuning failed for %s, seed %s", dict(wc), seed)
        raise
    maes.append(metrics["test_mae"])
finish(f"test MAE {sum(maes) / len(maes):.4g} {metrics['units']} (mean of {len(maes)} seed(s))")
