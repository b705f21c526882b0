"""The cluster path, for real: a single-node SLURM cluster on localhost runs the tiny
workflow through the project's profile and the Snakemake SLURM executor, with
pretraining as one job of 2 ranks started by srun (gloo) and the fine-tuning grid
grouped into fewer submissions than jobs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "tools" / "slurm_cluster.sh"


pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def _why_no_slurm() -> str | None:
    # the cluster tool installs SLURM and munge, rewrites /etc/slurm/slurm.conf and stops
    # any slurmctld/slurmd running here: only on a machine whose owner asked for it
    if os.environ.get("CDSSL_SLURM_TESTS") != "1":
        return (
            "SLURM tests take this machine's SLURM over (apt-get slurm-wlm and munge, rewrite "
            "/etc/slurm/slurm.conf, restart the daemons): run them on a throwaway machine with make test-slurm"
        )
    if os.geteuid() != 0:
        return "SLURM test needs root to install and start munge/slurmctld/slurmd"
    if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        return "SLURM is not installed and apt-get is not available to install it"
    return None


@pytest.fixture(scope="module")
def cluster():
    reason = _why_no_slurm()
    if reason:
        pytest.skip(reason)
    subprocess.run([str(CLUSTER), "install"], check=True)
    started = subprocess.run([str(CLUSTER), "start"], capture_output=True, text=True)
    if started.returncode != 0:
        # a failed start leaves the daemons it did start: stop them, as after the tests;
        # the tool's own words (the daemons' last log lines) go into the failure, which is
        # all a CI log shows of a machine that is gone afterwards
        subprocess.run([str(CLUSTER), "stop"], check=False)
        said = started.stdout + started.stderr
        pytest.fail(f"tools/slurm_cluster.sh start failed (exit {started.returncode}):\n{said}")
    yield
    subprocess.run([str(CLUSTER), "stop"], check=False)


def _rank_zero_checkpoints_only(ckpt: Path, history: pd.DataFrame) -> None:
    """One writer: the run's checkpoints and a snapshot at each new best epoch, no rank's
    stray copies (a second rank writing would add files or snapshots of other epochs)."""
    from cdssl.training import snapshot_path

    assert sorted(p.name for p in ckpt.iterdir()) == ["best.ckpt", "best_by_epoch", "fingerprint.json", "last.ckpt"]
    losses = history["val_loss"]
    bests = [int(e) for e in history["epoch"] if losses[: e + 1].idxmin() == e]
    assert sorted(p.name for p in (ckpt / "best_by_epoch").iterdir()) == [snapshot_path(".", e).name for e in bests]


def _config(tmp_path: Path, **pretrain) -> Path:
    """config/test.yaml with pretraining on 2 ranks (CPU processes, gloo), one noise
    scale, without the CHGNet baseline and the UMAP (jobs the cluster path adds nothing to:
    a second sigma is a second pretraining job like the first)."""
    config = yaml.safe_load((ROOT / "config/test.yaml").read_text())
    config["pretrain"].update(devices=2, strategy="ddp", sigma=0.5)
    config["pretrain"].update(**pretrain)
    config["analysis"].update(featurizers=["magpie", "magpie_structure"], umap=False)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _snakemake(tmp_path: Path, configfile: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(ROOT / "Snakefile"),
        "--directory",
        str(tmp_path),
        "--profile",
        str(ROOT / "profiles/slurm"),
        "--configfile",
        str(configfile),
        "--config",
        "results_dir=results",
        f"data_dir={ROOT / 'data/matminer'}",
        # no slurmdbd here: poll squeue (sacct would fail), soon after submission
        "--slurm-status-command",
        "squeue",
        # (the plugin waits this long after a round in which a job ended, 10 s more after
        # each round in which none did: the tiny jobs end within seconds)
        "--slurm-init-seconds-before-status-checks",
        "2",
        # a CPU-only node: no GPUs to ask for, and small memory requests
        "--set-resources",
        "finetune:gpu=0",
        "finetune_ssl:gpu=0",
        *(f"{rule}:mem_mb=2000" for rule in ("pretrain", "finetune", "finetune_ssl", "graphs", "probe")),
        "--set-threads",
        *(f"{rule}=1" for rule in ("graphs", "pretrain", "finetune", "finetune_ssl", "probe")),
        "--default-resources",
        "mem_mb=1000",
        "runtime=30",
        "--jobs",
        "2",
        *extra,
    ]


def _slurm_job(log: Path) -> str:
    found = re.findall(r"SLURM job (\d+)", log.read_text())
    assert found, f"{log} was not written inside a SLURM job"
    return found[0]


@pytest.mark.slurm
def test_tiny_workflow_runs_as_slurm_jobs_with_srun_ranks_and_grouped_finetuning(cluster, tmp_path):
    cmd = _snakemake(tmp_path, _config(tmp_path))
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    submitted = set(re.findall(r"submitted with SLURM jobid (\d+)", proc.stdout + proc.stderr))
    # the shared stages' logs and the backbone's
    logs = sorted(p for p in (tmp_path / "results").rglob("*.log") if "logs" in p.relative_to(tmp_path).parts)
    assert len(logs) >= 12
    jobs = {log: _slurm_job(log) for log in logs}
    assert set(jobs.values()) <= submitted
    finetune = {log: job for log, job in jobs.items() if "/finetune/" in str(log)}
    others = [job for log, job in jobs.items() if log not in finetune]
    # 2 fractions x (sl, sl_large, ssl) = 6 fine-tuning jobs, fewer submissions
    assert len(finetune) == 6
    assert len(set(finetune.values())) < len(finetune), "fine-tuning jobs went out one submission each"
    assert len(submitted) < len(logs)
    assert len(set(others)) == len(others) and not set(others) & set(finetune.values())
    # every cell's outputs, each in its own folder
    metrics = sorted((tmp_path / "results/megnet/finetune").rglob("metrics.json"))
    hybrids = [m for m in metrics if "hybrid" in m.parts]
    blends = [m for m in metrics if "blend" in m.parts]
    # 6 networks' cells, a hybrid per fraction and encoder (cdssl.hybrid) and a blend per
    # fraction (cdssl.blend), each a folder
    assert len(metrics) - len(hybrids) - len(blends) == 6 and len(hybrids) == 2 and len(blends) == 2
    assert (tmp_path / "results/megnet/analysis/fig4_finetune.png").exists()
    # the pretraining: one SLURM job whose 2 ranks srun started, both in the rule's log
    for sigma in ("0.5",):
        text = (tmp_path / f"results/megnet/logs/pretrain/seed_0/sigma_{sigma}/pool_size_all.log").read_text()
        job = _slurm_job(tmp_path / f"results/megnet/logs/pretrain/seed_0/sigma_{sigma}/pool_size_all.log")
        assert "starting 2 ranks: srun" in text
        for rank in (0, 1):
            assert re.search(
                rf"rank {rank} of 2 \(node 0, local rank {rank}\) on \S+, pid \d+, SLURM job {job} step", text
            )
            assert f"training rank {rank} of 2" in text
        history = pd.read_csv(tmp_path / f"results/megnet/pretrain/seed_0/sigma_{sigma}/pool_size_all/history.csv")
        assert history["epoch"].tolist() == [0, 1]
        _rank_zero_checkpoints_only(
            tmp_path / f"results/megnet/checkpoints/pretrain/seed_0/sigma_{sigma}/pool_size_all", history
        )


@pytest.mark.slurm
def test_multi_rank_pretraining_killed_under_slurm_resumes_on_rerun(cluster, tmp_path):
    config = _config(tmp_path, epochs=40)
    target = "results/megnet/pretrain/seed_0/sigma_0.5/pool_size_all/selected.json"
    cmd = _snakemake(tmp_path, config, "--retries", "0", target)
    log = tmp_path / "results/megnet/logs/pretrain/seed_0/sigma_0.5/pool_size_all.log"
    history = tmp_path / "results/megnet/pretrain/seed_0/sigma_0.5/pool_size_all/history.csv"
    run = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and run.poll() is None:
        if history.exists() and len(history.read_text().splitlines()) >= 4:
            break
        time.sleep(0.1)
    assert run.poll() is None, "pretraining ended before it could be killed; raise epochs"
    before = pd.read_csv(history)
    # the job as a cluster kills it (preemption, a time limit, scancel)
    subprocess.run(["scancel", _slurm_job(log)], check=True)
    out, _ = run.communicate(timeout=600)
    assert run.returncode != 0, out[-3000:]
    assert "training rank 1 of 2" in log.read_text()

    rerun = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-5000:]
    text = log.read_text()
    # Snakemake starts the rerun's log afresh
    assert "resuming from" in text and "starting 2 ranks: srun" in text
    after = pd.read_csv(history)
    assert after["epoch"].tolist() == list(range(40))
    # the epochs finished before the kill were not trained again: same rows, wall time included
    done = len(before) - 1  # the last row written may not have had its checkpoint yet
    # ("stop" is empty in them; its dtype follows the rows read with it)
    same = [c for c in before.columns if c != "stop"]
    pd.testing.assert_frame_equal(
        before.iloc[:done][same], after.iloc[:done][same], check_exact=True, check_dtype=False
    )
    _rank_zero_checkpoints_only(tmp_path / "results/megnet/checkpoints/pretrain/seed_0/sigma_0.5/pool_size_all", after)
    assert (tmp_path / target).exists()
