import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from cdssl.config import ConfigError, validate_config


try:
    validate_config(
        config,
        source=", ".join(str(f) for f in workflow.configfiles) or "config",
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
SCRIPTS = Path(workflow.basedir) / "workflow" / "scripts"


def fmt_fraction(fraction):
    return f"{float(fraction):g}"


def finetune_metrics(dataset=None):
    datasets = [dataset] if dataset else FT["datasets"]
    return expand(
        f"{R}/finetune/{{dataset}}/{{fraction}}/{{seed}}/{{mode}}/metrics.json",
        dataset=datasets,
        fraction=[fmt_fraction(f) for f in FT["fractions"]],
        seed=FT["seeds"],
        mode=FT["modes"],
    )


def encoder_input(wildcards):
    # sl and sl_large never wait for pretraining
    return {"encoder": f"{R}/pretrain/encoder"} if wildcards.mode == "ssl" else {}


def graph_params():
    return {"cutoff": float(config["graph"]["cutoff"])}


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
