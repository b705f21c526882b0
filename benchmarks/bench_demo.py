"""A whole DAG (the demo by default): wall time and peak memory (all processes, summed).

    .venv/bin/python benchmarks/bench_demo.py --cores 2 --results results
    .venv/bin/python benchmarks/bench_demo.py --cores 2 --configfile config/study.yaml \
        --results results/study --budget-min 120
Runs ``snakemake --cores N --configfile CONFIG...`` from an empty results directory and
samples the resident memory of snakemake and every child twice a second. Budgets
(README): the demo <= 20 minutes and <= 4 GB on 2 cores; the study <= 2 hours. With
``--keep`` the results directory is kept, so what is measured is a rerun: the jobs a
changed config (an overlay as a second config file) makes stale, and only those.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil

ROOT = Path(__file__).resolve().parents[1]


def tree_rss(proc: psutil.Process) -> tuple[int, int]:
    total = biggest = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            rss = p.memory_info().rss
        except psutil.Error:
            continue
        total += rss
        biggest = max(biggest, rss)
    return total, biggest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cores", type=int, default=os.cpu_count())
    ap.add_argument("--results", default="results/bench-demo", help="results_dir; emptied first")
    ap.add_argument(
        "--configfile", action="append", help="repeat for overlays: later files override earlier (default: the demo's)"
    )
    ap.add_argument("--keep", action="store_true", help="keep the results directory: measure a rerun")
    ap.add_argument("--budget-min", type=float, default=20, help="wall-time budget the ratio is against")
    ap.add_argument("--memory-budget-gb", type=float, default=4, help="peak-memory budget (the map's: 8)")
    ap.add_argument("--shares-only", action="store_true", help="only print the time shares of a finished run")
    args = ap.parse_args()
    args.configfile = args.configfile or ["config/demo.yaml"]
    results = ROOT / args.results
    if args.shares_only:
        print_time_shares(results)
        return
    if not args.keep:
        shutil.rmtree(results, ignore_errors=True)
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--cores",
        str(args.cores),
        "--configfile",
        *args.configfile,
        "--config",
        f"results_dir={args.results}",
    ]
    log_path = ROOT / f"{args.results.rstrip('/')}.snakemake.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"# {os.cpu_count()} CPUs, --cores {args.cores}; {' '.join(cmd[2:])}; output in {log_path}")
    start = time.monotonic()
    # to a file, never a pipe: an unread pipe fills up and blocks snakemake
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    ps = psutil.Process(proc.pid)
    peak_total = peak_single = 0
    while proc.poll() is None:
        total, single = tree_rss(ps)
        peak_total, peak_single = max(peak_total, total), max(peak_single, single)
        time.sleep(0.5)
    wall = time.monotonic() - start
    log.close()
    if proc.returncode:
        print(log_path.read_text()[-3000:])
    # printed for a failed run too: what it used up to the failure is a measurement of
    # every job that finished, and a rerun after the fix runs only the rest
    print(f"{'measure':<36} {'value':>10} {'budget':>10} {'ratio':>7}")
    print(f"{'wall time (min)':<36} {wall / 60:>10.1f} {args.budget_min:>10g} {wall / 60 / args.budget_min:>7.2f}")
    peak_gb, mem_budget = peak_total / 1e9, args.memory_budget_gb
    print(f"{'peak RSS, all processes (GB)':<36} {peak_gb:>10.2f} {mem_budget:>10g} {peak_gb / mem_budget:>7.2f}")
    print(f"{'peak RSS, largest process (GB)':<36} {peak_single / 1e9:>10.2f}")
    print()
    if proc.returncode:
        raise SystemExit(f"demo failed with exit code {proc.returncode}")
    print_time_shares(results)


def time_shares(results: Path) -> pd.DataFrame:
    """Per rule: jobs, their summed wall seconds (Snakemake's benchmark files; each job
    runs on its own core here) and the seconds their training epochs took (history.csv's
    epoch_seconds, wall time of the training and validation steps); the rest of a
    training job is start-up, data loading, the baselines and the test predictions."""
    rows = []
    # the shared stages' benchmarks/, and with a backbone list each backbone's own
    for folder in [results / "benchmarks", *sorted(results.glob("*/benchmarks"))]:
        for tsv in sorted(folder.rglob("*.tsv")):
            rel = tsv.relative_to(folder)
            rule = rel.parts[0] if len(rel.parts) > 1 else rel.stem
            rows.append({"rule": rule, "wall_s": float(pd.read_csv(tsv, sep="\t")["s"].iloc[0]), "jobs": 1})
    jobs = pd.DataFrame(rows).groupby("rule").sum()
    jobs["epoch_s"] = 0.0
    nets = [results, *sorted(p.parent for p in results.glob("*/analysis"))]
    histories = {
        stage: sorted(f for net in nets for f in (net / stage).rglob("history.csv"))
        for stage in ("pretrain", "finetune")
    }
    for rule, files in histories.items():
        if rule in jobs.index:
            jobs.loc[rule, "epoch_s"] = sum(pd.read_csv(f)["epoch_seconds"].sum() for f in files if f.exists())
    return jobs


def print_time_shares(results: Path) -> None:
    jobs = time_shares(results)
    total = jobs["wall_s"].sum()
    print(f"{'rule':<20} {'jobs':>5} {'job s':>9} {'share':>7} {'in epochs s':>12}")
    for rule, row in jobs.sort_values("wall_s", ascending=False).iterrows():
        print(
            f"{rule:<20} {int(row['jobs']):>5} {row['wall_s']:>9.0f} "
            f"{row['wall_s'] / total:>7.1%} {row['epoch_s']:>12.0f}"
        )
    epochs = jobs["epoch_s"].sum()
    print(
        f"share of the jobs' time spent in training epochs (training + validation steps): "
        f"{epochs / total:.1%} of {total:.0f} job-seconds"
    )


if __name__ == "__main__":
    main()
