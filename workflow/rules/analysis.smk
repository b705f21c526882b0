rule aggregate:
    input:
        metrics=finetune_metrics(),
        baselines=baseline_metrics(),
        hybrids=hybrid_metrics(),
        blends=blend_metrics(),
    output:
        jobs=report(
            f"{NET}/analysis/jobs.csv",
            caption="../report/jobs.rst",
            category="Tables",
        ),
        cells=report(
            f"{NET}/analysis/cells.csv",
            caption="../report/cells.rst",
            category="Tables",
        ),
        summary=report(
            f"{NET}/analysis/summary.json",
            caption="../report/summary.rst",
            category="Tables",
        ),
    params:
        min_prediction_spread=config["analysis"]["min_prediction_spread"],
        # the keys of the runs that are not in their metrics (cdssl.runs)
        backbone=lambda wc: wc.backbone,
        pool=PRE,
        run_keys=lambda wc: run_keys(wc.backbone),
    log:
        f"{NET}/logs/analysis/aggregate.log",
    benchmark:
        f"{NET}/benchmarks/analysis/aggregate.tsv"
    conda:
        "../../envs/cdssl.yaml"
    script:
        "../scripts/aggregate.py"


# the map: SSL against the strongest answer without pretraining, and the hybrid against
# its random-init control, per task and pretraining pool size (cdssl.pretraining_map)
rule map:
    input:
        summary=f"{NET}/analysis/summary.json",
        selected=lambda wc: [r["selected"] for r in pretraining_files(wc)],
        reference=lambda wc: [r["reference"] for r in pretraining_files(wc)],
        split=lambda wc: [r["split"] for r in pretraining_files(wc)],
    output:
        map=report(
            f"{NET}/analysis/map.csv",
            caption="../report/map.rst",
            category="Tables",
        ),
        trend=f"{NET}/analysis/map_trend.csv",
        png=report(
            f"{NET}/analysis/map.png",
            caption="../report/map.rst",
            category="Figures",
        ),
    params:
        # the keys of each file above, in their order
        run_keys=lambda wc: [r["keys"] for r in pretraining_files(wc)],
    log:
        f"{NET}/logs/analysis/map.log",
    benchmark:
        f"{NET}/benchmarks/analysis/map.tsv"
    conda:
        "../../envs/cdssl.yaml"
    script:
        "../scripts/map.py"


# the run's tables in one Markdown file under a metadata line (machine, versions,
# commit, config): what docs/results.md quotes (tools/results_doc.py)
rule results:
    input:
        cells=f"{NET}/analysis/cells.csv",
        summary=f"{NET}/analysis/summary.json",
        selected=pretrain_runs(f"{PT}/selected.json"),
        reference=pretrain_runs(f"{PT}/reference.json"),
        probe=f"{NET}/analysis/probe.csv",
        map=f"{NET}/analysis/map.csv",
        trend=f"{NET}/analysis/map_trend.csv",
        # with pretrain.export_epochs: the budget table
        budget=[f"{NET}/analysis/budget.csv"] if BUDGETED else [],
    output:
        results=report(
            f"{NET}/analysis/results.md",
            caption="../report/results.rst",
            category="Tables",
        ),
    params:
        configfiles=CONFIGFILES,
        # the run's jobs: the shared ones (data, graphs, features, baselines) and this
        # backbone's
        benchmarks=[f"{R}/benchmarks", f"{NET}/benchmarks"],
    log:
        f"{NET}/logs/analysis/results.log",
    benchmark:
        f"{NET}/benchmarks/analysis/results.tsv"
    conda:
        "../../envs/cdssl.yaml"
    script:
        "../scripts/results.py"


rule figure3:
    input:
        # one curve per noise scale and pool size, in the order of pretrain.sigma and
        # pretrain.pool_size (the first pretraining seed's runs)
        history=pretrain_runs(f"{PT}/history.csv", first_seed=True),
        selected=pretrain_runs(f"{PT}/selected.json", first_seed=True),
        reference=pretrain_runs(f"{PT}/reference.json", first_seed=True),
    output:
        png=report(
            f"{NET}/analysis/fig3_pretraining.png",
            caption="../report/fig3.rst",
            category="Figures",
        ),
    params:
        # the curves' keys, in the order of the files (sigma by sigma, pool size by pool size)
        sigmas=[s for s in SIGMAS for _ in POOL_SIZES],
        pool_sizes=[parse_pool_size(n) for _ in SIGMAS for n in POOL_SIZES],
    log:
        f"{NET}/logs/analysis/figure3.log",
    benchmark:
        f"{NET}/benchmarks/analysis/figure3.tsv"
    conda:
        "../../envs/cdssl.yaml"
    script:
        "../scripts/figure3.py"


rule figure4:
    input:
        jobs=f"{NET}/analysis/jobs.csv",
        cells=f"{NET}/analysis/cells.csv",
    output:
        png=report(
            f"{NET}/analysis/fig4_finetune.png",
            caption="../report/fig4.rst",
            category="Figures",
        ),
        per_dataset=report(
            directory(f"{NET}/analysis/fig4"),
            patterns=["{name}.png"],
            caption="../report/fig4.rst",
            category="Figures",
        ),
    params:
        modes=FT["modes"],
    log:
        f"{NET}/logs/analysis/figure4.log",
    benchmark:
        f"{NET}/benchmarks/analysis/figure4.tsv"
    conda:
        "../../envs/cdssl.yaml"
    script:
        "../scripts/figure4.py"


