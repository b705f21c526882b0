"""The cluster path, for real: a single-node SLURM cluster on localhost runs the tiny
workflow through the project's profile and the Snakemake SLURM executor."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "tools" / "slurm_cluster.sh"


def _why_no_slurm() -> str | None:
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
    subprocess.run([str(CLUSTER), "start"], check=True)
    yield
    subprocess.run([str(CLUSTER), "stop"], check=False)


@pytest.mark.slurm
def test_tiny_workflow_runs_as_slurm_jobs(cluster, tmp_path):
    cmd = [
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
        str(ROOT / "config/test.yaml"),
        "--config",
        "results_dir=results",
        f"data_dir={ROOT / 'data/matminer'}",
        # no slurmdbd here: poll squeue (sacct would fail), soon after submission
        "--slurm-status-command",
        "squeue",
        "--slurm-init-seconds-before-status-checks",
        "5",
        # a CPU-only node: no GPUs to ask for, and small memory requests
        "--set-resources",
        "pretrain:gpu=0",
        "finetune:gpu=0",
        "finetune_ssl:gpu=0",
        "pretrain:mem_mb=2000",
        "finetune:mem_mb=2000",
        "finetune_ssl:mem_mb=2000",
        "graphs:mem_mb=2000",
        "probe:mem_mb=2000",
        "--set-threads",
        "graphs=1",
        "pretrain=1",
        "finetune=1",
        "finetune_ssl=1",
        "probe=1",
        "--default-resources",
        "mem_mb=1000",
        "runtime=30",
        "--jobs",
        "2",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    submitted = re.findall(r"submitted with SLURM jobid (\d+)", proc.stdout + proc.stderr)
    logs = sorted((tmp_path / "results" / "logs").rglob("*.log"))
    assert len(logs) >= 12
    ids = []
    for log in logs:
        found = re.findall(r"SLURM job (\d+)", log.read_text())
        assert found, f"{log} was not written inside a SLURM job"
        ids.append(found[0])
    assert len(set(ids)) == len(ids), "each rule ran as its own SLURM job"
    assert set(ids) <= set(submitted)
    assert (tmp_path / "results/analysis/fig4_finetune.png").exists()
