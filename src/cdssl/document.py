"""The results document: one run's tables in Markdown, under one metadata line.

Written by the ``results`` rule as ``analysis/results.md`` from the run's own files
(pretraining records, the aggregate tables, the probes), so every number quoted from a
run has a file it comes from; ``tools/results_doc.py`` joins several runs' documents into
docs/results.md.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd

from .budget import budget_markdown
from .lookups import pretext_learned
from .markdown import results_markdown, table
from .pretraining_map import map_markdown
from .runs import Model, encoder_tags, read_table
from .utils import atomic_path

# the probe's feature rows as the document names them
PROBE_LABELS = {
    "pretrained": "pretrained encoder",
    "random_init": "random-init encoder",
    "composition": "element fractions",
    "composition_natoms": "element fractions + atom count",
    "log_natoms": "log(atom count) alone",
    "magpie": "Magpie features",
    "magpie_structure": "Magpie and structure features",
    "chgnet": "CHGNet 0.3.0 crystal feature (frozen)",
}
PROBE_TARGETS = ["log_density", "log_volume", "log_volume_per_atom"]


def metadata(
    workflow_dir: str | Path, configfiles: list[str], benchmarks_dir: str | Path | list[str | Path] | None
) -> str:
    """Machine, versions, commit, config and the jobs' summed time (the benchmark files
    under ``benchmarks_dir``, one folder or several), as one line."""
    import matgl
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = _commit(workflow_dir)
    seconds = 0.0
    folders = [benchmarks_dir] if isinstance(benchmarks_dir, str | Path) else list(benchmarks_dir or [])
    for tsv in (t for folder in folders if Path(folder).is_dir() for t in Path(folder).rglob("*.tsv")):
        try:
            seconds += float(pd.read_csv(tsv, sep="\t")["s"].iloc[0])
        except (ValueError, KeyError, IndexError, pd.errors.ParserError):
            continue
    return (
        f"Machine: {os.cpu_count()} CPUs ({cpu}); Python {platform.python_version()}, torch {torch.__version__}, "
        f"matgl {matgl.__version__}; commit {commit}; config {', '.join(configfiles) or '(default)'}; "
        f"jobs' summed time {seconds / 60:.1f} min."
    )


def _commit(workflow_dir: str | Path) -> str:
    def git(*args: str) -> str:
        proc = subprocess.run(["git", "-C", str(workflow_dir), *args], capture_output=True, text=True, timeout=30)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD")
    if not head:
        return "unknown (not a git checkout)"
    return head + (" with uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def pretraining_markdown(selected: list[str | Path], references: list[str | Path]) -> str:
    """One row per pretraining run: where it ended, the selected epoch and its loss
    beside the validation loss of the answers that need no learning; a selected loss not
    below the lookups' is marked: that pretraining did not learn."""
    header = ["run", "epochs trained", "why it ended", "selected epoch", "epoch 0", "selected"]
    header += ["lookup of the noisy length", "lookup per element pair", "noisy lengths"]
    rows = []
    for sel_path, ref_path in zip(selected, references, strict=True):
        sel, ref = json.loads(Path(sel_path).read_text()), json.loads(Path(ref_path).read_text())
        run = Path(sel_path).parent
        rows.append(
            [
                # the run's folders (a pool of the whole dataset needs no word)
                "/".join(
                    p
                    for p in run.parts[-3:]
                    if p.startswith(("sigma_", "seed_", "pool_size_")) and p != "pool_size_all"
                ),
                sel["epochs_trained"],
                sel.get("stop") or "-",
                sel["epoch"],
                f"{sel['first_val_loss']:.4f}",
                _selected_loss(sel["val_loss"], ref),
                f"{ref['val_loss_lookup_noisy_length']:.4f}",
                f"{ref['val_loss_lookup_element_pair']:.4f}",
                f"{ref['val_loss_noisy_distances']:.4f}",
            ]
        )
    return "### Pretraining (validation loss, MSE of the per-graph standardised distance)\n\n" + table(header, rows)


