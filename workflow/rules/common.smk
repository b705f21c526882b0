import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from cdssl.data import DataError, check_columns, matminer_data_home
from cdssl.sources import SOURCES
from cdssl.features import FEATURIZERS
from cdssl.config import (
    ConfigError,
    backbones,
    budgets,
    data_settings,
    excluded_datasets,
    finetune_settings,
    fmt_pool_size,
    fmt_sigma,
    graph_settings,
    pretrain_resources,
    pretrain_seeds,
    pretraining_runs,
    parse_pool_size,
    pool_sizes,
    pretrain_settings,
    probe_settings,
    schema_backbones,
    sigmas,
    validate_config,
)


# The config is config/config.yaml (the Snakefile's configfile) or, replacing it, the
# --configfile(s) given (profiles set replace-workflow-config), with --config on top;
# validated below against the schema (defaults filled) and our cross-field rules.
# CONFIGFILES names the files read, for messages and the results' metadata line: a file
# in the workflow by its path there (config/demo.yaml), any other by its full path.
DEFAULT_CONFIGFILE = Path(workflow.basedir) / "config" / "config.yaml"


def config_name(path):
    path = Path(path).resolve()
    base = Path(workflow.basedir).resolve()
    return str(path.relative_to(base)) if path.is_relative_to(base) else str(path)


CONFIGFILES = [
    config_name(f) for f in workflow.configfiles if Path(f) != DEFAULT_CONFIGFILE
] or [config_name(DEFAULT_CONFIGFILE)]
try:
    validate_config(config, source=", ".join(CONFIGFILES))
    for name in sorted(
        set(config["finetune"]["datasets"]) | {config["pretrain"]["dataset"]}
    ):
        check_columns(name, config["datasets"][name])
except (ConfigError, DataError) as exc:
    raise WorkflowError(str(exc))


# every backbone the schema allows (the config's list is BACKBONES, below)
BACKBONE_NAMES = schema_backbones()


wildcard_constraints:
    dataset="[A-Za-z0-9_.-]+",
    fraction="[0-9.]+",
    seed="[0-9]+",
    mode="ssl|sl_large|sl",
    sigma="[0-9.]+",
    pretrain_seed="[0-9]+",
    budget="[0-9]+",
    pool_size="all|[0-9]+",
    backbone="|".join(BACKBONE_NAMES),


R = config["results_dir"]
# where named datasets are staged or built: data_dir, else matminer's own folder
DATA_HOME = str(matminer_data_home(config["data_dir"]))
FT = config["finetune"]
PRE = config["pretrain"]["dataset"]
# Every path names every axis, whatever the length of its list, so that adding a value
# never moves a finished result: the data, graphs, features and feature baselines are
# shared under R; each backbone's networks and analysis live under NET; a pretraining run
# is one (pretraining seed, sigma, pool size) below it. tools/migrate_results.py moves a
# results folder of the layouts before this one.
BACKBONES = backbones(config)
NET = f"{R}/{{backbone}}"
SIGMAS = [fmt_sigma(s) for s in sigmas(config)]
PSEEDS = [str(s) for s in pretrain_seeds(config)]
POOL_SIZES = [fmt_pool_size(n) for n in pool_sizes(config)]
# the (pretraining seed, pool size) of each run per sigma: every seed at every size, or the
# later seeds at pretrain.later_seeds_at's sizes only
SEED_SIZES = [(str(p), fmt_pool_size(n)) for p, n in pretraining_runs(config)]
RUN = "seed_{pretrain_seed}/sigma_{sigma}/pool_size_{pool_size}"
PT = f"{NET}/pretrain/{RUN}"
# pretraining budgets (pretrain.export_epochs): the best encoder of the first {budget}
# epochs of a run, in a folder below the run's; without them an ssl cell loads the run's
# own best encoder (the best of every epoch, not a budget of one length)
BUDGETS = [str(k) for k in budgets(config)]
BUDGETED = bool(BUDGETS)
ENC_RUN = f"{RUN}/budget_{{budget}}" if BUDGETED else RUN
SEL = f"{NET}/pretrain/{ENC_RUN}"


def net(wildcards):
    """NET of a job (its backbone filled in)."""
    return NET.format(backbone=wildcards.backbone)


