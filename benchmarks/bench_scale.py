"""The data path at paper scale, simulated: graph caching, cache size and load, memory of 2 DDP ranks.

    .venv/bin/python benchmarks/bench_scale.py --n 132752 --processes 2 --out /tmp/cdssl-scale

SCALE SIMULATION, NEVER SCIENCE: the pool is N strained copies and supercells of the
embedded Materials Project crystals (ids ``scale-sim-*``, no labels), drawn so that their
site counts follow matbench_dielectric's (4,764 MP crystals, the embedded set with no
size cap; matbench_mp_e_form's own distribution is not on this offline machine). Each
draw picks a site count s from that distribution, a crystal of s/m sites (m in 1..4) and
an m-fold supercell of it along its shortest axis, then strains its lattice by
(I + e), e symmetric with N(0, 0.02^2) entries.

Phases, each in its own process so that its peak memory is its own:
  table   write the data stage's table of N structures (the graphs rule's input)
  graphs  the graphs rule's own calls: read_table, build_cache (P processes), save_cache;
          wall time, peak RSS of the process tree, file size
  load    GraphCache.load, read into memory and memory-mapped: time and memory
  ranks   2 ranks started the way srun starts them (RANK, WORLD_SIZE, ... in the
          environment; Lightning's DDP with gloo), each loading the cache and training
          --steps steps of the pretext task (Table 2 MEGNet, batch --batch): RSS and PSS
          (shared pages split between the processes that map them) of each rank, graphs/s
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
from _common import ROOT, TABLE2
from bench_demo import tree_rss

SOURCES = ("matbench_dielectric", "flla", "dielectric_constant", "elastic_tensor_2015", "piezoelectric_tensor")


def _rows(name: str) -> list[dict]:
    with gzip.open(ROOT / "data" / "matminer" / f"{name}.json.gz", "rt") as fh:
        payload = json.load(fh)
    i = payload["columns"].index("structure")
    return [row[i] for row in payload["data"]]


def _ordered(s: dict) -> tuple[np.ndarray, list[str], np.ndarray] | None:
    species = []
    for site in s["sites"]:
        if len(site["species"]) != 1 or site["species"][0].get("occu", 1) != 1:
            return None
        species.append(site["species"][0]["element"])
    return np.array(s["lattice"]["matrix"], dtype=float), species, np.array([site["abc"] for site in s["sites"]])


def _as_dict(lattice: np.ndarray, species: list[str], frac: np.ndarray) -> dict:
    sites = [
        {"species": [{"element": el, "occu": 1}], "abc": f.tolist(), "label": el, "properties": {}}
        for el, f in zip(species, frac, strict=True)
    ]
    return {
        "@module": "pymatgen.core.structure",
        "@class": "Structure",
        "charge": 0,
        "lattice": {"matrix": lattice.tolist(), "pbc": [True, True, True]},
        "properties": {},
        "sites": sites,
    }


def simulate(n: int, seed: int) -> list[dict]:
    """N structures whose site counts follow matbench_dielectric's (module docstring)."""
    rng = np.random.default_rng(seed)
    target = np.array([len(s["sites"]) for s in _rows("matbench_dielectric")])
    pool: dict[int, list] = {}
    for name in SOURCES:
        for s in _rows(name):
            parsed = _ordered(s)
            if parsed is not None:
                pool.setdefault(len(parsed[1]), []).append(parsed)
    out = []
    for sites in rng.choice(target, size=n):
        options = [m for m in (1, 2, 3, 4) if sites % m == 0 and sites // m in pool]
        if not options:  # no crystal of a fitting size: the nearest size, as it is
            k = min(pool, key=lambda k: abs(k - sites))
            options, sites = [1], k
        m = int(rng.choice(options))
        lattice, species, frac = pool[sites // m][rng.integers(len(pool[sites // m]))]
        if m > 1:
            axis = int(np.argmin(np.linalg.norm(lattice, axis=1)))
            frac = np.concatenate([frac + np.eye(3)[axis] * k for k in range(m)]) / np.where(np.arange(3) == axis, m, 1)
            lattice = lattice.copy()
            lattice[axis] *= m
            species = species * m
        e = rng.normal(0, 0.02, (3, 3))
        out.append(_as_dict(lattice @ (np.eye(3) + (e + e.T) / 2), species, frac))
    return out


def phase_table(args) -> dict:
    import pandas as pd

    from cdssl.data import write_table

    start = time.perf_counter()
    structures = simulate(args.n, args.seed)
    ids = [f"scale-sim-{i:06d}" for i in range(args.n)]
    table = pd.DataFrame({"id": ids, "structure": structures, "target": np.nan})
    write_table(table, args.out / "table.json.gz")
    sites = np.array([len(s["sites"]) for s in structures])
    return {
        "seconds": time.perf_counter() - start,
        "sites_mean": float(sites.mean()),
        "sites_median": float(np.median(sites)),
        "sites_p99": float(np.percentile(sites, 99)),
        "sites_max": int(sites.max()),
        "table_bytes": (args.out / "table.json.gz").stat().st_size,
    }


def phase_graphs(args) -> dict:
    from cdssl.data import read_table
    from cdssl.graphs import build_cache, save_cache

    t0 = time.perf_counter()
    table = read_table(args.out / "table.json.gz")
    t1 = time.perf_counter()
    cache, skipped = build_cache(table, 5.0, processes=args.processes)
    t2 = time.perf_counter()
    save_cache(cache, args.out / "graphs.pt")
    t3 = time.perf_counter()
    edges = int(cache["edge_ptr"][-1])
    return {
        "read_s": t1 - t0,
        "build_s": t2 - t1,
        "save_s": t3 - t2,
        "graphs": len(cache["ids"]),
        "skipped": len(skipped),
        "edges": edges,
        "atoms": int(cache["node_ptr"][-1]),
        "cache_bytes": (args.out / "graphs.pt").stat().st_size,
        "tensor_bytes": {k: v.nbytes for k, v in cache.items() if hasattr(v, "nbytes")},
    }


def phase_load(args) -> dict:
    from cdssl.graphs import GraphCache, element_types

    element_types()  # MatGL's import, paid once by every job, is not the cache's load time
    start = time.perf_counter()
    cache = GraphCache.load(args.out / "graphs.pt", 5.0, mmap=args.mmap)
    loaded = time.perf_counter() - start
    info = psutil.Process().memory_full_info()
    # touch every graph once, as an epoch does
    start = time.perf_counter()
    for i in range(0, len(cache), 4096):
        cache.collate(list(range(i, min(i + 4096, len(cache)))))
    touched = time.perf_counter() - start
    after = psutil.Process().memory_full_info()
    return {
        "mmap": args.mmap,
        "load_s": loaded,
        "rss_after_load": info.rss,
        "collate_all_s": touched,
        "rss_after_collate_all": after.rss,
        "uss_after_collate_all": after.uss,
    }


def phase_rank(args) -> dict:
    """One rank, started with the variables srun's ranks get from Lightning's point of view."""
    import lightning as L
    import torch

    from cdssl.graphs import GraphCache
    from cdssl.pretrain import DenoisingModule, loaders, pretrain_split

    torch.set_num_threads(1)
    start = time.perf_counter()
    cache = GraphCache.load(args.out / "graphs.pt", 5.0, mmap=args.mmap)
    load_s = time.perf_counter() - start
    train, val = pretrain_split(len(cache), 0.2, 0)
    train_dl, _ = loaders(cache, train, val, args.batch, 0)
    module = DenoisingModule(TABLE2, 5.0, 0.5, 1e-3)
    step_ends: list[float] = []

    class StepClock(L.Callback):
        def on_train_batch_end(self, *_):
            step_ends.append(time.perf_counter())

    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        limit_train_batches=args.steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=True,
        callbacks=[StepClock()],
    )
    start = time.perf_counter()
    trainer.fit(module, train_dl)
    fit_s = time.perf_counter() - start
    info = psutil.Process().memory_full_info()
    # steps after the first (which pays DDP's and the allocator's start-up)
    step_s = float(np.median(np.diff(step_ends))) if len(step_ends) > 2 else float("nan")
    return {
        "rank": trainer.global_rank,
        "load_s": load_s,
        "fit_s": fit_s,
        "median_step_s": step_s,
        "graphs_per_s": args.batch / step_s,
        "rss_end": info.rss,
        "pss_end": info.pss,
        "uss_end": info.uss,
    }


def run_ranks(args) -> dict:
    """Start 2 ranks, sample each one's RSS and PSS until both end."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in (0, 1):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank))
        env.update(LOCAL_RANK=str(rank), NODE_RANK="0", PYTHONPATH=str(ROOT / "src"))
        cmd = [sys.executable, __file__, "--phase", "rank", *child_args(args)]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True))
    peaks = [{"rss": 0, "pss": 0} for _ in procs]
    while any(p.poll() is None for p in procs):
        for peak, p in zip(peaks, procs, strict=True):
            try:
                info = psutil.Process(p.pid).memory_full_info()
            except psutil.Error:
                continue
            peak["rss"], peak["pss"] = max(peak["rss"], info.rss), max(peak["pss"], info.pss)
        time.sleep(0.5)
    results = []
    for peak, p in zip(peaks, procs, strict=True):
        out = p.stdout.read()
        if p.returncode != 0:
            raise SystemExit(f"rank failed ({p.returncode}): {out[-2000:]}")
        results.append({**json.loads(out.strip().splitlines()[-1]), "peak_rss": peak["rss"], "peak_pss": peak["pss"]})
    return {"ranks": results}


def child_args(args) -> list[str]:
    return [
        "--n",
        str(args.n),
        "--out",
        str(args.out),
        "--processes",
        str(args.processes),
        "--steps",
        str(args.steps),
        "--batch",
        str(args.batch),
        "--seed",
        str(args.seed),
        *(["--mmap"] if args.mmap else []),
    ]


def measured(args, phase: str) -> dict:
    """Run a phase in a child process; its result plus wall time and peak RSS of its process tree."""
    cmd = [sys.executable, __file__, "--phase", phase, *child_args(args)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))
    ps = psutil.Process(proc.pid)
    peak = peak_pss = 0
    while proc.poll() is None:
        peak, peak_pss = max(peak, tree_rss(ps)[0]), max(peak_pss, tree_pss(ps))
        time.sleep(0.2)
    out = proc.stdout.read()
    if proc.returncode != 0:
        raise SystemExit(f"phase {phase} failed ({proc.returncode})")
    result = json.loads(out.strip().splitlines()[-1])
    return {**result, "wall_s": time.perf_counter() - start, "peak_tree_rss": peak, "peak_tree_pss": peak_pss}


def tree_pss(proc: psutil.Process) -> int:
    """Summed PSS of a process and its children: forked workers' shared pages counted once."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_full_info().pss
        except psutil.Error:
            pass
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=132_752, help="structures (matbench_mp_e_form: 132,752)")
    p.add_argument("--out", type=Path, default=Path("/tmp/cdssl-scale"))
    p.add_argument("--processes", type=int, default=os.cpu_count(), help="graph caching processes")
    p.add_argument("--steps", type=int, default=20, help="training steps of each rank")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mmap", action="store_true", help="(phases load and rank) memory-map the cache")
    p.add_argument("--phases", default="table,graphs,load,ranks")
    p.add_argument("--phase", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.phase:
        result = {"table": phase_table, "graphs": phase_graphs, "load": phase_load, "rank": phase_rank}[args.phase](
            args
        )
        print(json.dumps(result))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"# SCALE SIMULATION ({args.n} strained copies and supercells of embedded crystals; never science)")
    print(f"# {os.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.1f} GiB, python {sys.version.split()[0]}")
    report = {"n": args.n, "processes": args.processes, "steps": args.steps, "batch": args.batch}
    for phase in args.phases.split(","):
        if phase == "ranks":
            for mmap in (False, True):
                args.mmap = mmap
                report[f"ranks_mmap_{mmap}"] = run_ranks(args)
                print(json.dumps({f"ranks_mmap_{mmap}": report[f"ranks_mmap_{mmap}"]}), flush=True)
        elif phase == "load":
            for mmap in (False, True):
                args.mmap = mmap
                report[f"load_mmap_{mmap}"] = measured(args, "load")
                print(json.dumps({f"load_mmap_{mmap}": report[f"load_mmap_{mmap}"]}), flush=True)
        else:
            report[phase] = measured(args, phase)
            print(json.dumps({phase: report[phase]}), flush=True)
    (args.out / f"report_{args.n}.json").write_text(json.dumps(report, indent=2))
    print(f"# report: {args.out / f'report_{args.n}.json'}")


if __name__ == "__main__":
    main()
