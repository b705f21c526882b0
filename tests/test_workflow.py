"""The real Snakemake DAG: dry runs of the paper, an end-to-end tiny run, lint, reruns."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.slow  # real Snakemake runs and dry runs; the lint tests are tiered by their own marker

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
    # one job per (dataset, fraction, mode) trains its 3 seeds: 7 x 7 for each of ssl, sl
    assert counts["finetune"] == 49 and counts["finetune_ssl"] == 49
    # the feature baselines: each featurizer (Magpie, Magpie+structure, CHGNet) once per
    # fine-tuning dataset, the pool's for the probe's rows (Magpie+structure holds the
    # probes' targets: not a probe row), the models once per (dataset, fraction)
    assert counts["features"] == 7 * 3 + 2 and counts["baselines"] == 49


def test_the_paper_configs_dielectric_constant_data_job_runs_offline(tmp_path):
    # the paper's own entry, unchanged, reads the embedded file when data_dir points there
    out = tmp_path / "out"
    snakemake(
        f"{out}/data/dielectric_constant.json.gz",
        "--cores",
        "1",
        "--configfile",
        str(ROOT / "config/config.yaml"),
        "--config",
        f"data_dir={ROOT / 'data/matminer'}",
        f"results_dir={out}",
        workdir=tmp_path,
    )
    from cdssl.data import read_table

    table = read_table(out / "data/dielectric_constant.json.gz")
    assert len(table) == 1056
    log = (out / "logs/data/dielectric_constant.log").read_text()
    assert "1056 rows written" in log


def test_several_nodes_on_a_workstation_stop_the_pretraining_job_with_the_reason(tmp_path):
    # the rule script's own path for nodes > 1, outside SLURM: a clear error in the rule's log
    config = yaml.safe_load((ROOT / "config/test.yaml").read_text())
    config["pretrain"].update(sigma=0.5, nodes=2, strategy="ddp")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    proc = snakemake(
        "results/megnet/pretrain/seed_0/sigma_0.5/pool_size_all/history.csv",
        "--cores",
        "1",
        "--configfile",
        str(tmp_path / "config.yaml"),
        "--config",
        "results_dir=results",
        f"data_dir={ROOT / 'data/matminer'}",
        workdir=tmp_path,
        check=False,
    )
    assert proc.returncode != 0
    log = (tmp_path / "results/megnet/logs/pretrain/seed_0/sigma_0.5/pool_size_all.log").read_text()
    assert "pretrain.nodes=2 needs a SLURM allocation of 2 nodes" in log, log[-2000:]


def test_the_study_lists_the_full_grid_of_its_four_tasks(tmp_path):
    counts = job_counts(snakemake("-n", "--configfile", str(ROOT / "config/study.yaml"), workdir=tmp_path).stdout)
    # the pool and four fine-tuning datasets; 4 datasets x 7 fractions x (sl, sl_large | ssl)
    assert counts["data"] == 5 and counts["graphs"] == 5
    assert counts["finetune"] == 4 * 7 * 2 and counts["finetune_ssl"] == 4 * 7


def test_the_oqmd_config_plans_its_built_source_the_pool_and_seven_tasks(tmp_path):
    """The 30k world dry: the OQMD set is one job (built from its wheel where it is not
    yet built), the pool and the seven tasks each a data and a graphs job."""
    config = yaml.safe_load((ROOT / "config/oqmd.yaml").read_text())
    config["data_dir"] = str(tmp_path / "data")  # nothing built there yet
    (tmp_path / "data").mkdir()
    shutil.copy(ROOT / "data/matminer/mp_2018.json.gz", tmp_path / "data")  # shipped: never rebuilt
    path = tmp_path / "oqmd.yaml"
    path.write_text(yaml.safe_dump(config))
    out = snakemake("-n", "--configfile", str(path), workdir=tmp_path).stdout
    counts = job_counts(out)
    assert counts["source"] == 1 and f"{tmp_path}/data/oqmd_icsd.json.gz" in out
    assert counts["data"] == 8 and counts["graphs"] == 8
    # 7 tasks x 3 fractions x (sl, sl_large | ssl per pretraining seed, 2)
    assert counts["finetune"] == 7 * 3 * 2 and counts["finetune_ssl"] == 7 * 3 * 2 and counts["pretrain"] == 2
    assert counts["baselines"] == 7 * 3


def test_the_map_config_plans_three_pool_sizes_and_a_share_of_it_the_same_pretraining(tmp_path):
    """config/map.yaml dry: 3 pool sizes, a second pretraining seed at the largest, one map job; its first
    share (one task) plans the same pretraining runs and pool, a subset of the whole's
    outputs, so the shares add up to the whole without retraining."""
    config = yaml.safe_load((ROOT / "config/map.yaml").read_text())
    config["data_dir"] = str(tmp_path / "data")
    (tmp_path / "data").mkdir()
    shutil.copy(ROOT / "data/matminer/mp_2018.json.gz", tmp_path / "data")
    path = tmp_path / "map.yaml"
    path.write_text(yaml.safe_dump(config))
    whole = snakemake("-n", "--configfile", str(path), workdir=tmp_path).stdout
    share = snakemake(
        "-n", "--configfile", str(path), str(ROOT / "config/overlays/map_share_1.yaml"), workdir=tmp_path
    ).stdout
    counts = job_counts(whole)
    # 3 pool sizes with the first pretraining seed, the largest with the second too
    assert counts["pretrain"] == 3 + 1 and counts["map"] == 1
    # 5 tasks x 3 fractions, one job per (cell, encoder)
    assert counts["finetune_ssl"] == 5 * 3 * 4 and counts["finetune"] == 5 * 3
    assert job_counts(share)["finetune_ssl"] == 3 * 4
    outputs = lambda text: set(re.findall(r"output: (.*)", text))  # noqa: E731
    pretraining = lambda text: {o for o in outputs(text) if "/pretrain/" in o or "data/pretrain_pool" in o}  # noqa: E731
    # the pool, then per run its pretraining and its checkpoint selection
    assert pretraining(share) == pretraining(whole) and len(pretraining(whole)) == 1 + 4 + 4
    assert "seed_1/sigma_0.5/pool_size_16000" in " ".join(pretraining(whole))
    share_cells = {o for o in outputs(share) if "/finetune/" in o}
    assert share_cells and share_cells <= outputs(whole)
    # same paths are not enough: the pool's and each pretraining's declared settings (their
    # identity) must not depend on the tasks a share fine-tunes
    from cdssl.config import data_settings, pretrain_settings, validate_config

    shared = copy.deepcopy(config)
    shared["finetune"].update(yaml.safe_load((ROOT / "config/overlays/map_share_1.yaml").read_text())["finetune"])
    for c in (config, shared):
        validate_config(c, "map.yaml")
    assert data_settings(shared, "pretrain_pool") == data_settings(config, "pretrain_pool")
    assert pretrain_settings(shared, seed=1, pool_size="1000") == pretrain_settings(config, seed=1, pool_size="1000")


def test_a_sigma_list_gives_each_noise_scale_its_pretraining_and_ssl_cells(tmp_path):
    from cdssl.config import load_config

    config = load_config(ROOT / "config/test.yaml")
    assert config["pretrain"]["sigma"] == [0.3, 0.5]
    counts = job_counts(snakemake("-n", "--configfile", str(ROOT / "config/test.yaml"), workdir=tmp_path).stdout)
    # 2 fractions x 1 seed: ssl cells per sigma, sl and sl_large shared
    assert counts["pretrain"] == 2 and counts["select_checkpoint"] == 2
    assert counts["finetune_ssl"] == 2 * 2 and counts["finetune"] == 2 * 2
    assert counts["probe"] == 1 and counts["figure3"] == 1
    one = tmp_path / "one.yaml"
    one.write_text((ROOT / "config/test.yaml").read_text().replace("sigma: [0.3, 0.5]", "sigma: 0.5"))
    counts = job_counts(snakemake("-n", "--configfile", str(one), workdir=tmp_path).stdout)
    assert counts["pretrain"] == 1 and counts["finetune_ssl"] == 2 and counts["finetune"] == 4


def test_a_pretrain_seed_list_gives_each_seed_its_pretraining_and_ssl_cells(tmp_path):
    seeded = tmp_path / "seeded.yaml"
    seeded.write_text((ROOT / "config/test.yaml").read_text().replace("  seed: 0\n", "  seed: [0, 1]\n", 1))
    out = snakemake("-n", "--configfile", str(seeded), workdir=tmp_path).stdout
    counts = job_counts(out)
    # 2 sigmas x 2 pretraining seeds, each with its ssl cells (2 fractions x 1 seed);
    # sl and sl_large do not depend on pretraining: shared
    assert counts["pretrain"] == 4 and counts["select_checkpoint"] == 4
    assert counts["finetune_ssl"] == 4 * 2 and counts["finetune"] == 2 * 2
    # Figure 3 and the probe: one job each, on the first seed's runs
    assert counts["probe"] == 1 and counts["figure3"] == 1
    for run in (
        "seed_0/sigma_0.3/pool_size_all",
        "seed_1/sigma_0.3/pool_size_all",
        "seed_0/sigma_0.5/pool_size_all",
        "seed_1/sigma_0.5/pool_size_all",
    ):
        assert f"results/test/megnet/pretrain/{run}/history.csv" in out, run
        assert f"results/test/megnet/finetune/dielectric/0.3/0/ssl/{run}/metrics.json" in out, run
    # one seed, bare or a list of one: the same paths, each naming the seed, so adding a
    # seed to the list later moves no finished result
    outputs = lambda text: sorted(re.findall(r"output: (.*)", text))  # noqa: E731
    bare = snakemake("-n", "--configfile", str(ROOT / "config/test.yaml"), workdir=tmp_path).stdout
    one = tmp_path / "one.yaml"
    one.write_text((ROOT / "config/test.yaml").read_text().replace("  seed: 0\n", "  seed: [0]\n", 1))
    assert outputs(snakemake("-n", "--configfile", str(one), workdir=tmp_path).stdout) == outputs(bare)
    assert "results/test/megnet/pretrain/seed_0/sigma_0.5/pool_size_all/history.csv" in bare
    assert set(outputs(bare)) <= set(outputs(out)) - {o for o in outputs(out) if "seed_1" in o}


def test_a_pool_size_list_gives_each_size_its_pretraining_and_ssl_cells(tmp_path):
    sized = tmp_path / "sized.yaml"
    sized.write_text("pretrain: {pool_size: [40, 20], sigma: 0.5}\n")
    out = snakemake("-n", "--configfile", str(ROOT / "config/test.yaml"), str(sized), workdir=tmp_path).stdout
    counts = job_counts(out)
    # one pretraining per size, each with its ssl cells and hybrids (2 fractions x 1 seed);
    # sl and sl_large shared; Figure 3 and the probe take every size in one job
    assert counts["pretrain"] == 2 and counts["select_checkpoint"] == 2 and counts["embed"] == 2
    assert counts["finetune_ssl"] == 2 * 2 and counts["hybrid"] == 2 * 2 and counts["finetune"] == 2 * 2
    # the map takes every size's pretraining (selected loss, lookups, pool) in one job
    assert counts["probe"] == 1 and counts["figure3"] == 1 and counts["map"] == 1
    for size in ("20", "40"):
        assert f"pretrain/seed_0/sigma_0.5/pool_size_{size}/split.csv" in out, size
        run = f"seed_0/sigma_0.5/pool_size_{size}"
        assert f"results/test/megnet/pretrain/{run}/history.csv" in out, run
        assert f"results/test/megnet/finetune/dielectric/0.3/0/ssl/{run}/metrics.json" in out, run
    # one size, bare or a list of one: the same paths, each naming the size
    outputs = lambda text: sorted(re.findall(r"output: (.*)", text))  # noqa: E731
    sized.write_text("pretrain: {pool_size: 40, sigma: 0.5}\n")
    bare = snakemake("-n", "--configfile", str(ROOT / "config/test.yaml"), str(sized), workdir=tmp_path).stdout
    sized.write_text("pretrain: {pool_size: [40], sigma: 0.5}\n")
    one = snakemake("-n", "--configfile", str(ROOT / "config/test.yaml"), str(sized), workdir=tmp_path).stdout
    assert outputs(one) == outputs(bare) and "pretrain/seed_0/sigma_0.5/pool_size_40/history.csv" in bare
    assert set(outputs(bare)) <= set(outputs(out))  # a size added later moves nothing


def test_later_pretraining_seeds_pretrain_and_fine_tune_at_the_listed_pool_sizes_only(tmp_path):
    """pretrain.later_seeds_at: the first seed at every pool size, the second at 40 only; the
    plan is the full grid's less the second seed's runs at 20, under the same paths."""
    grid = tmp_path / "grid.yaml"
    grid.write_text("pretrain: {pool_size: [20, 40], sigma: 0.5, seed: [0, 1]}\n")
    later = tmp_path / "later.yaml"
    later.write_text("pretrain: {pool_size: [20, 40], sigma: 0.5, seed: [0, 1], later_seeds_at: [40]}\n")
    test = str(ROOT / "config/test.yaml")
    full = snakemake("-n", "--configfile", test, str(grid), workdir=tmp_path).stdout
    out = snakemake("-n", "--configfile", test, str(later), workdir=tmp_path).stdout
    counts = job_counts(out)
    # 3 runs (seed 0 at 20 and 40, seed 1 at 40), each with its ssl cells and hybrids
    # (2 fractions x 1 seed); the map, the probe and Figure 3 take them in one job each
    assert counts["pretrain"] == 3 and counts["select_checkpoint"] == 3 and counts["embed"] == 3
    assert counts["finetune_ssl"] == 3 * 2 and counts["hybrid"] == 3 * 2 and counts["finetune"] == 2 * 2
    assert counts["map"] == 1 and counts["blend"] == 2
    outputs = lambda text: set(re.findall(r"output: (.*)", text))  # noqa: E731
    dropped = {o for o in outputs(full) if "seed_1/sigma_0.5/pool_size_20" in o}
    assert dropped and outputs(out) == outputs(full) - dropped
    for run in ("seed_0/sigma_0.5/pool_size_20", "seed_0/sigma_0.5/pool_size_40", "seed_1/sigma_0.5/pool_size_40"):
        assert f"results/test/megnet/finetune/dielectric/0.3/0/ssl/{run}/metrics.json" in out, run


# the rules that train or compute what a later config could reuse; the others (the blend,
# which weighs every model of a cell, the probe, figures, tables, the map, the documents)
# read every run and are rewritten when a run joins
TRAINING_RULES = {
    "data", "graphs", "features", "baselines", "pretrain", "select_checkpoint", "embed",
    "finetune", "finetune_ssl", "hybrid",
}  # fmt: skip


def planned_outputs(dry_run: str) -> dict[str, set[str]]:
    """Each rule's planned output files in a dry run's job blocks."""
    planned: dict[str, set[str]] = {}
    rule = None
    for line in dry_run.splitlines():
        if m := re.match(r"^(?:local)?rule (\w+):$", line.strip()):
            rule = m.group(1)
        elif rule and line.strip().startswith("output:"):
            planned.setdefault(rule, set()).update(o.strip() for o in line.split(":", 1)[1].split(","))
            rule = None
    return planned


@pytest.mark.long
def test_a_pool_size_and_a_task_added_to_a_finished_run_train_only_what_is_new(tmp_path):
    """A finished run with one pool size and one task, then the config with a second size
    and a second task (a map share after the one before): the dry run plans every new
    size's and task's jobs, and no job that trains or computes anything finished."""
    first = tmp_path / "first.yaml"
    first.write_text(
        "pretrain: {pool_size: [20], sigma: 0.5}\n"
        "finetune: {fractions: [0.7], modes: [ssl, sl_large]}\n"
        "analysis: {umap: false, featurizers: [magpie, magpie_structure]}\n"
    )
    args = ["--configfile", str(ROOT / "config/test.yaml"), str(first)]
    args += ["--config", "results_dir=results", f"data_dir={ROOT / 'data/matminer'}"]
    snakemake("--cores", "2", *args, workdir=tmp_path)
    finished = {str(p.relative_to(tmp_path)) for p in (tmp_path / "results").rglob("*") if p.is_file()}
    assert any("pool_size_20/encoder" in f for f in finished)
    larger = tmp_path / "larger.yaml"
    larger.write_text(
        first.read_text()
        .replace("pool_size: [20]", "pool_size: [20, 40]")
        .replace("finetune: {", "finetune: {datasets: [dielectric, dielectric_constant], ")
        + "datasets:\n  dielectric_constant: {matminer: dielectric_constant, id_column: material_id, "
        "target: poly_total, transform: log10, max_sites: 8}\n"
    )
    args[2] = str(larger)
    planned = planned_outputs(snakemake("-n", *args, workdir=tmp_path).stdout)
    retrained = {rule: outs & finished for rule, outs in planned.items() if rule in TRAINING_RULES and outs & finished}
    assert not retrained, f"finished outputs planned again: {retrained}"
    new = " ".join(o for rule in TRAINING_RULES for o in planned.get(rule, ()))
    assert "pretrain/seed_0/sigma_0.5/pool_size_40/history.csv" in new
    assert "finetune/dielectric/0.7/0/ssl/seed_0/sigma_0.5/pool_size_40/metrics.json" in new
    for cell in ("ssl/seed_0/sigma_0.5/pool_size_20", "ssl/seed_0/sigma_0.5/pool_size_40", "sl_large"):
        assert f"finetune/dielectric_constant/0.7/0/{cell}/metrics.json" in new, cell
    assert "map" in planned and "aggregate" in planned


def test_sl_jobs_never_wait_for_pretraining(tmp_path):
    from cdssl.config import load_config

    config = load_config(ROOT / "config/config.yaml")
    ft = config["finetune"]
    targets = [
        f"results/megnet/finetune/{d}/{f:g}/{s}/sl/metrics.json"
        for d in ft["datasets"]
        for f in ft["fractions"]
        for s in ft["seeds"]
    ]
    assert len(targets) == 147
    # targets before --configfile, which takes several values
    out = snakemake("-n", *targets, "--configfile", str(ROOT / "config/config.yaml"), workdir=tmp_path).stdout
    counts = job_counts(out)
    assert counts["finetune"] == 49 and "finetune_ssl" not in counts
    assert "pretrain" not in counts and "select_checkpoint" not in counts


def test_figures_target_lists_analysis_for_all_paper_datasets(tmp_path):
    out = snakemake("-n", "figures", "--configfile", str(ROOT / "config/config.yaml"), workdir=tmp_path).stdout
    counts = job_counts(out)
    for rule in ("aggregate", "figure3", "figure4", "probe", "figure5"):
        assert counts[rule] == 1
    assert counts["finetune"] == 49 and counts["finetune_ssl"] == 49


def test_wrong_config_key_stops_before_any_job(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "config/test.yaml").read_text().replace("threads: 1", "treads: 1"))
    proc = snakemake("-n", "--configfile", str(bad), workdir=tmp_path, check=False)
    assert proc.returncode != 0
    assert "treads" in proc.stderr + proc.stdout and str(bad) in proc.stderr + proc.stdout


@pytest.mark.lint
def test_lint_and_format(tmp_path):
    proc = snakemake("--lint", "--configfile", str(ROOT / "config/test.yaml"), workdir=tmp_path, check=False)
    assert "Congratulations" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    fmt = subprocess.run(
        [str(Path(sys.executable).parent / "snakefmt"), "--check", "Snakefile", "workflow/rules"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert fmt.returncode == 0, fmt.stderr


@pytest.mark.lint
def test_python_passes_ruff(tmp_path):
    # the settings are pyproject.toml's [tool.ruff]; `make lint` runs the same two commands
    ruff = str(Path(sys.executable).parent / "ruff")
    for cmd in ([ruff, "check", "."], [ruff, "format", "--check", "."]):
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 0, f"{' '.join(cmd[1:])}:\n{proc.stdout}{proc.stderr}"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("tiny")
    args = [
        "--configfile",
        str(ROOT / "config/test.yaml"),
        "--config",
        "results_dir=results",
        f"data_dir={ROOT / 'data/matminer'}",
    ]
    proc = snakemake("--cores", "2", *args, workdir=work)
    (work / "console.txt").write_text(proc.stdout + proc.stderr)
    return work, args


def test_tiny_end_to_end_run_writes_every_output(tiny_run):
    work, _ = tiny_run
    r = work / "results"
    net = r / "megnet"
    for dataset in ("dielectric", "dielectric_unlabelled"):
        assert (r / "graphs" / dataset / "graphs.pt").stat().st_size > 0
        assert (r / "graphs" / dataset / "skipped.csv").exists()
    for sigma in ("0.3", "0.5"):
        selected = json.loads((net / f"pretrain/seed_0/sigma_{sigma}/pool_size_all/selected.json").read_text())
        assert (net / f"pretrain/seed_0/sigma_{sigma}/pool_size_all/encoder/model.pt").exists() and selected[
            "epoch"
        ] in (0, 1)
    for fraction in ("0.3", "0.7"):
        for cell in ("ssl/seed_0/sigma_0.3/pool_size_all", "ssl/seed_0/sigma_0.5/pool_size_all", "sl", "sl_large"):
            d = net / "finetune/dielectric" / fraction / "0" / cell
            metrics = json.loads((d / "metrics.json").read_text())
            assert metrics["mode"] == cell.split("/")[0] and metrics["test_mae"] > 0
            assert metrics["sigma"] == (
                float(cell.split("/")[2].removeprefix("sigma_")) if cell.startswith("ssl") else None
            )
            assert (d / "predictions.csv").exists() and (d / "history.csv").exists()
            split = pd.read_csv(d / "split.csv")["split"].value_counts()
            assert (split["train"], split["val"], split["test"]) == tuple(
                metrics[f"n_{k}"] for k in ("train", "val", "test")
            )
            assert (net / "logs/finetune/dielectric" / fraction / f"{cell}.log").exists()
    for name in (
        "jobs.csv",
        "cells.csv",
        "summary.json",
        "results.md",
        "probe.csv",
        "fig3_pretraining.png",
        "fig4_finetune.png",
        "fig5_umap.png",
        "fig4/dielectric.png",
        "map.png",
    ):
        assert (net / "analysis" / name).stat().st_size > 0, name
        baselines = json.loads((r / "baselines/dielectric" / fraction / "0/metrics.json").read_text())
        for name in ("magpie_ridge", "magpie_boosting", "chgnet_ridge", "chgnet_boosting"):
            assert baselines[f"test_mae_{name}"] > 0, name
    # the baselines' validation and test predictions and their saved models
    base = r / "baselines/dielectric/0.7/0"
    assert set(pd.read_csv(base / "predictions.csv")["split"]) == {"val", "test"}
    assert (base / "models/magpie_structure_boosting.skops").exists() and (base / "models/models.json").exists()
    # the hybrid of each encoder and its control, per seed, in one file
    for sigma in ("0.3", "0.5"):
        hybrid = json.loads(
            (net / f"finetune/dielectric/0.7/0/hybrid/seed_0/sigma_{sigma}/pool_size_all/metrics.json").read_text()
        )
        assert [r["mode"] for r in hybrid["runs"]] == ["hybrid", "hybrid_random"]
        assert all(r["sigma"] == float(sigma) and r["test_mae"] > 0 for r in hybrid["runs"])
        assert (net / f"embeddings/dielectric/seed_0/sigma_{sigma}/pool_size_all.npz").exists()
    summary = json.loads((net / "analysis/summary.json").read_text())
    assert {h["model"]["sigma"] for h in summary["hybrid"]} == {0.3, 0.5}
    pairs = {(c["model"]["sigma"], c["other"]["family"]) for c in summary["comparisons"]}
    assert {(0.3, "sl"), (0.5, "sl_large"), (0.5, "mean_predictor"), (0.5, "magpie_boosting")} <= pairs
    assert (0.5, "chgnet_boosting") in pairs
    verdict = next(v for v in summary["verdict"] if v["model"]["sigma"] == 0.5)
    keys = {"family": "ssl", "backbone": "megnet", "sigma": 0.5, "budget": None, "pool": "dielectric_unlabelled"}
    keys["pool_size"] = None  # the whole pool
    assert verdict["model"] == keys
    assert verdict["per_dataset"]["dielectric"]["strongest_without_pretraining"]
    # the map: one row per task and encoder, with the verdict's own interval, its hybrid's
    # control difference and its pretraining's pool (the unlabelled crystals, train + val)
    atlas = pd.read_csv(net / "analysis/map.csv").set_index("sigma")
    assert set(atlas.index) == {0.3, 0.5} and set(atlas["dataset"]) == {"dielectric"}
    gap = verdict["per_dataset"]["dielectric"]["ssl_minus_strongest"]
    # (a tiny run's models may not learn: then both sides are empty, NaN)
    assert atlas.loc[0.5, "ssl_minus_strongest_low"] == pytest.approx(gap["ci_low"], nan_ok=True)
    for h in summary["hybrid"]:
        control = h["per_dataset"]["dielectric"]["hybrid_minus_random_init"]["mean"]
        assert atlas.loc[h["model"]["sigma"], "hybrid_minus_random_init"] == pytest.approx(control, nan_ok=True)
    split = pd.read_csv(net / "pretrain/seed_0/sigma_0.5/pool_size_all/split.csv")
    assert atlas.loc[0.5, "pool_crystals"] == split["split"].isin(["train", "val"]).sum()
    assert "### The map" in (net / "analysis/results.md").read_text()
    # the runs table: one row per run with its keys, one per (split, baseline)
    runs = pd.read_csv(net / "analysis/jobs.csv")
    keys = {
        "dataset",
        "fraction",
        "seed",
        "pretrain_seed",
        "family",
        "backbone",
        "sigma",
        "budget",
        "pool",
        "pool_size",
    }
    assert keys <= set(runs)
    assert len(runs[runs["family"] == "magpie_boosting"]) == 2 and set(runs["backbone"].dropna()) == {"megnet"}
    probe = pd.read_csv(net / "analysis/probe.csv")
    assert {"pretrained_sigma_0.3", "pretrained_sigma_0.5", "random_init", "element_fractions"} <= set(
        probe["features"]
    )


def test_each_cell_names_its_best_model_and_every_saved_model_predicts_as_the_run_did(tiny_run, tmp_path):
    """The blend job's choice per cell, and cdssl-predict with it: the best model (the
    default), the blend and each kind of saved model (network, feature baseline, hybrid
    and its control) give, on the cell's own validation and test crystals read back from
    CIF, the run's own predictions: to 1e-5 in log10(n) (CIF's printed coordinates
    move CHGNet's features in their sixth digit; the rest agree to 1e-7). A crafted model
    file in the run is refused in one line, naming it."""
    from pymatgen.core import Structure

    import cdssl
    from cdssl.data import read_table

    work, _ = tiny_run
    r = work / "results"
    cell = r / "megnet/finetune/dielectric/0.7"
    blend = json.loads((cell / "0/blend/metrics.json").read_text())
    assert [run["mode"] for run in blend["runs"]] == ["blend", "best"]
    labels = {c["label"] for c in blend["candidates"]}
    assert {
        "sl",
        "sl_large",
        "ssl/seed_0/sigma_0.5/pool_size_all",
        "hybrid_random/seed_0/sigma_0.3/pool_size_all",
        "chgnet_boosting",
    } <= labels
    assert blend["chosen"] in labels | {"blend"} and abs(sum(blend["weights"].values()) - 1) < 1e-9
    summary = json.loads((r / "megnet/analysis/summary.json").read_text())
    (use,) = [f for f in summary["choice"]["per_dataset"]["dielectric"]["per_fraction"] if f["fraction"] == 0.7]
    assert use["use"] == blend["chosen"] and use["seeds"] == 1
    document = (r / "megnet/analysis/results.md").read_text()
    assert (
        "the model to use, dielectric, chosen on validation" in document
        and "the blend's weights, dielectric" in document
    )
    own = pd.read_csv(cell / "0/blend/predictions.csv").set_index("id")
    base = pd.read_csv(r / "baselines/dielectric/0.7/0/predictions.csv").set_index("id")
    hybrid = pd.read_csv(cell / "0/hybrid/seed_0/sigma_0.3/pool_size_all/predictions.csv").set_index("id")
    ssl = pd.read_csv(cell / "0/ssl/seed_0/sigma_0.5/pool_size_all/predictions.csv").set_index("id")
    table = read_table(r / "data/dielectric.json.gz").set_index("id").loc[own.index]
    crystals = tmp_path / "crystals.csv"
    cifs = [Structure.from_dict(s).to(fmt="cif") for s in table["structure"]]
    pd.DataFrame({"id": own.index, "cif": cifs}).to_csv(crystals, index=False)
    expected = {
        "best": own["best"],
        "blend": own["blend"],
        "ssl/seed_0/sigma_0.5/pool_size_all": ssl["prediction"],
        "magpie_structure_boosting": base["magpie_structure_boosting"],
        "chgnet_ridge": base["chgnet_ridge"],
        "hybrid/seed_0/sigma_0.3/pool_size_all": hybrid["hybrid"],
        "hybrid_random/seed_0/sigma_0.3/pool_size_all": hybrid["hybrid_random"],
    }
    for model, values in expected.items():
        predictions, skipped = cdssl.predict([cell], [crystals], structure_column="cif", id_column="id", model=model)
        assert skipped.empty
        which = blend["chosen"] if model == "best" else model
        assert (predictions["model"] == f"0: {which}").all()
        got = np.log10(predictions.set_index("id").loc[values.index, "0"])
        np.testing.assert_allclose(got, values, rtol=0, atol=1e-5, err_msg=model)
    # a crafted saved model: skops' schema naming a function (os.system) to hand back
    import zipfile

    models = r / "baselines/dielectric/0.7/0/models"
    target = models / "magpie_ridge.skops"
    with zipfile.ZipFile(target) as z:
        files = {n: z.read(n) for n in z.namelist()}
    schema = json.loads(files["schema.json"])
    schema.update({"__class__": "system", "__module__": "os", "__loader__": "FunctionNode", "content": "touch ran"})
    files["schema.json"] = json.dumps(schema).encode()
    original = target.read_bytes()
    with zipfile.ZipFile(target, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    args = ["--run", str(cell), "--structures", str(crystals), "--structure-column", "cif", "--id-column", "id"]
    args += ["--model", "magpie_ridge", "--out", str(tmp_path / "p.csv")]
    proc = subprocess.run([str(Path(sys.executable).parent / "cdssl-predict"), *args], capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"cdssl-predict: error: {target}: names type(s) this pipeline does not build: os.system")
    target.write_bytes(original)  # the module's other tests read the run as it was


def test_the_console_has_one_line_per_job_and_the_logs_keep_the_rest(tiny_run):
    work, _ = tiny_run
    console = (work / "console.txt").read_text()
    assert "GPU available" not in console and "LeafSpec" not in console
    job = r"^finetune \(backbone=megnet, dataset=dielectric, fraction=0\.3, mode=sl\)"
    line = job + r" done in \d+ s: test MAE [0-9.]+ log10\(n\)"
    assert re.search(line, console, re.M)
    assert "GPU available" in (work / "results/megnet/logs/finetune/dielectric/0.3/sl.log").read_text()
    text = (work / "results/megnet/analysis/results.md").read_text()
    assert text.startswith("Machine: ") and "commit " in text
    assert "### Pretraining" in text and "### dielectric (test MAE, log10(n))" in text and "### Linear probes" in text


def test_the_committed_demo_tables_have_the_format_a_fresh_run_writes(tiny_run):
    """docs/runs/demo.md is a demo run's own results.md (tools/results_doc.py collect):
    a fresh run of today's code writes the same sections, tables and lines."""
    sys.path.insert(0, str(ROOT / "tools"))
    from results_doc import RUNS, skeleton

    work, _ = tiny_run
    fresh = skeleton((work / "results/megnet/analysis/results.md").read_text())
    assert fresh == skeleton((RUNS / "demo.md").read_text())
    assert "### DATASET (test MAE" in fresh and "table: fraction" in fresh and "bullet: verdict" in fresh


