# One job per (dataset, fraction, mode) runs every seed of that cell in one process:
# start-up (torch, Lightning, MatGL imports) is paid once instead of once per seed,
# while each seed keeps its own outputs, checkpoints and resume. A change to one cell
# reruns at most its seeds; a finished seed of a failed job resumes from its final
# checkpoint in seconds.
rule finetune:
    input:
        unpack(encoder_input),
        graphs=f"{R}/graphs/{{dataset}}/graphs.pt",
    output:
        metrics=seed_files("metrics.json"),
        predictions=seed_files("predictions.csv"),
        history=seed_files("history.csv"),
    params:
        seeds=FT["seeds"],
        # outside the declared outputs: Snakemake must not delete them before a rerun
        ckpt_dirs=lambda wc: [
            f"{R}/checkpoints/finetune/{wc.dataset}/{wc.fraction}/{seed}/{wc.mode}"
            for seed in FT["seeds"]
        ],
        settings=lambda wc: finetune_settings(config, wc.dataset, wc.mode),
        accelerator=config["accelerator"],
    threads: config["threads"]
    resources:
        mem_mb=8000,
        runtime=240 * len(FT["seeds"]),
    log:
        f"{R}/logs/finetune/{{dataset}}/{{fraction}}/{{mode}}.log",
    benchmark:
        f"{R}/benchmarks/finetune/{{dataset}}/{{fraction}}/{{mode}}.tsv"
    conda:
        "../../envs/cdssl.yaml"
    script:
        "../scripts/finetune.py"