def pretrain_runs(pattern, first_seed=False, backbone=None, pool_size=None):
    """``pattern`` for every pretraining run, sigma by sigma, then seed by seed, then pool
    size by pool size (then budget by budget where the pattern has one), or for the first
    seed's runs only (Figure 3 and the probe); with ``backbone`` or ``pool_size``, that
    one's."""
    runs = [
        (p, n)
        for p, n in SEED_SIZES
        if (p == PSEEDS[0] or not first_seed) and n == (pool_size or n)
    ]
    return [
        f
        for s in SIGMAS
        for p, n in runs
        for f in expand(
            pattern,
            sigma=[s],
            pretrain_seed=[p],
            pool_size=[n],
            **({"budget": BUDGETS} if "{budget}" in pattern else {}),
            **({"backbone": backbone} if backbone else {}),
            allow_missing=True,
        )
    ]


def probe_encoders(wildcards):
    """The probe's encoders (the first pretraining seed's, sigma by sigma, then pool size
    by pool size, then budget by budget), each as its path and the keys that name it."""
    return [
        {
            "path": expand(
                f"{SEL}/encoder",
                backbone=wildcards.backbone,
                sigma=s,
                pretrain_seed=PSEEDS[0],
                pool_size=n,
                budget=b or "",
            )[0],
            "sigma": float(s),
            "budget": b and int(b),
            "pool_size": parse_pool_size(n),
        }
        for s in SIGMAS
        for n in POOL_SIZES
        for b in BUDGETS or [None]
    ]


def pretraining_files(wildcards):
    """Every pretraining run's encoder (each budget's, with budgets): its selected
    checkpoint, the run's lookup references and pool split, and the keys that name it
    (the map's pretext column)."""
    runs = []
    for s in SIGMAS:
        for p, n in SEED_SIZES:
            for b in BUDGETS or [None]:
                at = dict(
                    backbone=wildcards.backbone,
                    sigma=s,
                    pretrain_seed=p,
                    pool_size=n,
                    budget=b or "",
                )
                runs.append(
                    {
                        "selected": expand(f"{SEL}/selected.json", **at)[0],
                        "reference": expand(f"{PT}/reference.json", **at)[0],
                        "split": expand(f"{PT}/split.csv", **at)[0],
                        "keys": {
                            "sigma": float(s),
                            "budget": b and int(b),
                            "pool_size": parse_pool_size(n),
                            "pretrain_seed": int(p),
                        },
                    }
                )
    return runs


def fmt_fraction(fraction):
    return f"{float(fraction):g}"


# A fine-tuning cell's folder: {mode} for sl and sl_large, ssl/<run> for the pretrained
# model of each pretraining run (RUN).
CELL = f"{NET}/finetune/{{dataset}}/{{fraction}}/{{seed}}"
SSL_CELL = f"{CELL}/ssl/{ENC_RUN}"
# the baselines of a cell's split, beside the networks' folders, not among them
BASELINE_CELL = f"{R}/baselines/{{dataset}}/{{fraction}}/{{seed}}"
# the probes' fixed-feature rows: magpie_structure holds density and volume per atom,
# the very numbers the probes predict, so it would answer them by lookup
PROBE_FEATURIZERS = [
    f for f in config["analysis"]["featurizers"] if f != "magpie_structure"
]


def finetune_metrics(backbone="{backbone}"):
    """Every fine-tuning run's metrics.json (of ``backbone``, or with the wildcard)."""
    grid = dict(
        dataset=FT["datasets"],
        fraction=[fmt_fraction(f) for f in FT["fractions"]],
        seed=FT["seeds"],
        backbone=backbone,
    )
    scratch = [m for m in FT["modes"] if m != "ssl"]
    files = expand(
        f"{CELL}/{{mode}}/metrics.json", mode=scratch, **grid, allow_missing=True
    )
    if "ssl" in FT["modes"]:
        files += [
            f
            for run in pretrain_runs(f"{SSL_CELL}/metrics.json")
            for f in expand(run, **grid, allow_missing=True)
        ]
    return files


# the hybrid of each pretrained encoder (cdssl.hybrid): boosting on the strongest
# descriptors beside the encoder's principal components, and its random-init control
HYBRID = (
    config["analysis"]["hybrid"]
    and "ssl" in FT["modes"]
    and "magpie_structure" in config["analysis"]["featurizers"]
)
HYBRID_CELL = f"{CELL}/hybrid/{ENC_RUN}"
EMBEDDINGS = f"{NET}/embeddings/{{dataset}}/{ENC_RUN}.npz"


