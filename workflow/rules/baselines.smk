# The field's models on fixed features, once per (dataset, fraction, seed) on the very
# split of that cell's networks: they need no pretraining of ours, so they never wait for it.


rule features:
    input:
        graphs=f"{R}/graphs/{{dataset}}/graphs.pt",
    output:
        features=f"{R}/features/{{dataset}}/{{featurizer}}.npz",
    wildcard_constraints:
        featurizer="|".join(FEATURIZERS),
    threads: config["threads"]
    log:
        f"{R}/logs/features/{{dataset}}/{{featurizer}}.log",
    benchmark:
        f"{R}/benchmarks/features/{{dataset}}/{{featurizer}}.tsv"
    conda:
        "../../envs/cdssl.yaml"
    script:
        "../scripts/features.py"


rule baselines:
    input:
        graphs=f"{R}/graphs/{{dataset}}/graphs.pt",
        features=expand(
            f"{R}/features/{{dataset}}/{{featurizer}}.npz",
            featurizer=config["analysis"]["featurizers"],
            allow_missing=True,
        ),
    output:
        metrics=seed_files(BASELINE_CELL, "metrics.json"),
        # every model's validation and test predictions (what a blend is chosen from)
        predictions=seed_files(BASELINE_CELL, "predictions.csv"),
        # the chosen models, in a format that cannot run code when read (cdssl-predict)
        models=[directory(f) for f in seed_files(BASELINE_CELL, "models")],
    params:
        featurizers=config["analysis"]["featurizers"],
        seeds=FT["seeds"],
        # the networks' split: the same seeds and fractions give the same crystals
        split={k: FT[k] for k in ("test_fraction", "val_fraction")},
        boosting=config["analysis"]["boosting"],
    threads: config["threads"]
    log:
        f"{R}/logs/baselines/{{dataset}}/{{fraction}}.log",
    benchmark:
        f"{R}/benchmarks/baselines/{{dataset}}/{{fraction}}.tsv"
    conda:
        "../../envs/cdssl.yaml"
    script:
        "../scripts/baselines.py"


# What a pretrained encoder adds beyond composition and structure (cdssl.hybrid): its
# crystal embedding of every fine-tuning crystal, and that of its untrained twin.
rule embed:
    input:
        encoder=f"{SEL}/encoder",
        graphs=f"{R}/graphs/{{dataset}}/graphs.pt",
    output:
        embeddings=EMBEDDINGS,
    wildcard_constraints:
        sigma="[0-9.]+",
    threads: config["threads"]
    log:
        f"{NET}/logs/embed/{{dataset}}/{ENC_RUN}.log",
    benchmark:
        f"{NET}/benchmarks/embed/{{dataset}}/{ENC_RUN}.tsv"
    conda:
        "../../envs/cdssl.yaml"
    script:
        "../scripts/embed.py"


rule hybrid:
    input:
        graphs=f"{R}/graphs/{{dataset}}/graphs.pt",
        # the saved models name it (cdssl-predict embeds new crystals with it)
        encoder=f"{SEL}/encoder",
        descriptors=f"{R}/features/{{dataset}}/magpie_structure.npz",
        embeddings=EMBEDDINGS,
        # the descriptor-only boosting's choices on each seed's split
        baselines=seed_files(BASELINE_CELL, "metrics.json"),
    output:
        metrics=seed_files(HYBRID_CELL, "metrics.json"),
        predictions=seed_files(HYBRID_CELL, "predictions.csv"),
        models=[directory(f) for f in seed_files(HYBRID_CELL, "models")],
    wildcard_constraints:
        sigma="[0-9.]+",
    params:
        seeds=FT["seeds"],
        # the networks' split: the same seeds and fractions give the same crystals
        split={k: FT[k] for k in ("test_fraction", "val_fraction")},
        boosting=config["analysis"]["boosting"],
        units=lambda wc: config["datasets"][wc.dataset].get("units", ""),
    threads: config["threads"]
    log:
        f"{NET}/logs/hybrid/{{dataset}}/{{fraction}}/{ENC_RUN}.log",
    benchmark:
        f"{NET}/benchmarks/hybrid/{{dataset}}/{{fraction}}/{ENC_RUN}.tsv"
    conda:
        "../../envs/cdssl.yaml"
    script:
        "../scripts/hybrid.py"