def test_naming_the_default_backbone_reruns_nothing_of_a_finished_run(tiny_run):
    """models.backbone: megnet, written out, is the run of before: same paths, same
    declared settings, so a finished run retrains and reanalyses nothing; only the results
    document is written again, as its metadata line names the config files read (here
    one more, the overlay)."""
    work, args = tiny_run
    overlay = work / "megnet.yaml"
    overlay.write_text("models:\n  backbone: megnet\n")
    configfiles = ["--configfile", str(ROOT / "config/test.yaml"), str(overlay)]
    named = job_counts(snakemake("-n", *configfiles, *args[2:], workdir=work).stdout)
    plain = job_counts(snakemake("-n", *args, workdir=work).stdout)
    assert {**plain, "results": 1, "all": 1} == {**named, "all": 1} and "pretrain" not in named


def test_a_backbone_added_to_a_finished_run_trains_only_the_new_one(tiny_run, tmp_path):
    """Every path names its backbone, so a finished MEGNet run joins a backbone list as it
    is: the list trains only the new backbone and adds the comparison."""
    work, args = tiny_run
    copy = tmp_path / "work"
    shutil.copytree(work, copy, symlinks=True)  # copy2: modification times kept
    overlay = copy / "list.yaml"
    overlay.write_text("models:\n  backbone: [megnet, tensornet]\n")
    out = snakemake("-n", "--configfile", str(ROOT / "config/test.yaml"), str(overlay), *args[2:], workdir=copy).stdout
    outputs = [line for line in out.splitlines() if line.strip().startswith("output:")]
    assert any("results/tensornet/pretrain/" in line for line in outputs)
    # MEGNet's results document names the config files read: written again, nothing else
    assert [line for line in outputs if "results/megnet/" in line] == ["    output: results/megnet/analysis/results.md"]
    counts = job_counts(out)
    assert counts["pretrain"] == 2 and counts["backbone_table"] == 1 and "data" not in counts


