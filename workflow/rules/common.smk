import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from cdssl.data import DataError, check_columns
from cdssl.features import FEATURIZERS
from cdssl.config import (
    ConfigError,
    backbones,
    budgets,
    data_settings,
    excluded_datasets,
    finetune_settings,
    fmt_sigma,
    graph_settings,
    pretrain_resources,
    pretrain_seeds,
    pretrain_settings,
    probe_settings,
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


wildcard_constraints:
    dataset="[A-Za-z0-9_.-]+",
    fraction="[0-9.]+",
    seed="[0-9]+",
    mode="ssl|sl_large|sl",
    sigma="[0-9.]+",
    pretrain_seed="[0-9]+",
    budget="[0-9]+",
    backbone="megnet|m3gnet|tensornet",


R = config["results_dir"]
FT = config["finetune"]
PRE = config["pretrain"]["dataset"]
# models.backbone: with several, each backbone's networks and analysis live under their
# own folder, NET; the data, graphs, features and feature baselines stay under R, shared.
# With one, NET is R and no path names a backbone (as before the option existed).
BACKBONES = backbones(config)
MULTI = len(BACKBONES) > 1
NET = f"{R}/{{backbone}}" if MULTI else R


def net(wildcards):
    """NET of a job (its backbone filled in)."""
    return NET.format(backbone=wildcards.get("backbone"))


# one pretraining per noise scale; a single sigma is a sweep of one
SIGMAS = [fmt_sigma(s) for s in sigmas(config)]
# several pretraining seeds: one run per (sigma, seed), each in a seed folder below its
# sigma's; with one seed a run is its sigma's folder, as before the option existed
PSEEDS = [str(s) for s in pretrain_seeds(config)]
SEEDED = len(PSEEDS) > 1
RUN = "sigma_{sigma}/seed_{pretrain_seed}" if SEEDED else "sigma_{sigma}"
PT = f"{NET}/pretrain/{RUN}"
# pretraining budgets (pretrain.export_epochs): the best encoder of the first {budget}
# epochs of each run, in a folder below the run's; without them an ssl cell loads the
# run's own best encoder and no path has a budget
BUDGETS = [str(k) for k in budgets(config)]
BUDGETED = bool(BUDGETS)
ENC_RUN = f"{RUN}/budget_{{budget}}" if BUDGETED else RUN
SEL = f"{NET}/pretrain/{ENC_RUN}"


def pretrain_runs(pattern, first_seed=False):
    """``pattern`` for every pretraining run, sigma by sigma (then seed by seed, then
    budget by budget where the pattern has one), or for the first seed's runs only
    (Figure 3 and the probe)."""
    seeds = PSEEDS[:1] if first_seed else PSEEDS
    return expand(
        pattern,
        sigma=SIGMAS,
        **({"pretrain_seed": seeds} if SEEDED else {}),
        **({"budget": BUDGETS} if "{budget}" in pattern else {}),
        allow_missing=True,
    )


def probe_encoders():
    """The probe's encoders (the first pretraining seed's, sigma by sigma, then budget by
    budget) with each one's sigma and budget, as parallel lists."""
    runs = [(s, b) for s in SIGMAS for b in BUDGETS or [None]]
    paths = [
        expand(
            f"{SEL}/encoder",
            sigma=s,
            pretrain_seed=PSEEDS[0],
            budget=b or "",
            allow_missing=True,
        )[0]
        for s, b in runs
    ]
    return paths, [s for s, _ in runs], [b and int(b) for _, b in runs]


def run_folder(wildcards):
    """The folder name of a job's pretraining encoder (ENC_RUN with its wildcards filled)."""
    return ENC_RUN.format(
        sigma=wildcards.sigma,
        pretrain_seed=wildcards.get("pretrain_seed"),
        budget=wildcards.get("budget"),
    )


def fmt_fraction(fraction):
    return f"{float(fraction):g}"


# A fine-tuning cell's folder: {mode} for sl and sl_large, ssl/<run> for the pretrained
# model of each pretraining run (RUN).
CELL = f"{NET}/finetune/{{dataset}}/{{fraction}}/{{seed}}"
SSL_CELL = f"{CELL}/ssl/{ENC_RUN}"
# the baselines of a cell's split, beside the networks' folders, not among them
BASELINE_CELL = f"{R}/baselines/{{dataset}}/{{fraction}}/{{seed}}"


def finetune_metrics():
    grid = dict(
        dataset=FT["datasets"],
        fraction=[fmt_fraction(f) for f in FT["fractions"]],
        seed=FT["seeds"],
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
    if config["data_dir"]:
        names = entry.get("union") or [entry["matminer"]]
        staged = [Path(config["data_dir"]) / f"{name}.json.gz" for name in names]
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
        ]
        + ([f"{NET}/analysis/fig5_umap.png"] if config["analysis"]["umap"] else [])
        + ([f"{NET}/analysis/fig_budget.png"] if BUDGETED else [])
    )


def every_backbone(paths):
    """``paths`` for every backbone (unchanged where they name none), in order, once each."""
    return list(dict.fromkeys(f for p in paths for f in expand(p, backbone=BACKBONES)))


def comparison_targets():
    return (
        [f"{R}/analysis/backbones.csv", f"{R}/analysis/backbones.md"] if MULTI else []
    )


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
