"""The backbones side by side (``models.backbone`` as a list).

Each backbone ran the whole protocol on its own: its pretraining, its SSL, SL and SL large
networks, its analysis (``<results_dir>/<backbone>/analysis/``); the feature baselines
are shared. This module reads those analyses and puts, per backbone, SSL beside that
backbone's own SL large and the strongest baseline, with the pretext validation loss
against the lookup references that need no learning: does a stronger encoder change the
verdict? A backbone whose pretext loss is not below the lookups' is marked: its
pretraining did not learn, whatever its SSL networks score.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .document import metadata
from .lookups import best_lookup, pretext_learned
from .markdown import format_diff, reference_cells, table
from .reference_rows import ALL, reference_rows
from .runs import label, models_of, read_table, varying_axes
from .utils import LOG, atomic_path


def pretext_row(selected: list[str | Path], reference: list[str | Path]) -> dict[str, float | bool]:
    """The selected validation loss and the lower lookup's, averaged over runs, and
    whether pretraining learned: every run below its lookups."""
    losses = [json.loads(Path(p).read_text())["val_loss"] for p in selected]
    references = [json.loads(Path(p).read_text()) for p in reference]
    return {
        "pretrain_val_loss": float(np.mean(losses)),
        "lookup_val_loss": float(np.mean([best_lookup(r) for r in references])),
        "pretext_learned": all(pretext_learned(x, r) for x, r in zip(losses, references, strict=True)),
    }


def _pretext_cell(r: pd.Series) -> str:
    return f"{r['pretrain_val_loss']:.4f}" + ("" if r["pretext_learned"] else " (did not learn)")


def backbone_table(runs: dict[str, dict]) -> pd.DataFrame:
    """One row per (backbone, ssl model, dataset, fraction), and over all fractions
    (fraction ``all``): :func:`cdssl.reference_rows.reference_rows` of each backbone's
    ssl models against its own SL large and the strongest baselines, its pretext loss and
    the model's words (``model``).

    ``runs`` maps a backbone to its ``jobs``, ``cells``, ``summary`` (file paths) and its
    pretraining runs' ``selected`` and ``reference`` files (lists).
    """
    rows = []
    for backbone, files in runs.items():
        jobs, cells = read_table(files["jobs"]), read_table(files["cells"])
        summary = json.loads(Path(files["summary"]).read_text())
        pretext = pretext_row(files["selected"], files["reference"])
        ssl_models = models_of(cells, "ssl")
        axes = varying_axes(ssl_models)
        for ssl in ssl_models:
            for row in reference_rows(jobs, cells, summary, ssl):
                rows.append({**row, "backbone": backbone, "model": label(ssl, axes), **pretext})
    return pd.DataFrame(rows)


def backbone_lines(table: pd.DataFrame) -> list[str]:
    """Per dataset and backbone, over all fractions: SSL minus SL large and minus the
    strongest baseline, in words."""
    lines = []
    for (dataset, backbone, model), r in table[table["fraction"] == ALL].groupby(
        ["dataset", "backbone", "model"], sort=False
    ):
        r = r.iloc[0]
        pretext = (
            ""
            if r["pretext_learned"]
            else f"; pretraining did not learn (pretext loss {r['pretrain_val_loss']:.4f}, "
            f"not below the lookup's {r['lookup_val_loss']:.4f})"
        )
        lines.append(
            f"backbones {dataset}, {backbone} {model}: SSL {r['ssl_mean']:.4f}; minus SL large "
            f"{format_diff(r, 'sl_large')}; minus {r['strongest_name']} {format_diff(r, 'strongest')}{pretext}"
        )
    return lines


def backbone_markdown(frame: pd.DataFrame) -> str:
    """Over all fractions, then fraction by fraction, one table per dataset."""
    if frame.empty:
        return ""
    out = ["### Backbones (mean over fractions; 95% intervals)", ""]
    overall = frame[frame["fraction"] == ALL]
    for dataset, sub in overall.groupby("dataset"):
        references = ["SSL", "SL large", "strongest", "SSL - SL large", "SSL - strongest"]
        rows = [
            [
                r["backbone"],
                r["model"],
                _pretext_cell(r),
                f"{r['lookup_val_loss']:.4f}",
                *reference_cells(r, named=True),
            ]
            for _, r in sub.iterrows()
        ]
        out += [
            f"{dataset} ({sub['units'].iloc[0]}):",
            "",
            table(["backbone", "model", "pretext val loss", "best lookup", *references], rows),
        ]
        fractions = frame[(frame["dataset"] == dataset) & (frame["fraction"] != ALL)]
        rows = [
            [r["fraction"], r["backbone"], r["model"], *reference_cells(r, named=True)]
            for _, r in fractions.sort_values(["fraction", "backbone"], kind="stable").iterrows()
        ]
        out.append(table(["fraction", "backbone", "model", *references], rows))
    out += [f"- {line}" for line in backbone_lines(frame)]
    return "\n".join(out) + "\n"


def write_backbone_table(
    runs: dict[str, dict],
    *,
    table_csv: str | Path,
    markdown: str | Path,
    workflow_dir: str | Path = ".",
    configfiles: list[str] = (),
    benchmarks_dir: list[str | Path] = (),
) -> pd.DataFrame:
    """:func:`backbone_table` of ``runs`` (each backbone's analysis files and pretraining
    runs, by name) as CSV and Markdown; the Markdown starts with the run's metadata line
    (:func:`cdssl.metadata.metadata`; the jobs' time summed over the ``benchmarks_dir``
    folders: the shared stages' and every backbone's)."""
    frame = backbone_table(runs)
    with atomic_path(table_csv) as tmp:
        frame.to_csv(tmp, index=False)
    with atomic_path(markdown) as tmp:
        line = metadata(workflow_dir, list(configfiles), benchmarks_dir)
        Path(tmp).write_text(f"{line}\n\n{backbone_markdown(frame)}")
    for line in backbone_lines(frame):
        LOG.info("%s", line)
    return frame