def _to_old_layout(results: Path) -> None:
    """The layout before every path named every axis, for a one-backbone, one-seed MEGNet
    run: the backbone's folders directly in ``results``, no seed folder, no pool size.
    The hybrid's files (embeddings, hybrid cells, their logs) came after that layout: an
    old run has none."""
    for path in sorted(p for p in (results / "megnet").rglob("*") if p.is_file()):
        if {"embeddings", "hybrid", "embed", "blend"} & set(path.relative_to(results / "megnet").parts):
            path.unlink()
            continue
        if path.name == "predictions.csv":  # test rows only, no split column
            table = pd.read_csv(path)
            table[table["split"] == "test"].drop(columns="split").to_csv(path, index=False)
        relative = str(path.relative_to(results / "megnet")).replace("/pool_size_all", "")
        old = results / relative.replace("seed_0/sigma_", "sigma_")
        old.parent.mkdir(parents=True, exist_ok=True)
        path.rename(old)
    shutil.rmtree(results / "megnet")
    # nor had the baselines their predictions and saved models
    for path in sorted((results / "baselines").rglob("predictions.csv")):
        path.unlink()
        shutil.rmtree(path.parent / "models")


def _same_numbers(a, b, rtol: float = 1e-6) -> None:
    """Two JSON documents or tables equal, numbers to ``rtol``."""
    if isinstance(a, pd.DataFrame):
        assert list(a) == list(b) and len(a) == len(b)
        for column in a:
            if pd.api.types.is_numeric_dtype(a[column]):
                np.testing.assert_allclose(a[column], b[column], rtol=rtol, atol=1e-12, err_msg=column)
            else:
                assert a[column].fillna("").tolist() == b[column].fillna("").tolist(), column
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _same_numbers(a[k], b[k], rtol)
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _same_numbers(x, y, rtol)
    elif isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, rel=rtol, abs=1e-12, nan_ok=True)
    else:
        assert a == b


