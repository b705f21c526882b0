"""A rerun equals a clean run: after a change Snakemake reruns exactly the affected jobs,
and their numbers equal those of a clean run of the new inputs, old checkpoints present."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifWriter

from cdssl.data import load_matminer

pytestmark = pytest.mark.slow  # real Snakemake runs

ROOT = Path(__file__).resolve().parents[1]
MODES = ("ssl", "sl", "sl_large")


def snakemake(workdir: Path, *args: str, ok: bool = True) -> str:
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(workdir / "config.yaml"),
        *args,
    ]
    # umask 022, the common default: outputs must then be readable by the group
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, preexec_fn=lambda: os.umask(0o022))
    assert (proc.returncode == 0) == ok, f"{' '.join(args)}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


def targets(config: dict | None = None) -> list[str]:
    """One fine-tuning cell per mode; the ssl cell of the config's pretraining run (every
    path names its pretraining seed: another seed is another run, not a rerun)."""
    seed = (config or {}).get("pretrain", {}).get("seed", 0)
    ssl = f"ssl/seed_{seed}/sigma_0.5/pool_size_all"
    return [f"results/megnet/finetune/labelled/0.5/0/{ssl if m == 'ssl' else m}/metrics.json" for m in MODES]


TARGETS = targets()


def jobs(workdir: Path) -> dict[str, int]:
    from test_workflow import job_counts

    config = yaml.safe_load((workdir / "config.yaml").read_text())
    return job_counts(snakemake(workdir, "-n", *targets(config)))


def run(workdir: Path, config: dict) -> dict[str, dict]:
    workdir.mkdir(exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    snakemake(workdir, "--cores", "2", *targets(config))
    return {mode: json.loads((workdir / t).read_text()) for mode, t in zip(MODES, targets(config), strict=True)}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A real id-keyed JSON export of 40 labelled crystals and a pretraining pool."""
    work = tmp_path_factory.mktemp("base")
    df = load_matminer("matbench_dielectric", str(ROOT / "data/matminer"))
    small = df[df["structure"].map(len) <= 6].tail(40)
    export = {
        f"mp-{i}": {"structure": s.as_dict(), "n": float(n)}
        for i, s, n in zip(small.index, small["structure"], small["n"], strict=True)
    }
    # two crystals the graph rule must skip, given as CIF text: americium (outside MatGL's
    # element list) and a 30-site supercell (over max_sites)
    am = Structure(Lattice.cubic(3.5), ["Am", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    first = small["structure"].iloc[0]
    big = first * (1, 1, 30 // len(first))
    assert len(big) == 30
    export["am-oxide"] = {"structure": str(CifWriter(am)), "n": 2.0}
    export["big-cell"] = {"structure": str(CifWriter(big)), "n": 2.0}
    (work / "labelled.json").write_text(json.dumps(export))
    config = yaml.safe_load((ROOT / "config/test.yaml").read_text())
    config.update(results_dir="results", data_dir=str(ROOT / "data/matminer"))
    config["datasets"] = {
        "dielectric_unlabelled": {
            **config["datasets"]["dielectric_unlabelled"],
            "pool": {"seed": 0, "sizes": {"pretrain": 50}, "take": "pretrain"},
        },
        "labelled": {
            "file": "labelled.json",
            "target": "n",
            "transform": "log10",
            "units": "log10(n)",
            "max_sites": 20,
        },
    }
    config["finetune"].update(datasets=["labelled"], fractions=[0.5], seeds=[0], modes=list(MODES), epochs=2)
    config["pretrain"]["sigma"] = 0.5  # one noise scale (config/test.yaml sweeps two)
    metrics = run(work, config)
    return work, config, metrics


def changed(base, tmp_path, change) -> tuple[Path, dict]:
    work, config, _ = base
    new = tmp_path / "rerun"
    shutil.copytree(work, new, symlinks=True)  # results, checkpoints and .snakemake metadata
    config = copy.deepcopy(config)
    change(config, new)
    (new / "config.yaml").write_text(yaml.safe_dump(config))
    return new, config


def _pool_seed(config, _):
    config["datasets"]["dielectric_unlabelled"]["pool"]["seed"] = 1


def _pretrain_seed(config, _):
    config["pretrain"]["seed"] = 1


def _pretrain_lr(config, _):
    config["pretrain"]["lr"] = 2.0e-3


def _transform(config, _):
    config["datasets"]["labelled"]["transform"] = "none"


def _epochs(config, _):
    config["finetune"]["epochs"] = 3


def _small_sizes(config, _):
    # the shipped configs take the sizes from the schema's defaults; a config that changes
    # one size gives that model's whole entry
    from cdssl.config import load_config

    small = load_config(ROOT / "config" / "test.yaml")["models"]["small"]
    config["models"] = {"small": {**small, "hidden_layer_sizes_output": [16, 8]}}


def _edit_file(config, work):
    data = json.loads((work / "labelled.json").read_text())
    data[next(iter(data))]["n"] *= 2
    (work / "labelled.json").write_text(json.dumps(data))


PRETRAIN_AND_SSL = {"pretrain": 1, "select_checkpoint": 1, "finetune_ssl": 1}
LABELLED = {"data": 1, "graphs": 1, "finetune": 2, "finetune_ssl": 1}


@pytest.mark.parametrize(
    "change, expected",
    [
        (_pool_seed, {"data": 1, "graphs": 1, **PRETRAIN_AND_SSL}),
        (_pretrain_seed, PRETRAIN_AND_SSL),
        (_pretrain_lr, PRETRAIN_AND_SSL),
        (_transform, LABELLED),
        (_edit_file, LABELLED),
        (_epochs, {"finetune": 2, "finetune_ssl": 1}),
        (_small_sizes, {"finetune": 1}),
    ],
    ids=[
        "new pretraining pool",
        "another pretraining seed (a new run, its own paths)",
        "re-pretraining",
        "transform",
        "edited data file",
        "epochs",
        "model sizes",
    ],
)
def test_a_change_reruns_exactly_the_affected_jobs(base, tmp_path, change, expected):
    work, config = changed(base, tmp_path, change)
    assert jobs(work) == expected


def test_skipped_lists_unknown_elements_and_the_site_cap_and_keeps_the_rest(base):
    work, _, metrics = base
    skipped = pd.read_csv(work / "results/graphs/labelled/skipped.csv")
    reasons = dict(zip(skipped["id"], skipped["reason"], strict=True))
    assert reasons["am-oxide"].startswith("unknown element(s) Am:")
    assert reasons["big-cell"] == "30 sites, more than max_sites 20"
    assert set(reasons) == {"am-oxide", "big-cell"}
    assert metrics["sl"]["n_train"] + metrics["sl"]["n_val"] + metrics["sl"]["n_test"] <= 40
    assert (work / "results/graphs/labelled/graphs.pt").stat().st_mode & 0o044 == 0o044  # umask 022


def test_nothing_to_do_without_a_change(base):
    work, config, _ = base
    assert jobs(work) == {}


@pytest.mark.parametrize(
    "changes",
    [
        (_pretrain_lr,),
        (_transform,),
        (_epochs, _small_sizes),
    ],
    ids=["re-pretraining", "transform", "epochs and sizes"],
)
def test_rerun_after_a_change_equals_a_clean_run(base, tmp_path, changes):
    work, config = changed(base, tmp_path, lambda c, w: [f(c, w) for f in changes])
    rerun = run(work, config)
    clean_dir = tmp_path / "clean"
    clean_dir.mkdir()
    shutil.copy(base[0] / "labelled.json", clean_dir / "labelled.json")
    clean = run(clean_dir, config)
    for mode in MODES:
        for key in ("test_mae", "val_mae", "best_epoch", "n_train"):
            assert rerun[mode][key] == clean[mode][key], (mode, key)
    if _transform in changes:
        # the rerun's predictions are in the new units: raw n, not log10(n)
        raw = {k: v["n"] for k, v in json.loads((work / "labelled.json").read_text()).items()}
        predictions = pd.read_csv(work / TARGETS[1].replace("metrics.json", "predictions.csv"))
        assert np.allclose(predictions["target"], [raw[i] for i in predictions["id"]])


PRETRAIN_FILES = ("history.csv", "split.csv", "reference.json")
POOL = "results/graphs/dielectric_unlabelled/graphs.pt"
PRETRAIN_LOG = "results/megnet/logs/pretrain/seed_0/sigma_0.5/pool_size_all.log"
SSL_LOG = "results/megnet/logs/finetune/labelled/0.5/ssl/seed_0/sigma_0.5/pool_size_all.log"
# the networks trained on the labelled set's cache
FINETUNE_LOGS = (SSL_LOG, *(f"results/megnet/logs/finetune/labelled/0.5/{m}.log" for m in ("sl", "sl_large")))


def _same_results(work: Path, metrics: dict) -> None:
    again = {mode: json.loads((work / t).read_text()) for mode, t in zip(MODES, TARGETS, strict=True)}
    for mode in MODES:
        for key in ("test_mae", "val_mae", "best_epoch", "last_epoch", "optimizer_steps"):
            assert again[mode][key] == metrics[mode][key], (mode, key)


def _resumed(work: Path, logs) -> None:
    """Each training job's log says it resumed from its own checkpoints, found of the same
    settings and input content, and discarded nothing."""
    for log in logs:
        text = (work / log).read_text()
        assert "resuming from" in text and "same settings and input content" in text, log
        assert "discarding" not in text, log


def test_a_rebuilt_cache_with_equal_content_keeps_every_checkpoint(base, tmp_path):
    """The labelled set's cache rebuilt (its networks rerun by Snakemake) resumes every
    fine-tuning job; the pool's side (pretraining, its selection, the ssl cell) is the
    corrupt-cache test's below, whose recovery rebuilds the pool's cache."""
    work, config = changed(base, tmp_path, lambda c, w: None)
    labelled = "results/graphs/labelled/graphs.pt"
    before = (work / labelled).read_bytes()
    for log in FINETUNE_LOGS:
        (work / log).unlink()
    snakemake(work, "--cores", "2", "--forcerun", labelled, *TARGETS)
    assert (work / labelled).read_bytes() == before
    _resumed(work, FINETUNE_LOGS)
    _same_results(work, base[2])


def test_a_corrupt_cache_names_the_command_that_recovers_every_output(base, tmp_path):
    work, config = changed(base, tmp_path, lambda c, w: None)
    cache = work / POOL
    before = cache.read_bytes()
    cache.write_bytes(before[:5000])
    out = snakemake(work, "--cores", "2", *TARGETS, ok=False)
    log = (work / PRETRAIN_LOG).read_text()
    assert f"graph cache {POOL} cannot be read" in log, out
    # the failed pretraining job's outputs are gone: the command the error names must bring them back
    assert not any(
        (work / "results/megnet/pretrain/seed_0/sigma_0.5/pool_size_all" / f).exists() for f in PRETRAIN_FILES
    )
    named = re.search(r"--forcerun (\S+)`", log).group(1)
    (work / SSL_LOG).unlink()
    snakemake(work, "--cores", "2", "--forcerun", named, *TARGETS)
    # the rebuilt cache equals the one before; pretraining and the ssl cell resumed from
    # the checkpoints the failed run left
    assert cache.read_bytes() == before
    _resumed(work, (PRETRAIN_LOG, SSL_LOG))
    for name in PRETRAIN_FILES:
        assert (work / "results/megnet/pretrain/seed_0/sigma_0.5/pool_size_all" / name).read_bytes() == (
            base[0] / "results/megnet/pretrain/seed_0/sigma_0.5/pool_size_all" / name
        ).read_bytes(), name
    _same_results(work, base[2])


def test_a_user_config_without_a_section_is_rejected(tmp_path):
    config = yaml.safe_load((ROOT / "config/test.yaml").read_text())
    del config["pretrain"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-n",
        "-s",
        str(ROOT / "Snakefile"),
        "--directory",
        str(tmp_path),
        "--configfile",
        str(tmp_path / "config.yaml"),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "'pretrain' is a required property" in proc.stdout + proc.stderr


def test_a_missing_data_file_fails_the_dry_run(tmp_path):
    config = yaml.safe_load((ROOT / "config/test.yaml").read_text())
    config["datasets"]["dielectric"] = {"file": "nowhere.csv", "target": "n"}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-n",
        "-s",
        str(ROOT / "Snakefile"),
        "--directory",
        str(tmp_path),
        "--configfile",
        str(tmp_path / "config.yaml"),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0 and "nowhere.csv" in proc.stdout + proc.stderr


def test_a_csv_without_the_target_column_fails_the_dry_run(tmp_path, small_table):
    from cdssl.data import DataError, check_columns

    config = yaml.safe_load((ROOT / "config/test.yaml").read_text())
    small_table.head(3).rename(columns={"structure": "cif"}).to_csv(tmp_path / "mine.csv", index=False)
    config["datasets"]["dielectric"] = {"file": "mine.csv", "structure_column": "cif", "target": "n"}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "snakemake", "-n", "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path)]
    cmd += ["--configfile", str(tmp_path / "config.yaml")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "no target column 'n' in mine.csv; its columns are ['id', 'cif', 'target']" in proc.stdout + proc.stderr
    # the same file with the right column name passes the check
    check_columns("dielectric", {"file": str(tmp_path / "mine.csv"), "structure_column": "cif", "target": "target"})
    with pytest.raises(DataError, match="no structure column 'structure'"):
        check_columns("dielectric", {"file": str(tmp_path / "mine.csv"), "target": "target"})