rule probe:
    input:
        # one pretrained encoder per noise scale (and with pretrain.export_epochs per
        # budget), the first pretraining seed's; the split depends on the seed and
        # val_fraction only, so every sigma of that seed shares it
        encoders=lambda wc: [e["path"] for e in probe_encoders(wc)],
        graphs=f"{R}/graphs/{PRE}/graphs.pt",
        # (the largest pool's: a smaller pool's crystals are a subset of its own, so its
        # validation crystals are unseen by every pool size's encoder)
        split=pretrain_runs(
            f"{PT}/split.csv", first_seed=True, pool_size=POOL_SIZES[-1]
        )[0],
        # crystals pretraining never saw, beside its validation split: the fine-tuning
        # sets, when the pretraining pool left them out
        finetune_graphs=[
            f"{R}/graphs/{dataset}/graphs.pt"
            for dataset in excluded_datasets(config, PRE)
        ],
        # the fixed features of the same crystals, dataset by dataset (pretraining pool
        # first), featurizer by featurizer
        features=[
            f"{R}/features/{dataset}/{featurizer}.npz"
            for dataset in [PRE, *excluded_datasets(config, PRE)]
            for featurizer in PROBE_FEATURIZERS
        ],
    output:
        probe=report(
            f"{NET}/analysis/probe.csv",
            caption="../report/probe.rst",
            category="Tables",
        ),
        embeddings=f"{NET}/analysis/embeddings.npz",
    params:
        settings=lambda wc: probe_settings(config, wc.backbone),
        # each encoder's path with its sigma, budget and pool size
        encoders=probe_encoders,
        # {dataset: {featurizer: file}}: the inputs' features, by name
        features={
            dataset: {
                featurizer: f"{R}/features/{dataset}/{featurizer}.npz"
                for featurizer in PROBE_FEATURIZERS
            }
            for dataset in [PRE, *excluded_datasets(config, PRE)]
        },
    threads: config["threads"]
    log:
        f"{NET}/logs/analysis/probe.log",
    benchmark:
        f"{NET}/benchmarks/analysis/probe.tsv"
    conda:
        "../../envs/cdssl.yaml"
    script:
        "../scripts/probe.py"


rule figure5:
    input:
        embeddings=f"{NET}/analysis/embeddings.npz",
    output:
        png=report(
            f"{NET}/analysis/fig5_umap.png",
            caption="../report/fig5.rst",
            category="Figures",
        ),
    log:
        f"{NET}/logs/analysis/figure5.log",
    benchmark:
        f"{NET}/benchmarks/analysis/figure5.tsv"
    conda:
        "../../envs/cdssl.yaml"
    script:
        "../scripts/figure5.py"


# pretrain.export_epochs: each budget's ssl model against SL large and the strongest
# baseline, per fraction and over all fractions
rule budget_table:
    input:
        jobs=f"{NET}/analysis/jobs.csv",
        cells=f"{NET}/analysis/cells.csv",
        summary=f"{NET}/analysis/summary.json",
        selected=pretrain_runs(f"{SEL}/selected.json"),
    output:
        budget=report(
            f"{NET}/analysis/budget.csv",
            caption="../report/budget.rst",
            category="Tables",
        ),
    log:
        f"{NET}/logs/analysis/budget_table.log",
    benchmark:
        f"{NET}/benchmarks/analysis/budget_table.tsv"
    conda:
        "../../envs/cdssl.yaml"
    script:
        "../scripts/budget_table.py"


rule figure_budget:
    input:
        budget=f"{NET}/analysis/budget.csv",
        # the first pretraining run's curve and references
        history=pretrain_runs(f"{PT}/history.csv", first_seed=True)[0],
        reference=pretrain_runs(f"{PT}/reference.json", first_seed=True)[0],
    output:
        png=report(
            f"{NET}/analysis/fig_budget.png",
            caption="../report/fig_budget.rst",
            category="Figures",
        ),
    log:
        f"{NET}/logs/analysis/figure_budget.log",
    benchmark:
        f"{NET}/benchmarks/analysis/figure_budget.tsv"
    conda:
        "../../envs/cdssl.yaml"
    script:
        "../scripts/figure_budget.py"


# models.backbone as a list: the backbones side by side, each with its own SL large and
# the strongest baseline (the shared feature baselines, or a backbone's own SL)
rule backbone_table:
    input:
        every_backbone(
            [
                f"{NET}/analysis/jobs.csv",
                f"{NET}/analysis/cells.csv",
                f"{NET}/analysis/summary.json",
            ]
            + pretrain_runs(f"{PT}/selected.json")
            + pretrain_runs(f"{PT}/reference.json")
        ),
    output:
        table=report(
            f"{R}/analysis/backbones.csv",
            caption="../report/backbones.rst",
            category="Tables",
        ),
        markdown=report(
            f"{R}/analysis/backbones.md",
            caption="../report/backbones.rst",
            category="Tables",
        ),
    params:
        # the same files by backbone and by name
        runs=backbone_runs(),
        configfiles=CONFIGFILES,
        # the shared stages' jobs and every backbone's: the comparison's summed time
        benchmarks=[f"{R}/benchmarks"] + expand(f"{NET}/benchmarks", backbone=BACKBONES),
    log:
        f"{R}/logs/analysis/backbone_table.log",
    benchmark:
        f"{R}/benchmarks/analysis/backbone_table.tsv"
    conda:
        "../../envs/cdssl.yaml"
    script:
        "../scripts/backbone_table.py"
