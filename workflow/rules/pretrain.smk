rule pretrain:
    input:
        graphs=f"{R}/graphs/{PRE}/graphs.pt",
    output:
        history=f"{R}/pretrain/history.csv",
        split=f"{R}/pretrain/split.csv",
        reference=f"{R}/pretrain/reference.json",
    params:
        # Outside the declared outputs: Snakemake must not delete them before a rerun,
        # or a killed pretraining could not resume.
        ckpt_dir=f"{R}/checkpoints/pretrain",
        settings=pretrain_settings(config),
        accelerator=config["accelerator"],
    threads: config["threads"]
    # pretraining is the critical path: every ssl job waits on it
    priority: 50
    resources:
        mem_mb=16000,
        runtime=2880,
    log:
        f"{R}/logs/pretrain.log",
    benchmark:
        f"{R}/benchmarks/pretrain.tsv"
    conda:
        "../../envs/cdssl.yaml"
    script:
        "../scripts/pretrain.py"


rule select_checkpoint:
    input:
        history=f"{R}/pretrain/history.csv",
    output:
        selected=f"{R}/pretrain/selected.json",
        encoder=directory(f"{R}/pretrain/encoder"),
    params:
        ckpt_dir=f"{R}/checkpoints/pretrain",
    priority: 50
    log:
        f"{R}/logs/select_checkpoint.log",
    benchmark:
        f"{R}/benchmarks/select_checkpoint.tsv"
    conda:
        "../../envs/cdssl.yaml"
    script:
        "../scripts/select_checkpoint.py"