def test_a_results_folder_of_the_old_layout_moves_and_reruns_only_the_documents(tiny_run, tmp_path):
    """tools/migrate_results.py on a finished run of the old layout: every trained file is
    kept (renamed, its time unchanged), and the dry run after it plans only the analysis
    documents whose format changed; run, they equal the finished run's."""
    work, args = tiny_run
    copy = tmp_path / "work"
    shutil.copytree(work, copy, symlinks=True)
    r = copy / "results"
    checkpoints = sorted(p.relative_to(r / "megnet") for p in (r / "megnet/checkpoints").rglob("*.ckpt"))
    assert checkpoints
    _to_old_layout(r)
    assert (r / "pretrain/sigma_0.5/history.csv").exists() and (r / "logs/pretrain/sigma_0.5.log").exists()
    # an old run has no provenance records for the new paths
    shutil.rmtree(copy / ".snakemake/metadata", ignore_errors=True)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools/migrate_results.py"), str(r)], capture_output=True, text=True, check=True
    )
    assert "moved" in proc.stdout.splitlines()[-1]
    assert proc.stdout.splitlines()[-2] == "added validation rows to 8 predictions file(s)"
    assert all((r / "megnet" / c).exists() for c in checkpoints)
    assert not (r / "pretrain").exists() and not (r / "finetune").exists()
    counts = job_counts(snakemake("-n", *args, workdir=copy).stdout)
    # the documents, and what an old run never had: the hybrids (one embedding per
    # encoder, one job per fraction and encoder), the baselines' predictions and saved
    # models (one job per fraction) and the blends (one per fraction)
    assert counts == {
        **{"aggregate": 1, "map": 1, "results": 1, "figure4": 1, "all": 1},
        **{"embed": 2, "hybrid": 4, "baselines": 2, "blend": 2},
    }
    snakemake(*args, workdir=copy)
    # equal to the finished run's, but for the networks' validation predictions: from the
    # exported models, equal to the training job's own to float32 precision
    for name in ("cells.csv", "jobs.csv"):
        _same_numbers(pd.read_csv(r / "megnet/analysis" / name), pd.read_csv(work / "results/megnet/analysis" / name))
    summary = json.loads((r / "megnet/analysis/summary.json").read_text())
    _same_numbers(summary, json.loads((work / "results/megnet/analysis/summary.json").read_text()))
    # moving a folder of the new layout changes nothing
    again = subprocess.run(
        [sys.executable, str(ROOT / "tools/migrate_results.py"), str(r)], capture_output=True, text=True, check=True
    )
    assert again.stdout.splitlines()[-1].startswith("moved 0 file(s)")


