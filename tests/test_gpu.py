"""The GPU tier: the same code under ``accelerator: gpu``, checked against the CPU run.

Skipped without a CUDA device (CI has none); ``tools/gpu_check.sh`` runs it with the
step benchmarks on a machine that has one. Tolerances: the GPU's float32 kernels sum in
another order than the CPU's, so two epochs of the tiny run differ in the last digits and
those differences grow through training. The pretraining losses must agree to 2% and
every test MAE to 5% (relative); the splits, the selected epochs' positions in the
history and every count must be equal.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]

ROOT = Path(__file__).resolve().parents[1]
LOSS_RTOL, MAE_RTOL = 0.02, 0.05


def _tiny(workdir: Path, accelerator: str) -> Path:
    config = workdir / "config.yaml"
    config.write_text((ROOT / "config/test.yaml").read_text().replace("sigma: [0.3, 0.5]", "sigma: 0.5"))
    command = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--cores", "2", "--directory"]
    command += [str(workdir), "--configfile", str(config), "--config", "results_dir=results"]
    command += [f"data_dir={ROOT / 'data/matminer'}", f"accelerator={accelerator}"]
    proc = subprocess.run(command, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return workdir / "results/megnet"


def test_the_tiny_workflow_on_the_gpu_gives_the_cpu_run_s_results(tmp_path):
    gpu, cpu = _tiny(tmp_path / "gpu", "gpu"), _tiny(tmp_path / "cpu", "cpu")
    run = "pretrain/seed_0/sigma_0.5/pool_size_all"
    a, b = pd.read_csv(gpu / run / "history.csv"), pd.read_csv(cpu / run / "history.csv")
    pd.testing.assert_series_equal(a["epoch"], b["epoch"])
    pd.testing.assert_series_equal(a["val_loss"], b["val_loss"], rtol=LOSS_RTOL)
    assert (gpu / run / "split.csv").read_text() == (cpu / run / "split.csv").read_text()
    for metrics in sorted(cpu.glob("finetune/**/metrics.json")):
        on_gpu = json.loads((gpu / metrics.relative_to(cpu)).read_text())
        on_cpu = json.loads(metrics.read_text())
        assert on_gpu["device"].startswith("cuda") and on_cpu["device"] == "cpu"
        assert on_gpu["n_test"] == on_cpu["n_test"] and on_gpu["optimizer_steps"] == on_cpu["optimizer_steps"]
        assert on_gpu["test_mae"] == pytest.approx(on_cpu["test_mae"], rel=MAE_RTOL), metrics


@pytest.mark.parametrize("bench", ["bench_pretrain.py", "bench_finetune.py"])
def test_the_step_benchmarks_run_on_the_gpu_against_plain_matgl(bench):
    command = [sys.executable, str(ROOT / "benchmarks" / bench), "--device", "cuda", "--n", "256", "--threads", "1"]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cuda" in proc.stdout and "graphs/s" in proc.stdout
