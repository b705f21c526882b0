rule pretrain:
    input:
        graphs=f"{R}/graphs/{PRE}/graphs.pt",
    output:
        history=f"{PT}/history.csv",
        split=f"{PT}/split.csv",
        reference=f"{PT}/reference.json",
    params:
        # Outside the declared outputs: Snakemake must not delete them before a rerun,
        # or a killed pretraining could not resume.
        ckpt_dir=f"{NET}/checkpoints/pretrain/{RUN}",
        settings=lambda wc: pretrain_settings(
            config, float(wc.sigma), int(wc.pretrain_seed), wc.backbone, wc.pool_size
        ),
        accelerator=config["accelerator"],
        nodes=config["pretrain"]["nodes"],
        devices=config["pretrain"]["devices"],
    # per rank: with several ranks each gets this many cores
    threads: config["threads"]
    # pretraining is the critical path: every ssl job waits on it
    priority: 50
    # the SLURM allocation's nodes, tasks and GPUs follow pretrain.nodes and
    # pretrain.devices (cdssl.config.pretrain_resources)
    resources:
        **pretrain_resources(config),
        mem_mb=16000,
        runtime=2880,
    log:
        f"{NET}/logs/pretrain/{RUN}.log",
    benchmark:
        f"{NET}/benchmarks/pretrain/{RUN}.tsv"
    conda:
        "../../envs/cdssl.yaml"
    script:
        "../scripts/pretrain.py"


rule select_checkpoint:
    input:
        history=f"{PT}/history.csv",
    output:
        selected=f"{PT}/selected.json",
        encoder=directory(f"{PT}/encoder"),
    params:
        ckpt_dir=f"{NET}/checkpoints/pretrain/{RUN}",
    priority: 50
    log:
        f"{NET}/logs/select_checkpoint/{RUN}.log",
    benchmark:
        f"{NET}/benchmarks/select_checkpoint/{RUN}.tsv"
    conda:
        "../../envs/cdssl.yaml"
    script:
        "../scripts/select_checkpoint.py"


# pretrain.export_epochs: the best of the first {budget} epochs of the same run, from the
# snapshot pretraining kept of every new best; a budget added later reuses the run
use rule select_checkpoint as select_budget with:
    output:
        selected=f"{PT}/budget_{{budget}}/selected.json",
        encoder=directory(f"{PT}/budget_{{budget}}/encoder"),
    params:
        ckpt_dir=f"{NET}/checkpoints/pretrain/{RUN}",
        budget=lambda wc: int(wc.budget),
    log:
        f"{NET}/logs/select_checkpoint/{RUN}/budget_{{budget}}.log",
    benchmark:
        f"{NET}/benchmarks/select_checkpoint/{RUN}/budget_{{budget}}.tsv"