def test_a_results_folder_from_before_pool_sizes_moves_below_the_whole_pool_and_retrains_nothing(tiny_run, tmp_path):
    """The layout of every axis but the pool size (seed_0/sigma_0.5/...): the tool moves
    each run below pool_size_all, keeping its files and times; the rerun trains nothing."""
    import os

    work, args = tiny_run
    copy = tmp_path / "work"
    shutil.copytree(work, copy, symlinks=True)
    r = copy / "results"
    for path in sorted(p for p in r.rglob("*") if p.is_file() and "pool_size_all" in str(p)):
        os.renames(path, Path(str(path).replace("/pool_size_all", "")))
    assert (r / "megnet/pretrain/seed_0/sigma_0.5/history.csv").exists()
    assert (r / "megnet/logs/pretrain/seed_0/sigma_0.5.log").exists()
    before = {p.relative_to(r): p.stat().st_mtime_ns for p in r.rglob("*.ckpt")}
    assert before
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools/migrate_results.py"), str(r)], capture_output=True, text=True, check=True
    )
    assert int(proc.stdout.splitlines()[-1].split()[1]) > 0
    assert not list(r.rglob("sigma_0.5.log")) and (r / "megnet/pretrain/seed_0/sigma_0.5/pool_size_all").is_dir()
    moved = {
        Path(
            str(p).replace("sigma_0.5/", "sigma_0.5/pool_size_all/").replace("sigma_0.3/", "sigma_0.3/pool_size_all/")
        ): t
        for p, t in before.items()
    }
    assert {p.relative_to(r): p.stat().st_mtime_ns for p in r.rglob("*.ckpt")} == moved
    counts = job_counts(snakemake("-n", *args, workdir=copy).stdout)
    trained = {"pretrain", "select_checkpoint", "finetune", "finetune_ssl", "embed", "hybrid", "baselines", "features"}
    assert counts and not trained & set(counts), counts


