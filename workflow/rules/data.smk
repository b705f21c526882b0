rule data:
    input:
        unpack(data_input),
    output:
        table=f"{R}/data/{{dataset}}.json.gz",
        skipped=f"{R}/data/{{dataset}}.skipped.csv",
    params:
        settings=lambda wc: data_settings(config, wc.dataset),
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
