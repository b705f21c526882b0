"""The real Snakemake DAG: dry runs of the paper, an end-to-end tiny run, lint, reruns."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def snakemake(*args: str, workdir: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), *args]
    if workdir is not None:
        # an own working directory: own .snakemake metadata and locks, so a demo
        # running in the checkout does not collide with the tests
        cmd += ["--directory", str(workdir)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def job_counts(output: str) -> dict[str, int]:
    table = output.split("Job stats:")[-1]
    rows = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}
    rows.pop("total", None)
    return rows


def test_paper_dry_run_lists_the_whole_grid(tmp_path):
    out = snakemake("-n", "--configfile", str(ROOT / "config/config.yaml"), workdir=tmp_path).stdout
    counts = job_counts(out)
    assert counts["data"] == 8 and counts["graphs"] == 8
    assert counts["pretrain"] == 1 and counts["select_checkpoint"] == 1
    # one job per (dataset, fraction, mode) trains its 3 seeds: 7 x 7 x 2
    assert counts["finetune"] == 98


def test_sl_jobs_never_wait_for_pretraining(tmp_path):
    from cdssl.config import load_config

    config = load_config(ROOT / "config/config.yaml")
    ft = config["finetune"]
    targets = [
        f"results/finetune/{d}/{f:g}/{s}/sl/metrics.json"
        for d in ft["datasets"] for f in ft["fractions"] for s in ft["seeds"]
    ]
    assert len(targets) == 147
    # targets before --configfile, which takes several values
    out = snakemake("-n", *targets, "--configfile", str(ROOT / "config/config.yaml"), workdir=tmp_path).stdout
    counts = job_counts(out)
    assert counts["finetune"] == 49
    assert "pretrain" not in counts and "select_checkpoint" not in counts


def test_figures_target_lists_analysis_for_all_paper_datasets(tmp_path):
    out = snakemake("-n", "figures", "--configfile", str(ROOT / "config/config.yaml"), workdir=tmp_path).stdout
    counts = job_counts(out)
    for rule in ("aggregate", "figure3", "figure4", "probe", "figure5"):
        assert counts[rule] == 1
    assert counts["finetune"] == 98


def test_wrong_config_key_stops_before_any_job(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "config/test.yaml").read_text().replace("threads: 1", "treads: 1"))
    proc = snakemake("-n", "--configfile", str(bad), workdir=tmp_path, check=False)
    assert proc.returncode != 0
    assert "treads" in proc.stderr + proc.stdout and str(bad) in proc.stderr + proc.stdout


def test_lint_and_format(tmp_path):
    proc = snakemake("--lint", "--configfile", str(ROOT / "config/test.yaml"), workdir=tmp_path, check=False)
    assert "Congratulations" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    fmt = subprocess.run(
        [str(Path(sys.executable).parent / "snakefmt"), "--check", "Snakefile", "workflow/rules"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert fmt.returncode == 0, fmt.stderr


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("tiny")
    args = ["--configfile", str(ROOT / "config/test.yaml"), "--config", "results_dir=results",
            f"data_dir={ROOT / 'data/matminer'}"]
    snakemake("--cores", "2", *args, workdir=work)
    return work, args


def test_tiny_end_to_end_run_writes_every_output(tiny_run):
    work, _ = tiny_run
    r = work / "results"
    for dataset in ("dielectric", "dielectric_unlabelled"):
        assert (r / "graphs" / dataset / "graphs.pt").stat().st_size > 0
        assert (r / "graphs" / dataset / "skipped.csv").exists()
    selected = json.loads((r / "pretrain/selected.json").read_text())
    assert (r / "pretrain/encoder/model.pt").exists() and selected["epoch"] in (0, 1)
    for fraction in ("0.3", "0.7"):
        for mode in ("ssl", "sl", "sl_large"):
            d = r / "finetune/dielectric" / fraction / "0" / mode
            metrics = json.loads((d / "metrics.json").read_text())
            assert metrics["mode"] == mode and metrics["test_mae"] > 0
            assert (d / "predictions.csv").exists() and (d / "history.csv").exists()
            assert (r / "logs/finetune/dielectric" / fraction / f"{mode}.log").exists()
    for name in ("jobs.csv", "cells.csv", "summary.json", "probe.csv", "fig3_pretraining.png",
                 "fig4_finetune.png", "fig5_umap.png", "fig4/dielectric.png"):
        assert (r / "analysis" / name).stat().st_size > 0, name
    summary = json.loads((r / "analysis/summary.json").read_text())
    assert set(summary["comparisons"]) == {"ssl_vs_sl", "ssl_vs_sl_large"}


def test_changed_metrics_rerun_only_aggregation_and_figures(tiny_run):
    work, args = tiny_run
    assert job_counts(snakemake("-n", *args, workdir=work).stdout) == {}
    metrics = work / "results/finetune/dielectric/0.3/0/sl/metrics.json"
    data = json.loads(metrics.read_text())
    data["test_mae"] += 1.0
    metrics.write_text(json.dumps(data))
    counts = job_counts(snakemake("-n", *args, workdir=work).stdout)
    assert counts == {"aggregate": 1, "figure4": 1, "all": 1}


def test_report_is_generated(tiny_run):
    work, args = tiny_run
    snakemake(*args, "--report", "report.html", workdir=work)
    html = (work / "report.html").read_text(errors="ignore")
    assert "fig4_finetune.png" in html and "probe.csv" in html


def test_rule_scripts_import_the_checkouts_code(tmp_path, monkeypatch):
    """Snakemake gives scripts a scriptdir of workflow/rules/../scripts; the path must resolve."""
    from types import SimpleNamespace

    monkeypatch.syspath_prepend(str(ROOT / "workflow" / "scripts"))
    import _bootstrap

    monkeypatch.setattr(sys, "path", list(sys.path))
    smk = SimpleNamespace(scriptdir=str(ROOT / "workflow" / "rules" / ".." / "scripts"), log=[str(tmp_path / "x.log")],
                          threads=1, rule="probe")
    _bootstrap.start(smk)
    assert sys.path[0] == str(ROOT / "src")
