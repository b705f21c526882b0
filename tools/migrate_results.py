"""Move a results folder of an earlier layout to the one where every path names every axis.

At first a path named an axis only when its list had more than one value: one backbone
kept its networks directly under the results folder (``results/pretrain/sigma_0.5``),
one pretraining seed had no seed folder, and several seeds sat below their sigma
(``sigma_0.5/seed_1``). Then every network path named its backbone and every
pretraining run its seed, then its sigma (``results/megnet/pretrain/seed_0/sigma_0.5``).
Now a run also names its pretraining pool size, ``pool_size_all`` for the whole
pretraining dataset, the only pool before ``pretrain.pool_size`` existed
(``results/megnet/pretrain/seed_0/sigma_0.5/pool_size_all``). Adding a value to any
list never moves a finished result. Either earlier layout moves in one step.

Every file keeps its content and modification time (renamed, never copied), so the
checkpoints, trained models and metrics are reused as they are: after the move, a dry
run plans only the analysis documents whose format changed, which this command removes
(jobs.csv, cells.csv, summary.json, results.md, Figure 4, the budget and backbone
tables); the probe, Figures 3 and 5 and every training result stay.

    python tools/migrate_results.py results [--backbone megnet] [--pretrain-seed 0] [--dry-run]

Runs made before blends (cdssl.blend) kept a network's test predictions only; the blend
weights the cell's models on their validation predictions. This command adds them to
each such predictions.csv from the run's own exported model, graph cache and split
(split.csv), keeping the test rows and the file's time; they equal the fine-tuning
job's own to float32 precision (the exported model is the trained module, evaluated
outside Lightning).

``--backbone`` names the architecture of a single-backbone folder (``models.backbone``
of its config; megnet by default) and ``--pretrain-seed`` the seed of a run without a
seed folder (``pretrain.seed``; 0 by default). A folder already in the new layout is
left as it is.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from cdssl.config import schema_backbones  # noqa: E402  (the checkout's, as the workflow's)

BACKBONES = schema_backbones()
# the folders of a backbone's own work (the rest of a results folder is shared)
NETWORK_PARTS = ("pretrain", "checkpoints", "finetune", "analysis")
# the stages whose logs and benchmarks belong to a backbone
NETWORK_STAGES = ("pretrain", "select_checkpoint", "finetune", "analysis")
# analysis files whose format changed with the layout: rebuilt by the next run
REBUILT = ("jobs.csv", "cells.csv", "summary.json", "results.md", "fig4_finetune.png", "fig4", "budget.csv")
REBUILT += ("fig_budget.png", "backbones.csv", "backbones.md")
SIGMA = re.compile(r"^sigma_[0-9]+(?:\.[0-9]+)?")
SEED = re.compile(r"^seed_([0-9]+)")
# the pool of every run from before the pool-size axis: the whole pretraining dataset
WHOLE_POOL = "pool_size_all"


def new_parts(parts: list[str], pretrain_seed: int) -> list[str]:
    """A path's parts with its pretraining run as ``seed_<s>/sigma_<x>/pool_size_<n>``."""
    return with_pool_size(seed_first(parts, pretrain_seed))


def with_pool_size(parts: list[str]) -> list[str]:
    """A run's sigma part followed by its pool size: a sigma folder gets
    :data:`WHOLE_POOL` below it, a file named by its sigma becomes one in a sigma folder
    (``sigma_0.5.log`` -> ``sigma_0.5/pool_size_all.log``)."""
    for i, part in enumerate(parts):
        sigma = SIGMA.match(part)
        if sigma is None or i + 1 < len(parts) and parts[i + 1].startswith("pool_size_"):
            continue
        if part == sigma.group(0):
            return [*parts[: i + 1], WHOLE_POOL, *parts[i + 1 :]]
        return [*parts[:i], sigma.group(0), WHOLE_POOL + part[sigma.end() :], *parts[i + 1 :]]
    return parts


def seed_first(parts: list[str], pretrain_seed: int) -> list[str]:
    """A path's parts with its pretraining run as ``seed_<s>/sigma_<x>``: a sigma with
    a seed below it swaps with it, a sigma without one gets ``pretrain_seed``'s. A
    suffix stays on the last part (``sigma_0.5/seed_1.log`` -> ``seed_1/sigma_0.5.log``)."""
    for i, part in enumerate(parts):
        sigma = SIGMA.match(part)
        if sigma is None:
            continue
        if i > 0 and SEED.match(parts[i - 1]):
            return parts  # the new layout already
        below = SEED.match(parts[i + 1]) if i + 1 < len(parts) and part == sigma.group(0) else None
        if below is not None:
            suffix = parts[i + 1][below.end() :]
            return [*parts[:i], below.group(0), part + suffix, *parts[i + 2 :]]
        return [*parts[:i], f"seed_{pretrain_seed}", *parts[i:]]
    return parts


def rebuilt(path: Path) -> bool:
    """Whether ``path`` is an analysis output whose format changed (:data:`REBUILT`)."""
    parts = path.parts
    return any(a == "analysis" and b in REBUILT for a, b in zip(parts[:-1], parts[1:], strict=True))