def hybrid_metrics(backbone="{backbone}"):
    """Every hybrid job's metrics.json (one per seed, both families in it)."""
    if not HYBRID:
        return []
    grid = dict(
        dataset=FT["datasets"],
        fraction=[fmt_fraction(f) for f in FT["fractions"]],
        seed=FT["seeds"],
        backbone=backbone,
    )
    return [
        f
        for run in pretrain_runs(f"{HYBRID_CELL}/metrics.json")
        for f in expand(run, **grid, allow_missing=True)
    ]


def run_keys(backbone):
    """Per ssl and hybrid metrics file of ``backbone``, the key its runs do not hold: the
    pool size of its encoder's pretraining (cdssl.runs fills the column from it)."""
    grid = dict(
        dataset=FT["datasets"],
        fraction=[fmt_fraction(f) for f in FT["fractions"]],
        seed=FT["seeds"],
        backbone=backbone,
    )
    patterns = [f"{SSL_CELL}/metrics.json"] if "ssl" in FT["modes"] else []
    patterns += [f"{HYBRID_CELL}/metrics.json"] if HYBRID else []
    return {
        f: {"pool_size": parse_pool_size(n)}
        for n in POOL_SIZES
        for pattern in patterns
        for run in pretrain_runs(pattern, pool_size=n)
        for f in expand(run, **grid)
    }


# the validation-chosen model of each cell and the blend of its models (cdssl.blend)
BLEND_CELL = f"{CELL}/blend"


def blend_candidates(wildcards):
    """Every model of a (backbone, dataset, fraction), seed by seed, that the blend may
    weight: the networks, the feature baselines and the hybrids, each with its keys, its
    validation and test predictions and the model cdssl-predict loads."""
    cell_keys = dict(
        backbone=wildcards.backbone,
        dataset=wildcards.dataset,
        fraction=wildcards.fraction,
    )
    runs = [
        {"sigma": s, "pretrain_seed": p, "pool_size": n, "budget": b}
        for s in SIGMAS
        for p, n in SEED_SIZES
        for b in BUDGETS or [None]
    ]
    out = []
    for seed in FT["seeds"]:
        cell = CELL.format(seed=seed, **cell_keys)
        base = BASELINE_CELL.format(seed=seed, **cell_keys)

        def add(label, kind, predictions, column, model, family, run=None):
            keys = {
                k: run and run[k]
                for k in ("sigma", "pretrain_seed", "budget", "pool_size")
            }
            keys["sigma"] = keys["sigma"] and float(keys["sigma"])
            keys["pretrain_seed"] = keys["pretrain_seed"] and int(keys["pretrain_seed"])
            keys["budget"] = keys["budget"] and int(keys["budget"])
            keys["pool_size"] = keys["pool_size"] and parse_pool_size(keys["pool_size"])
            out.append(
                dict(
                    seed=seed,
                    label=label,
                    kind=kind,
                    family=family,
                    predictions=predictions,
                    column=column,
                    model=model,
                    **keys,
                )
            )

        for mode in FT["modes"]:
            if mode != "ssl":
                add(
                    mode,
                    "network",
                    f"{cell}/{mode}/predictions.csv",
                    "prediction",
                    f"{cell}/{mode}/model",
                    mode,
                )
        for run in runs:
            enc = ENC_RUN.format(**{k: v for k, v in run.items() if v is not None})
            if "ssl" in FT["modes"]:
                add(
                    f"ssl/{enc}",
                    "network",
                    f"{cell}/ssl/{enc}/predictions.csv",
                    "prediction",
                    f"{cell}/ssl/{enc}/model",
                    "ssl",
                    run,
                )
            if HYBRID:
                for family in ("hybrid", "hybrid_random"):
                    add(
                        f"{family}/{enc}",
                        "hybrid",
                        f"{cell}/hybrid/{enc}/predictions.csv",
                        family,
                        f"{cell}/hybrid/{enc}/models/{family}",
                        family,
                        run,
                    )
        for featurizer in config["analysis"]["featurizers"]:
            for model in ("ridge", "boosting"):
                family = f"{featurizer}_{model}"
                add(
                    family,
                    "features",
                    f"{base}/predictions.csv",
                    family,
                    f"{base}/models",
                    family,
                )
    return out