def test_changed_metrics_rerun_only_aggregation_and_figures(tiny_run):
    work, args = tiny_run
    assert job_counts(snakemake("-n", *args, workdir=work).stdout) == {}
    metrics = work / "results/megnet/finetune/dielectric/0.3/0/sl/metrics.json"
    data = json.loads(metrics.read_text())
    data["test_mae"] += 1.0
    metrics.write_text(json.dumps(data))
    counts = job_counts(snakemake("-n", *args, workdir=work).stdout)
    # the map reads the summary: it and the document are written again, nothing trains
    assert counts == {"aggregate": 1, "map": 1, "results": 1, "figure4": 1, "all": 1}


def test_report_is_generated(tiny_run):
    work, args = tiny_run
    snakemake(*args, "--report", "report.html", workdir=work)
    html = (work / "report.html").read_text(errors="ignore")
    assert "fig4_finetune.png" in html and "probe.csv" in html
    # the workflow description (workflow/report/workflow.rst) heads the report
    assert "crystal denoising self-supervised learning on MatGL MEGNet" in html


def test_rule_scripts_import_the_checkouts_code(tmp_path, monkeypatch):
    """Snakemake gives scripts a scriptdir of workflow/rules/../scripts; the path must resolve."""
    from types import SimpleNamespace

    monkeypatch.syspath_prepend(str(ROOT / "workflow" / "scripts"))
    import _bootstrap

    monkeypatch.setattr(sys, "path", list(sys.path))
    smk = SimpleNamespace(
        scriptdir=str(ROOT / "workflow" / "rules" / ".." / "scripts"),
        log=[],  # with a log, start() would send this test process's output there
        threads=1,
        rule="probe",
    )
    _bootstrap.start(smk)
    assert sys.path[0] == str(ROOT / "src")


