rule data:
    output:
        table=f"{R}/data/{{dataset}}.json.gz",
    params:
        entry=lambda wc: config["datasets"][wc.dataset],
        data_dir=config["data_dir"],
    # the critical path (graphs -> pretraining -> every ssl job) goes first
    priority: 50
    log:
        f"{R}/logs/data/{{dataset}}.log",
    benchmark:
        f"{R}/benchmarks/data/{{dataset}}.tsv"
    conda:
        "../../envs/cdssl.yaml"
    script:
        "../scripts/data.py"
