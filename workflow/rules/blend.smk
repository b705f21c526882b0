# The model a user should take for each cell (cdssl.blend): the validation-best of the
# cell's networks, feature baselines and hybrids, or their non-negative blend.


rule blend:
    input:
        # every candidate's validation and test predictions, seed by seed
        predictions=lambda wc: sorted({c["predictions"] for c in blend_candidates(wc)}),
    output:
        metrics=seed_files(BLEND_CELL, "metrics.json"),
        predictions=seed_files(BLEND_CELL, "predictions.csv"),
    params:
        candidates=blend_candidates,
        seeds=FT["seeds"],
        min_prediction_spread=config["analysis"]["min_prediction_spread"],
        units=lambda wc: config["datasets"][wc.dataset].get("units", ""),
    log:
        f"{NET}/logs/blend/{{dataset}}/{{fraction}}.log",
    benchmark:
        f"{NET}/benchmarks/blend/{{dataset}}/{{fraction}}.tsv"
    conda:
        "../../envs/cdssl.yaml"
    script:
        "../scripts/blend.py"