def _budget_config(tmp_path: Path, budgets: str, epochs: int = 2, lean: bool = False) -> Path:
    """config/test.yaml with one sigma, ``epochs`` pretraining epochs and export_epochs
    ``budgets``; ``lean``: one fraction, ssl and sl, the Magpie baselines only, no hybrid and
    no UMAP (the budget stages are what a run with it exercises, four times over)."""
    config = yaml.safe_load((ROOT / "config/test.yaml").read_text())
    config["pretrain"].update(sigma=0.5, epochs=epochs, export_epochs=yaml.safe_load(budgets))
    if lean:
        config["finetune"].update(fractions=[0.3], modes=["ssl", "sl"])
        config["analysis"].update(featurizers=["magpie"], hybrid=False, umap=False)
    path = tmp_path / f"budget-{epochs}-{budgets.strip('[]').replace(', ', '-')}{'-lean' * lean}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_budget_list_gives_one_pretraining_and_a_selection_and_ssl_cells_per_budget(tmp_path):
    out = snakemake("-n", "--configfile", str(_budget_config(tmp_path, "[1, 2]")), workdir=tmp_path).stdout
    counts = job_counts(out)
    # one pretraining; its own selection (Figure 3) and one per budget; 2 fractions x 1
    # seed of ssl cells per budget; sl and sl_large as without budgets
    assert counts["pretrain"] == 1 and counts["select_checkpoint"] == 1 and counts["select_budget"] == 2
    assert counts["finetune_ssl"] == 2 * 2 and counts["finetune"] == 2 * 2
    assert counts["budget_table"] == counts["figure_budget"] == counts["probe"] == 1
    for budget in ("1", "2"):
        assert f"results/test/megnet/pretrain/seed_0/sigma_0.5/pool_size_all/budget_{budget}/encoder" in out
        assert (
            f"results/test/megnet/finetune/dielectric/0.3/0/ssl/seed_0/sigma_0.5/pool_size_all/budget_{budget}/metrics.json"
            in out
        )
    # without the list: no budget anywhere, the rules of before
    out = snakemake("-n", "--configfile", str(ROOT / "config/test.yaml"), workdir=tmp_path).stdout
    assert "/budget_" not in out and "select_budget" not in out and "figure_budget" not in out
    # a budget beyond the epochs trained stops before any job, naming the key
    proc = snakemake("-n", "--configfile", str(_budget_config(tmp_path, "[1, 3]")), workdir=tmp_path, check=False)
    assert proc.returncode != 0 and "pretrain.export_epochs.1" in proc.stderr + proc.stdout


@pytest.mark.long
def test_budgets_added_or_a_raised_cap_after_a_finished_run_retrain_nothing_done(tmp_path):
    """A finished run with budget [2]; the list extended to [1, 2] plans the new budget's
    selection and cells only; the cap raised to 3 with budgets 1 and 3 resumes pretraining
    from its last epoch and leaves every finished cell's numbers as they were; the cap
    lowered again gives the first run's numbers."""
    args = ["--cores", "2", "--config", "results_dir=results", f"data_dir={ROOT / 'data/matminer'}"]
    r = tmp_path / "results/megnet"
    snakemake(*args, "--configfile", str(_budget_config(tmp_path, "[2]", lean=True)), workdir=tmp_path)
    cell = r / "finetune/dielectric/0.3/0/ssl/seed_0/sigma_0.5/pool_size_all"
    before = json.loads((cell / "budget_2/metrics.json").read_text())
    history = pd.read_csv(r / "pretrain/seed_0/sigma_0.5/pool_size_all/history.csv")
    budget = pd.read_csv(r / "analysis/budget.csv", dtype={"fraction": str})
    assert budget["budget"].unique().tolist() == [2] and (r / "analysis/fig_budget.png").stat().st_size > 0
    assert "### Pretraining budget" in (r / "analysis/results.md").read_text()
    # the later runs ask for the budget table and the cells only (no figures, no documents)
    table = ["results/megnet/analysis/budget.csv"]

    # a budget added below the cap plans its selection and cells, no pretraining (the run
    # itself is the raised run's below, which adds this budget too)
    extended = _budget_config(tmp_path, "[1, 2]", lean=True)
    counts = job_counts(snakemake("-n", *table, *args, "--configfile", str(extended), workdir=tmp_path).stdout)
    assert "pretrain" not in counts and counts["select_budget"] == 1 and counts["finetune_ssl"] == 1

    raised = _budget_config(tmp_path, "[1, 2, 3]", epochs=3, lean=True)
    snakemake(*table, *args, "--configfile", str(raised), workdir=tmp_path)
    assert json.loads((cell / "budget_1/metrics.json").read_text())["budget"] == 1
    longer = pd.read_csv(r / "pretrain/seed_0/sigma_0.5/pool_size_all/history.csv")
    assert longer["epoch"].tolist() == [0, 1, 2]
    # resumed: the first two rows are those the first run wrote, epoch times included
    cols = ["epoch", "train_loss", "val_loss", "epoch_seconds"]
    pd.testing.assert_frame_equal(longer[cols].iloc[:2], history[cols])
    assert "resuming from" in (r / "logs/pretrain/seed_0/sigma_0.5/pool_size_all.log").read_text()
    after = json.loads((cell / "budget_2/metrics.json").read_text())
    # the cell resumed from its final checkpoint: the same numbers (its wall time aside)
    assert {k: v for k, v in after.items() if k != "wall_seconds"} == {
        k: v for k, v in before.items() if k != "wall_seconds"
    }
    assert pd.read_csv(r / "analysis/budget.csv")["budget"].unique().tolist() == [1, 2, 3]

    # the cap lowered again to 2: the rerun trains nothing and gives the first run's
    # history, selection and cells (a clean run with the cap of 2), not the 3-epoch run's
    lowered = _budget_config(tmp_path, "[2]", lean=True)
    log = snakemake(*table, *args, "--configfile", str(lowered), workdir=tmp_path)
    assert "Nothing to be done" not in log.stdout + log.stderr
    cut = pd.read_csv(r / "pretrain/seed_0/sigma_0.5/pool_size_all/history.csv")
    pd.testing.assert_frame_equal(cut[cols[:-1]], history[cols[:-1]])
    assert "below the 3 epochs this run trained" in (r / "logs/pretrain/seed_0/sigma_0.5/pool_size_all.log").read_text()
    final = json.loads((cell / "budget_2/metrics.json").read_text())
    assert {k: v for k, v in final.items() if k != "wall_seconds"} == {
        k: v for k, v in before.items() if k != "wall_seconds"
    }
    assert json.loads((r / "pretrain/seed_0/sigma_0.5/pool_size_all/selected.json").read_text())["epochs_trained"] == 2


def _backbone_config(tmp_path: Path, backbone: str, lean: bool = False) -> Path:
    """config/test.yaml with one sigma and ``models.backbone`` set to ``backbone`` (YAML);
    ``lean``: one fraction, the Magpie baselines only, no hybrid and no UMAP (a real run of
    two backbones is about their networks, probes and comparison)."""
    text = (ROOT / "config/test.yaml").read_text().replace("sigma: [0.3, 0.5]", "sigma: 0.5")
    path = tmp_path / f"backbone-{backbone.strip('[]').replace(', ', '-')}.yaml"
    path.write_text(f"{text}\nmodels:\n  backbone: {backbone}\n")
    if lean:
        config = yaml.safe_load(path.read_text())
        config["finetune"]["fractions"] = [0.7]
        config["analysis"].update(featurizers=["magpie"], hybrid=False, umap=False)
        path.write_text(yaml.safe_dump(config))
    return path


