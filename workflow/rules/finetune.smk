rule finetune:
    input:
        unpack(encoder_input),
        graphs=f"{R}/graphs/{{dataset}}/graphs.pt",
    output:
        metrics=f"{R}/finetune/{{dataset}}/{{fraction}}/{{seed}}/{{mode}}/metrics.json",
        predictions=f"{R}/finetune/{{dataset}}/{{fraction}}/{{seed}}/{{mode}}/predictions.csv",
        history=f"{R}/finetune/{{dataset}}/{{fraction}}/{{seed}}/{{mode}}/history.csv",
    params:
        ckpt_dir=f"{R}/checkpoints/finetune/{{dataset}}/{{fraction}}/{{seed}}/{{mode}}",
        settings=lambda wc: finetune_settings(config, wc.dataset, wc.mode),
        accelerator=config["accelerator"],
    threads: config["threads"]
    resources:
        mem_mb=8000,
        runtime=240,
    log:
        f"{R}/logs/finetune/{{dataset}}/{{fraction}}/{{seed}}/{{mode}}.log",
    benchmark:
        f"{R}/benchmarks/finetune/{{dataset}}/{{fraction}}/{{seed}}/{{mode}}.tsv"
    conda:
        "../../envs/cdssl.yaml"
    script:
        "../scripts/finetune.py"