def _selected_loss(loss: float, reference: dict[str, float]) -> str:
    if pretext_learned(loss, reference):
        return f"**{loss:.4f}**"
    return f"{loss:.4f} (did not learn: not below a lookup)"


def probe_label(row: dict) -> str:
    """A probe row's features in words; a pretrained encoder (a row with a sigma) with
    its noise scale and, with budgets, its pretraining epochs (:func:`cdssl.runs.encoder_tags`):
    ``pretrained encoder (sigma 0.5 A, 100 epochs)``."""
    if pd.isna(row.get("sigma", np.nan)):
        return PROBE_LABELS.get(row["features"], row["features"])
    varying = ("sigma", "budget") + (() if pd.isna(row.get("pool_size", np.nan)) else ("pool_size",))
    tags = encoder_tags(Model.of({**row, "family": "ssl"}), varying)
    return PROBE_LABELS["pretrained"] + (f" ({', '.join(tags)})" if tags else "")


def probe_markdown(probe: pd.DataFrame) -> str:
    """R^2 mean ± sd per feature row and target, on the crystals the probe used."""
    if probe.empty:
        return ""
    n, repeats = int(probe["n_structures"].iloc[0]), int(probe["repeats"].iloc[0])
    targets = [t for t in PROBE_TARGETS if t in set(probe["target"])]
    rows = []
    for _, sub in probe.groupby("features", sort=False):
        by_target = sub.set_index("target")
        cells = [
            f"{by_target.loc[t, 'r2_mean']:.3f} ± {by_target.loc[t, 'r2_sd']:.3f}" if t in by_target.index else "-"
            for t in targets
        ]
        rows.append([probe_label(sub.iloc[0].to_dict()), *cells])
    paper = probe.dropna(subset=["paper_r2"]).drop_duplicates("target").set_index("target")["paper_r2"]
    if len(paper):
        rows.append(
            ["the paper (pretrained, its own data)", *(f"{paper[t]:.3f}" if t in paper.index else "" for t in targets)]
        )
    head = (
        f"### Linear probes (R^2 on held-out 20%, mean ± sd over {repeats} splits, {n:,} crystals "
        "pretraining never trained on)\n\n"
    )
    return head + table(["features", *(t.replace("_", " ") for t in targets)], rows)


def _read(path: str | Path | None) -> pd.DataFrame:
    """A table that may be empty (a CSV with no columns at all)."""
    try:
        return pd.read_csv(path) if path is not None else pd.DataFrame()
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def write_results_document(
    cells_csv: str | Path,
    summary_json: str | Path,
    selected: list[str | Path],
    references: list[str | Path],
    results_md: str | Path,
    *,
    probe_csv: str | Path | None = None,
    workflow_dir: str | Path = ".",
    configfiles: list[str] = (),
    benchmarks_dir: str | Path | None = None,
    budget_csv: str | Path | None = None,
    map_csv: str | Path | None = None,
    trend_csv: str | Path | None = None,
) -> str:
    """Write ``results_md``: the metadata line, pretraining, fine-tuning, probes and,
    with pretrain.export_epochs, the budget table."""
    cells = read_table(cells_csv)
    summary = json.loads(Path(summary_json).read_text())
    parts = [
        metadata(workflow_dir, list(configfiles), benchmarks_dir),
        pretraining_markdown(selected, references),
        results_markdown(cells, summary),
    ]
    if probe_csv is not None:
        parts.append(probe_markdown(pd.read_csv(probe_csv)))
    if map_csv is not None:
        parts.append(map_markdown(_read(map_csv), _read(trend_csv)))
    if budget_csv is not None:
        parts.append(budget_markdown(pd.read_csv(budget_csv, dtype={"fraction": str})))
    text = "\n".join(p.rstrip() + "\n" for p in parts if p)
    with atomic_path(results_md) as tmp:
        tmp.write_text(text)
    return text