def test_a_backbone_list_gives_each_backbone_its_networks_and_analysis_on_shared_data(tmp_path):
    out = snakemake("-n", "--configfile", str(_backbone_config(tmp_path, "[megnet, m3gnet]")), workdir=tmp_path).stdout
    counts = job_counts(out)
    # per backbone: its pretraining, 2 fractions x (sl, sl_large | ssl), its analysis;
    # data, graphs, features and the feature baselines once
    assert counts["pretrain"] == 2 and counts["select_checkpoint"] == 2
    assert counts["finetune"] == 2 * 2 * 2 and counts["finetune_ssl"] == 2 * 2
    assert counts["aggregate"] == counts["probe"] == counts["figure3"] == counts["results"] == 2
    assert counts["data"] == counts["graphs"] == 2 and counts["baselines"] == 2 and counts["backbone_table"] == 1
    for backbone in ("megnet", "m3gnet"):
        assert f"results/test/{backbone}/pretrain/seed_0/sigma_0.5/pool_size_all/history.csv" in out
        assert f"results/test/{backbone}/finetune/dielectric/0.3/0/sl_large/metrics.json" in out
        assert f"results/test/{backbone}/analysis/summary.json" in out
    assert "results/test/baselines/dielectric/0.3/0/metrics.json" in out
    assert "results/test/analysis/backbones.md" in out
    # one backbone, unset, named or a list of one: the same paths, each naming the
    # backbone, so adding one to the list moves no finished result
    single = snakemake("-n", "--configfile", str(_backbone_config(tmp_path, "megnet")), workdir=tmp_path).stdout
    listed = snakemake("-n", "--configfile", str(_backbone_config(tmp_path, "[megnet]")), workdir=tmp_path).stdout
    unset = tmp_path / "unset.yaml"
    unset.write_text((ROOT / "config/test.yaml").read_text().replace("sigma: [0.3, 0.5]", "sigma: 0.5"))
    plain = snakemake("-n", "--configfile", str(unset), workdir=tmp_path).stdout
    outputs = lambda text: sorted(re.findall(r"output: (.*)", text))  # noqa: E731
    assert outputs(single) == outputs(plain) == outputs(listed) and "results/test/megnet/" in "".join(outputs(plain))
    assert job_counts(single) == job_counts(plain) and "backbone_table" not in plain
    assert set(outputs(plain)) <= set(outputs(out))
    # an unknown backbone stops before any job, naming the key
    proc = snakemake("-n", "--configfile", str(_backbone_config(tmp_path, "schnet")), workdir=tmp_path, check=False)
    assert proc.returncode != 0 and "models.backbone" in proc.stderr + proc.stdout


@pytest.mark.long
def test_a_tiny_run_with_two_backbones_writes_each_one_s_cells_probe_and_the_comparison(tmp_path):
    args = ["--cores", "2", "--config", "results_dir=results", f"data_dir={ROOT / 'data/matminer'}"]
    config = _backbone_config(tmp_path, "[tensornet, m3gnet]", lean=True)
    snakemake(*args, "--configfile", str(config), workdir=tmp_path)
    r = tmp_path / "results"
    for backbone, cls in (("tensornet", "TensorNet"), ("m3gnet", "M3GNet")):
        net = r / backbone
        encoder = json.loads((net / "pretrain/seed_0/sigma_0.5/pool_size_all/encoder/model.json").read_text())
        assert encoder["@class"] == cls
        for cell in ("ssl/seed_0/sigma_0.5/pool_size_all", "sl", "sl_large"):
            metrics = json.loads((net / "finetune/dielectric/0.7/0" / cell / "metrics.json").read_text())
            assert metrics["test_mae"] > 0
        probe = pd.read_csv(net / "analysis/probe.csv")
        assert {"pretrained", "random_init", "element_fractions"} <= set(probe["features"])
        reference = json.loads((net / "pretrain/seed_0/sigma_0.5/pool_size_all/reference.json").read_text())
        assert reference["val_loss_lookup_element_pair"] > 0
    table = pd.read_csv(r / "analysis/backbones.csv", dtype={"fraction": str})
    assert sorted(table["backbone"].unique()) == ["m3gnet", "tensornet"]
    assert set(table["fraction"]) == {"0.7", "all"}
    # each backbone against its own SL large, and the shared strongest baseline
    for backbone, sub in table.groupby("backbone"):
        cells = pd.read_csv(r / backbone / "analysis/cells.csv")
        at = (cells["fraction"] == 0.7) & (cells["family"] == "sl_large")
        assert sub[sub["fraction"] == "0.7"]["sl_large_mean"].iloc[0] == pytest.approx(cells[at]["mean"].iloc[0])
    shared = table[~table["strongest_name"].isin(["sl", "sl_large"])]
    assert shared.groupby(["fraction", "strongest_name"])["strongest_mean"].nunique().max() == 1
    markdown = (r / "analysis/backbones.md").read_text()
    assert markdown.startswith("Machine: ") and "| tensornet |" in markdown and "| m3gnet |" in markdown
    # cdssl-predict with a backbone's fine-tuned models: each model gives its run's own
    # test predictions again (back in the units of n)
    from pymatgen.core import Structure

    import cdssl
    from cdssl.data import read_table

    cell = r / "tensornet/finetune/dielectric/0.7"
    own = pd.read_csv(cell / "0/sl_large/predictions.csv").set_index("id")
    table = read_table(r / "data/dielectric.json.gz").set_index("id").loc[own.index]
    crystals = tmp_path / "crystals.csv"
    cifs = [Structure.from_dict(s).to(fmt="cif") for s in table["structure"]]
    pd.DataFrame({"id": own.index, "cif": cifs}).to_csv(crystals, index=False)
    predictions, skipped = cdssl.predict([cell], [crystals], structure_column="cif", id_column="id", model="networks")
    assert skipped.empty and (predictions["n_models"] == 3).all()
    column = predictions.set_index("id").loc[own.index, "0/sl_large"]
    np.testing.assert_allclose(np.log10(column), own["prediction"], rtol=1e-5, atol=1e-6)


@pytest.mark.long
def test_a_tiny_run_on_an_mp_2018_task_puts_the_structure_baseline_in_the_verdict(tmp_path):
    """A task of a set built from a pinned package (mp_2018's band gap), end to end, with
    the Magpie+structure baseline among the answers without pretraining."""
    config = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    config["results_dir"] = str(tmp_path / "out")
    config["data_dir"] = str(ROOT / "data" / "matminer")
    config["datasets"]["mp_gap"] = {
        "source": "mp_2018",
        "id_column": "material_id",
        "target": "gap_pbe",
        "units": "eV",
        "max_sites": 4,
        "pool": {"seed": 0, "sizes": {"labelled": 80}, "take": "labelled"},
    }
    config["pretrain"]["sigma"] = 0.5
    config["finetune"].update({"datasets": ["mp_gap"], "fractions": [0.7], "modes": ["ssl", "sl"]})
    config["analysis"].update({"featurizers": ["magpie", "magpie_structure"], "umap": False, "hybrid": False})
    path = tmp_path / "mp.yaml"
    path.write_text(yaml.safe_dump(config))
    snakemake("--cores", "2", "--configfile", str(path), workdir=tmp_path)
    out = tmp_path / "out"
    metrics = json.loads((out / "baselines/mp_gap/0.7/0/metrics.json").read_text())
    assert np.isfinite(metrics["test_mae_magpie_structure_boosting"])
    assert metrics["magpie_structure_boosting_params"]["procedure_sd"] >= 0
    runs = pd.read_csv(out / "megnet/analysis/jobs.csv")
    assert {"magpie_structure_ridge", "magpie_structure_boosting"} <= set(runs["family"])
    summary = json.loads((out / "megnet/analysis/summary.json").read_text())
    verdict = summary["verdict"][0]["per_dataset"]["mp_gap"]
    families = {r["family"] for r in verdict["ranking"]}
    assert {"magpie_structure_boosting", "magpie_boosting", "sl", "ssl"} <= families
    text = (out / "megnet/analysis/results.md").read_text()
    assert "Magpie+structure boosting" in text and "verdict mp_gap" in text