def blend_metrics(backbone="{backbone}"):
    """Every blend job's metrics.json (one per seed, the blend and the best model in it)."""
    grid = dict(
        dataset=FT["datasets"],
        fraction=[fmt_fraction(f) for f in FT["fractions"]],
        seed=FT["seeds"],
        backbone=backbone,
    )
    return expand(f"{BLEND_CELL}/metrics.json", **grid, allow_missing=True)


def baseline_metrics():
    """The feature baselines of every (dataset, fraction, seed) of the grid."""
    return expand(
        f"{BASELINE_CELL}/metrics.json",
        dataset=FT["datasets"],
        fraction=[fmt_fraction(f) for f in FT["fractions"]],
        seed=FT["seeds"],
    )


def seed_files(cell, name):
    """One fine-tuning job's outputs: ``name`` for every seed of its cell."""
    return expand(f"{cell}/{name}", seed=FT["seeds"], allow_missing=True)


def data_input(wildcards):
    """The files a data job reads, so that editing one reruns the job: a user's file, or
    matminer's staged copies when data_dir holds them (otherwise matminer downloads
    them), and for a union with exclude_finetune the fine-tuning datasets' tables."""
    entry = config["datasets"][wildcards.dataset]
    if entry.get("file"):
        return {"file": entry["file"]}
    inputs = {}
    names = entry.get("union") or [entry.get("matminer") or entry["source"]]
    # a set this project builds and does not ship (cdssl.sources) is always an input:
    # rule source builds it, once, into the data folder; a shipped one is an input where
    # the data folder holds it, as matminer's staged files are
    built = [f"{DATA_HOME}/{name}.json.gz" for name in names if name in SOURCES]
    inputs["built"] = [
        path
        for path, name in zip(built, [n for n in names if n in SOURCES])
        if not SOURCES[name].shipped or Path(path).exists()
    ]
    if config["data_dir"]:
        staged = [
            Path(config["data_dir"]) / f"{name}.json.gz"
            for name in names
            if name not in SOURCES
        ]
        inputs["staged"] = [str(path) for path in staged if path.exists()]
    inputs["exclude"] = [
        f"{R}/data/{name}.json.gz"
        for name in excluded_datasets(config, wildcards.dataset)
    ]
    return inputs


def analysis_targets():
    """The analysis of one backbone (its NET)."""
    return (
        [
            f"{NET}/analysis/jobs.csv",
            f"{NET}/analysis/cells.csv",
            f"{NET}/analysis/summary.json",
            f"{NET}/analysis/results.md",
            f"{NET}/analysis/fig3_pretraining.png",
            f"{NET}/analysis/fig4_finetune.png",
            f"{NET}/analysis/fig4",
            f"{NET}/analysis/probe.csv",
            f"{NET}/analysis/map.png",
        ]
        + ([f"{NET}/analysis/fig5_umap.png"] if config["analysis"]["umap"] else [])
        + ([f"{NET}/analysis/fig_budget.png"] if BUDGETED else [])
    )


def every_backbone(paths):
    """``paths`` for every backbone, in order, once each."""
    return list(dict.fromkeys(f for p in paths for f in expand(p, backbone=BACKBONES)))


def comparison_targets():
    """With several backbones, their comparison (one backbone has nothing to compare)."""
    if len(BACKBONES) < 2:
        return []
    return [f"{R}/analysis/backbones.csv", f"{R}/analysis/backbones.md"]


def backbone_runs():
    """Per backbone, the files of its analysis and of its pretraining runs: what the
    comparison reads, by name (its inputs are the same files, flattened)."""
    return {
        backbone: {
            "jobs": f"{R}/{backbone}/analysis/jobs.csv",
            "cells": f"{R}/{backbone}/analysis/cells.csv",
            "summary": f"{R}/{backbone}/analysis/summary.json",
            "selected": pretrain_runs(f"{PT}/selected.json", backbone=backbone),
            "reference": pretrain_runs(f"{PT}/reference.json", backbone=backbone),
        }
        for backbone in BACKBONES
    }


def all_targets():
    datasets = sorted(set(FT["datasets"]) | {PRE})
    return (
        expand(f"{R}/graphs/{{dataset}}/graphs.pt", dataset=datasets)
        + every_backbone(
            pretrain_runs(f"{PT}/selected.json")
            + (pretrain_runs(f"{SEL}/selected.json") if BUDGETED else [])
            + finetune_metrics()
            + analysis_targets()
        )
        + comparison_targets()
    )
