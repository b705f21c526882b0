# One job per (dataset, fraction, mode) runs every seed of that cell in one process:
# start-up (torch, Lightning, MatGL imports) is paid once instead of once per seed,
# while each seed keeps its own outputs, checkpoints and resume. A change to one cell
# reruns at most its seeds; a finished seed of a failed job resumes from its final
# checkpoint in seconds.


# sl and sl_large: from scratch, so they never wait for pretraining
rule finetune:
    input:
        graphs=f"{R}/graphs/{{dataset}}/graphs.pt",
    output:
        metrics=seed_files(f"{CELL}/{{mode}}", "metrics.json"),
        predictions=seed_files(f"{CELL}/{{mode}}", "predictions.csv"),
        split=seed_files(f"{CELL}/{{mode}}", "split.csv"),
        history=seed_files(f"{CELL}/{{mode}}", "history.csv"),
        model=[directory(m) for m in seed_files(f"{CELL}/{{mode}}", "model")],
    wildcard_constraints:
        mode="sl|sl_large",
    params:
        seeds=FT["seeds"],
        # outside the declared outputs: Snakemake must not delete them before a rerun
        ckpt_dirs=lambda wc: [
            f"{net(wc)}/checkpoints/finetune/{wc.dataset}/{wc.fraction}/{seed}/{wc.mode}"
            for seed in FT["seeds"]
        ],
        settings=lambda wc: finetune_settings(config, wc.dataset, wc.mode, wc.backbone),
        accelerator=config["accelerator"],
    threads: config["threads"]
    resources:
        mem_mb=8000,
        runtime=240 * len(FT["seeds"]),
    log:
        f"{NET}/logs/finetune/{{dataset}}/{{fraction}}/{{mode}}.log",
    benchmark:
        f"{NET}/benchmarks/finetune/{{dataset}}/{{fraction}}/{{mode}}.tsv"
    conda:
        "../../envs/cdssl.yaml"
    script:
        "../scripts/finetune.py"


# ssl: the encoder of one pretraining run (pretraining seed, noise scale sigma; its best
# of the first {budget} epochs with pretrain.export_epochs), with a fresh readout
use rule finetune as finetune_ssl with:
    input:
        graphs=f"{R}/graphs/{{dataset}}/graphs.pt",
        encoder=f"{SEL}/encoder",
    output:
        metrics=seed_files(SSL_CELL, "metrics.json"),
        predictions=seed_files(SSL_CELL, "predictions.csv"),
        split=seed_files(SSL_CELL, "split.csv"),
        history=seed_files(SSL_CELL, "history.csv"),
        model=[directory(m) for m in seed_files(SSL_CELL, "model")],
    wildcard_constraints:
        sigma="[0-9.]+",
    params:
        seeds=FT["seeds"],
        ckpt_dirs=lambda wc: [
            f"{NET}/checkpoints/finetune/{{dataset}}/{{fraction}}/{seed}/ssl/{ENC_RUN}".format(
                **dict(wc.items())
            )
            for seed in FT["seeds"]
        ],
        settings=lambda wc: finetune_settings(config, wc.dataset, "ssl", wc.backbone),
        accelerator=config["accelerator"],
    log:
        f"{NET}/logs/finetune/{{dataset}}/{{fraction}}/ssl/{ENC_RUN}.log",
    benchmark:
        f"{NET}/benchmarks/finetune/{{dataset}}/{{fraction}}/ssl/{ENC_RUN}.tsv"
