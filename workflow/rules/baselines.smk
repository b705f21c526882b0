# The field's composition models, once per (dataset, fraction, seed) on the very split
# of that cell's networks: they need no pretraining, so they never wait for it.


rule composition_features:
    input:
        graphs=f"{R}/graphs/{{dataset}}/graphs.pt",
    output:
        features=f"{R}/features/{{dataset}}/magpie.npz",
    log:
        f"{R}/logs/features/{{dataset}}.log",
    benchmark:
        f"{R}/benchmarks/features/{{dataset}}.tsv"
    conda:
        "../../envs/cdssl.yaml"
    script:
        "../scripts/composition_features.py"


rule composition_baselines:
    input:
        graphs=f"{R}/graphs/{{dataset}}/graphs.pt",
        features=f"{R}/features/{{dataset}}/magpie.npz",
    output:
        metrics=seed_files(BASELINE_CELL, "metrics.json"),
    params:
        seeds=FT["seeds"],
        # the networks' split: the same seeds and fractions give the same crystals
        split={k: FT[k] for k in ("test_fraction", "val_fraction")},
        boosting=config["analysis"]["boosting"],
    log:
        f"{R}/logs/baselines/{{dataset}}/{{fraction}}.log",
    benchmark:
        f"{R}/benchmarks/baselines/{{dataset}}/{{fraction}}.tsv"
    conda:
        "../../envs/cdssl.yaml"
    script:
        "../scripts/composition_baselines.py"
