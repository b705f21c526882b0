rule graphs:
    input:
        table=f"{R}/data/{{dataset}}.json.gz",
        dropped=f"{R}/data/{{dataset}}.skipped.csv",
    output:
        graphs=f"{R}/graphs/{{dataset}}/graphs.pt",
        # the cache's content digest, read by every job whose identity includes the cache
        digest=f"{R}/graphs/{{dataset}}/graphs.pt.sha256.json",
        skipped=f"{R}/graphs/{{dataset}}/skipped.csv",
    params:
        settings=graph_settings(config),
    # config threads, not every core: a job asking for all cores waits until all are
    # free, and the 1-thread fine-tuning jobs of a workstation run keep one busy
    threads: config["threads"]
    # the critical path (graphs -> pretraining -> every ssl job) goes first
    priority: 50
    resources:
        mem_mb=8000,
    log:
        f"{R}/logs/graphs/{{dataset}}.log",
    benchmark:
        f"{R}/benchmarks/graphs/{{dataset}}.tsv"
    conda:
        "../../envs/cdssl.yaml"
    script:
        "../scripts/graphs.py"