def plan(results: Path, backbone: str, pretrain_seed: int) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """The moves (old file, new file) and the analysis outputs to remove."""
    roots = []
    # a single backbone's work sits directly in the results folder: it moves below the
    # backbone (in a folder of several backbones, logs/analysis is their comparison's)
    if any((results / part).is_dir() for part in ("pretrain", "finetune")):
        roots += [(results / part, results / backbone / part) for part in NETWORK_PARTS]
        for kind in ("logs", "benchmarks"):
            roots += [(results / kind / stage, results / backbone / kind / stage) for stage in NETWORK_STAGES]
    # the folders of a list of backbones stay; only their runs change shape
    for name in BACKBONES:
        parts = (*NETWORK_PARTS, "logs", "benchmarks", "embeddings")
        roots += [(results / name / part, results / name / part) for part in parts]
    moves, stale = [], []
    for old_root, new_root in roots:
        if not old_root.is_dir():
            continue
        for path in sorted(p for p in old_root.rglob("*") if p.is_file() or p.is_symlink()):
            if rebuilt(path):
                stale.append(path)
                continue
            target = new_root.joinpath(*new_parts(list(path.relative_to(old_root).parts), pretrain_seed))
            if target != path:
                moves.append((path, target))
    stale += [path for name in REBUILT if (path := results / "analysis" / name).exists()]
    return moves, sorted(set(stale))


def migrate(results: Path, backbone: str = "megnet", pretrain_seed: int = 0, dry_run: bool = False) -> int:
    """Move ``results`` to the new layout; returns the number of files moved."""
    if backbone not in BACKBONES:
        raise SystemExit(f"--backbone {backbone!r}: one of {', '.join(BACKBONES)}")
    moves, stale = plan(results, backbone, pretrain_seed)
    clashes = [new for _, new in moves if new.exists()]
    if clashes:
        raise SystemExit(f"{clashes[0]} exists already: {len(clashes)} file(s) of the new layout would be overwritten")
    for old, new in moves:
        print(f"{old} -> {new}")
        if not dry_run:
            # renames keep the modification times Snakemake compares
            os.renames(old, new)
    for path in stale:
        print(f"remove {path} (its format changed: the next run rebuilds it)")
        if not dry_run and path.is_dir():
            shutil.rmtree(path)
        elif not dry_run:
            path.unlink(missing_ok=True)
    if not dry_run:
        for folder in sorted((p for p in results.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            if not any(folder.iterdir()):
                folder.rmdir()
    return len(moves)


def add_validation_rows(results: Path, dry_run: bool = False) -> int:
    """Every network predictions.csv under ``results`` written before validation rows were
    kept: its validation rows added (module docstring). Returns how many files changed."""
    import json

    import numpy as np
    import pandas as pd
    import torch

    from cdssl.graphs import GraphCache
    from cdssl.model_files import load_network
    from cdssl.models import predict as forward

    changed = 0
    caches: dict[Path, GraphCache] = {}
    for csv in sorted(results.glob("*/finetune/**/predictions.csv")):
        folder = csv.parent
        table = pd.read_csv(csv)
        if "split" in table or not (folder / "model").is_dir() or not (folder / "split.csv").is_file():
            continue
        dataset = json.loads((folder / "metrics.json").read_text())["dataset"]
        graphs = results / "graphs" / dataset / "graphs.pt"
        print(f"add validation rows to {csv} (from {folder / 'model'} on {graphs})")
        changed += 1
        if dry_run:
            continue
        cache = caches.setdefault(graphs, GraphCache.load(graphs))
        roles = pd.read_csv(folder / "split.csv")
        position = {crystal: i for i, crystal in enumerate(cache.ids)}
        val = [position[i] for i in roles.loc[roles["split"] == "val", "id"]]
        model = load_network(folder / "model").eval()
        with torch.no_grad():
            pred = [forward(model, cache.collate(val[k : k + 64])).double().numpy() for k in range(0, len(val), 64)]
        rows = pd.DataFrame(
            {
                "id": [cache.ids[i] for i in val],
                "split": "val",
                "target": cache.targets.numpy()[val],
                "prediction": np.concatenate(pred),
            }
        )
        stat = csv.stat()
        pd.concat([rows, table.assign(split="test")[list(rows)]], ignore_index=True).to_csv(csv, index=False)
        os.utime(csv, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="the results folder (results_dir of its config)")
    parser.add_argument("--backbone", default="megnet", help="the backbone of a single-backbone folder")
    parser.add_argument("--pretrain-seed", type=int, default=0, help="the seed of runs without a seed folder")
    parser.add_argument("--dry-run", action="store_true", help="print the moves, change nothing")
    args = parser.parse_args(argv)
    if not args.results.is_dir():
        print(f"{args.results}: no such folder", file=sys.stderr)
        return 1
    n = migrate(args.results, args.backbone, args.pretrain_seed, args.dry_run)
    added = add_validation_rows(args.results, args.dry_run)
    print(f"{'would add' if args.dry_run else 'added'} validation rows to {added} predictions file(s)")
    print(f"{'would move' if args.dry_run else 'moved'} {n} file(s) in {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
