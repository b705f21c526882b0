import sys
from pathlib import Path

from snakemake.utils import update_config

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from cdssl.config import (
    ConfigError,
    data_settings,
    excluded_datasets,
    finetune_settings,
    graph_settings,
    load_config,
    pretrain_settings,
    probe_settings,
    validate_config,
)


# No `configfile:` directive: Snakemake would merge config/config.yaml beneath every
# --configfile, and a user config missing a section would silently run the paper's
# settings. Each config file is complete on its own; without --configfile the paper's
# config/config.yaml is used, with --config key=value applied on top.
DEFAULT_CONFIG = Path(workflow.basedir) / "config" / "config.yaml"
try:
    if not workflow.overwrite_configfiles:
        overrides = dict(config)
        config.clear()
        config.update(load_config(DEFAULT_CONFIG))
        update_config(config, overrides)
    validate_config(
        config,
        source=", ".join(str(f) for f in workflow.overwrite_configfiles)
        or str(DEFAULT_CONFIG),
    )
except ConfigError as exc:
    raise WorkflowError(str(exc))


wildcard_constraints:
    dataset="[A-Za-z0-9_.-]+",
    fraction="[0-9.]+",
    seed="[0-9]+",
    mode="ssl|sl_large|sl",


R = config["results_dir"]
FT = config["finetune"]
PRE = config["pretrain"]["dataset"]


def fmt_fraction(fraction):
    return f"{float(fraction):g}"


def finetune_metrics():
    return expand(
        f"{R}/finetune/{{dataset}}/{{fraction}}/{{seed}}/{{mode}}/metrics.json",
        dataset=FT["datasets"],
        fraction=[fmt_fraction(f) for f in FT["fractions"]],
        seed=FT["seeds"],
        mode=FT["modes"],
    )


def seed_files(name):
    """One fine-tuning job's outputs: ``name`` for every seed of its cell."""
    return expand(
        f"{R}/finetune/{{dataset}}/{{fraction}}/{{seed}}/{{mode}}/{name}",
        seed=FT["seeds"],
        allow_missing=True,
    )


def encoder_input(wildcards):
    # sl and sl_large never wait for pretraining
    return {"encoder": f"{R}/pretrain/encoder"} if wildcards.mode == "ssl" else {}


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
    return [
        f"{R}/analysis/jobs.csv",
        f"{R}/analysis/cells.csv",
        f"{R}/analysis/summary.json",
        f"{R}/analysis/fig3_pretraining.png",
        f"{R}/analysis/fig4_finetune.png",
        f"{R}/analysis/fig4",
        f"{R}/analysis/probe.csv",
    ] + ([f"{R}/analysis/fig5_umap.png"] if config["analysis"]["umap"] else [])


def all_targets():
    datasets = sorted(set(FT["datasets"]) | {PRE})
    return (
        expand(f"{R}/graphs/{{dataset}}/graphs.pt", dataset=datasets)
        + [f"{R}/pretrain/selected.json"]
        + finetune_metrics()
        + analysis_targets()
    )
