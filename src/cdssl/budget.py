"""Transfer against the pretraining budget: per budget, SSL against SL large and the strongest baseline.

With ``pretrain.export_epochs`` every budget k (the best encoder of the first k epochs of
one pretraining run) is its own ssl model, keyed by its ``budget`` (cdssl.runs). This
module puts those models side by side: one row per (dataset, fraction, budget) and one
per (dataset, budget) over all fractions, each with SSL minus SL large and SSL minus the
strongest baseline and their 95% intervals, plus the pretext loss the budget reached;
and says in words where SSL crosses each reference, or where its gap stopped shrinking.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .markdown import format_diff, reference_cells, table
from .reference_rows import ALL, reference_rows
from .runs import Model, models_of, read_table
from .utils import LOG, atomic_path


def _budget_models(cells: pd.DataFrame) -> dict[int, Model]:
    """The ssl model of each budget (the first sigma of a sweep: budgets compare within one)."""
    out: dict[int, Model] = {}
    for model in models_of(cells, "ssl"):
        if model.budget is not None:
            out.setdefault(model.budget, model)
    return dict(sorted(out.items()))


def _pretext(selected: list[str | Path]) -> dict[int, dict[str, float]]:
    """Per budget, the selected epoch and validation loss, averaged over pretraining seeds."""
    rows = [json.loads(Path(p).read_text()) for p in selected]
    frame = pd.DataFrame([r for r in rows if "budget" in r])
    if frame.empty:
        return {}
    means = frame.groupby("budget")[["epoch", "val_loss", "epochs_trained"]].mean()
    return {int(k): row.to_dict() for k, row in means.iterrows()}


def budget_table(jobs: pd.DataFrame, cells: pd.DataFrame, summary: dict, selected: list[str | Path]) -> pd.DataFrame:
    """One row per (dataset, fraction, budget), and per (dataset, budget) with fraction
    ``all``: :func:`cdssl.reference_rows.reference_rows` of the budget's ssl model, with
    the selected pretraining epoch and its pretext validation loss."""
    pretext = _pretext(selected)
    rows = []
    for budget, ssl in _budget_models(cells).items():
        for row in reference_rows(jobs, cells, summary, ssl):
            row["pretrain_epoch"] = pretext.get(budget, {}).get("epoch", np.nan)
            row["pretrain_val_loss"] = pretext.get(budget, {}).get("val_loss", np.nan)
            rows.append(row)
    return pd.DataFrame(rows)


def _trend(budgets: list[int], diffs: list[float], lows: list[float], highs: list[float]) -> str:
    if not np.isfinite(diffs).any():
        return "no cell counted at any budget (a model did not learn: cells.csv says which)"
    below = [b for b, h in zip(budgets, highs, strict=True) if h < 0]
    lower = [b for b, d in zip(budgets, diffs, strict=True) if d < 0]
    if below:
        text = f"SSL lower from budget {below[0]} (interval below 0)"
    elif lower:
        text = f"SSL lower on average from budget {lower[0]}, no interval below 0"
    else:
        text = "no crossing: SSL higher at every budget"
    lowest = int(np.nanargmin(diffs))
    text += f"; lowest difference at budget {budgets[lowest]}"
    if lowest == len(budgets) - 1:
        return text + ", the last: still falling"
    return text + f"; no budget after it went lower ({', '.join(str(b) for b in budgets[lowest + 1 :])})"


def budget_lines(table: pd.DataFrame) -> list[str]:
    """Per dataset and reference, over all fractions: the difference at every budget and
    the crossing, or where the gap stopped shrinking."""
    lines = []
    for dataset, sub in table[table["fraction"] == ALL].groupby("dataset"):
        sub = sub.sort_values("budget")
        budgets = [int(b) for b in sub["budget"]]
        for key in ("sl_large", "strongest", "strongest_any"):
            if f"diff_{key}" not in sub or (
                key == "strongest_any" and (sub[f"{key}_name"] == sub["strongest_name"]).all()
            ):
                continue
            name = sub[f"{key}_name"].iloc[0]
            steps = ", ".join(f"{b}: {format_diff(r, key)}" for b, (_, r) in zip(budgets, sub.iterrows(), strict=True))
            trend = _trend(
                budgets, list(sub[f"diff_{key}"]), list(sub[f"diff_{key}_low"]), list(sub[f"diff_{key}_high"])
            )
            lines.append(f"budget {dataset}, SSL minus {name} by pretraining epochs: {steps}; {trend}")
    return lines


def budget_markdown(frame: pd.DataFrame) -> str:
    """The rows over all fractions as a Markdown table, then :func:`budget_lines`."""
    if frame.empty:
        return ""
    out = ["### Pretraining budget (mean over fractions; 95% intervals)", ""]
    for dataset, sub in frame[frame["fraction"] == ALL].groupby("dataset"):
        strongest = sub["strongest_name"].iloc[0]
        header = ["budget (epochs)", "selected epoch", "pretext val loss", "SSL", "SL large", strongest]
        header += ["SSL - SL large", f"SSL - {strongest}"]
        rows = [
            [int(r["budget"]), f"{r['pretrain_epoch']:.0f}", f"{r['pretrain_val_loss']:.4f}", *reference_cells(r)]
            for _, r in sub.sort_values("budget").iterrows()
        ]
        out += [f"{dataset}:", "", table(header, rows)]
    out += [f"- {line}" for line in budget_lines(frame)]
    return "\n".join(out) + "\n"


def write_budget_table(jobs_csv, cells_csv, summary_json, selected: list, budget_csv) -> pd.DataFrame:
    jobs = read_table(jobs_csv)
    cells = read_table(cells_csv)
    summary = json.loads(Path(summary_json).read_text())
    frame = budget_table(jobs, cells, summary, selected)
    with atomic_path(budget_csv) as tmp:
        frame.to_csv(tmp, index=False)
    for line in budget_lines(frame):
        LOG.info("%s", line)
    return frame
