"""The map: where denoising pretraining pays, per task and pretraining-pool size.

One row per task and pretrained encoder (backbone, sigma, budget, pool size): SSL minus
the strongest answer without pretraining (its hierarchical 95% interval, from the run's
verdicts), the hybrid minus its random-init control (what the encoder's pretraining alone
adds beyond composition and structure), and the encoder's pretext validation loss beside
the lower of the two lookup references (cdssl.references). The trend of the gap with the
pool's size is a weighted least-squares line in log10(crystals), weights from each
interval; where the line crosses zero, with its interval, is drawn from the line's
covariance, never extrapolated without one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .markdown import table as table_md
from .utils import atomic_path

# a 95% interval is mean +- 1.96 sd under the normal approximation the weights use
Z95 = 1.959964
ENCODER_KEYS = ("backbone", "sigma", "budget", "pool_size")
LOOKUPS = ("val_loss_lookup_noisy_length", "val_loss_lookup_element_pair")


def pretext_rows(
    selected: Sequence[str | Path], reference: Sequence[str | Path], split: Sequence[str | Path], keys: Sequence[dict]
) -> pd.DataFrame:
    """One row per pretraining run (``keys``: its sigma, budget, pool_size and
    pretrain_seed, in the order of the files): the selected validation loss, the lower
    lookup, and the crystals its pool holds (training plus validation)."""
    rows = []
    for sel, ref, spl, key in zip(selected, reference, split, keys, strict=True):
        chosen, lookups = json.loads(Path(sel).read_text()), json.loads(Path(ref).read_text())
        kinds = pd.read_csv(spl)["split"]
        rows.append(
            {
                **key,
                "pool_crystals": int(kinds.isin(["train", "val"]).sum()),
                "pretext_val_loss": float(chosen["val_loss"]),
                "lookup_val_loss": min(float(lookups[k]) for k in LOOKUPS),
            }
        )
    return pd.DataFrame(rows)


def _encoder(model: dict) -> tuple:
    return tuple(model.get(k) for k in ENCODER_KEYS)


def _interval(block: dict | None, prefix: str) -> dict:
    if not block:
        return {f"{prefix}": np.nan, f"{prefix}_low": np.nan, f"{prefix}_high": np.nan}
    return {prefix: block["mean"], f"{prefix}_low": block["ci_low"], f"{prefix}_high": block["ci_high"]}


def map_table(summary: dict, pretext: pd.DataFrame) -> pd.DataFrame:
    """The map's cells from a run's summary (cdssl.verdicts.summarise) and its pretraining
    runs (:func:`pretext_rows`): one row per task and encoder."""
    hybrids = {_encoder(h["model"]): h["per_dataset"] for h in summary.get("hybrid", [])}
    pre = pretext.copy()
    pre["pool_size"] = pre["pool_size"].astype(object).where(pre["pool_size"].notna(), None)
    rows = []
    for found in summary.get("verdict", []):
        model = found["model"]
        runs = pre[np.logical_and.reduce([_same(pre[k], model.get(k)) for k in ("sigma", "budget", "pool_size")])]
        for dataset, block in found["per_dataset"].items():
            hybrid = hybrids.get(_encoder(model), {}).get(dataset, {})
            gap = block["ssl_minus_strongest"]
            rows.append(
                {
                    "dataset": dataset,
                    **{k: model.get(k) for k in ENCODER_KEYS},
                    "pool_crystals": int(runs["pool_crystals"].max()) if len(runs) else np.nan,
                    "strongest": block["strongest_without_pretraining"],
                    "strongest_mae": block["its_mean_test_mae"],
                    "ssl_mae": block["ssl_mean_test_mae"],
                    **_interval(gap, "ssl_minus_strongest"),
                    "p_value": gap.get("p_value"),
                    "ssl_wins": block["ssl_wins"],
                    "cells_counted": block["cells_counted"],
                    "cells": block["cells"],
                    **_interval(hybrid.get("hybrid_minus_random_init"), "hybrid_minus_random_init"),
                    "pretext_val_loss": float(runs["pretext_val_loss"].mean()) if len(runs) else np.nan,
                    "lookup_val_loss": float(runs["lookup_val_loss"].mean()) if len(runs) else np.nan,
                    "pretrain_seeds": int(len(runs)),
                }
            )
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["verdict"] = [_word(r) for r in table.itertuples()]
    return table.sort_values(["dataset", "backbone", "sigma", "pool_crystals"], kind="stable").reset_index(drop=True)


def _same(column: pd.Series, value) -> pd.Series:
    return column.isna() if value is None else column == value


def _word(row) -> str:
    """SSL against the strongest answer without pretraining: ``wins`` or ``loses`` where
    the interval excludes zero, ``ties`` where it holds zero, ``not counted`` where no
    cell had both models learn (no interval)."""
    if row.ssl_minus_strongest_low != row.ssl_minus_strongest_low:
        return "not counted"
    if row.ssl_minus_strongest_high < 0:
        return "wins"
    if row.ssl_minus_strongest_low > 0:
        return "loses"
    return "ties"


def trend(table: pd.DataFrame, draws: int = 20_000, seed: int = 0) -> pd.DataFrame:
    """Per task and encoder setting other than the pool's size, with at least two pool
    sizes: the line gap = a + b log10(crystals) by weighted least squares (each gap's
    weight from its interval's half-width), b per decade with its 95% interval, and the
    pool size where the line crosses zero, with the 2.5-97.5% range of the crossing over
    draws of (a, b) from the fit's covariance (empty where the crossing lies behind the
    data or the slope's sign is unresolved)."""
    rows = []
    group = ["dataset", "backbone", "sigma", "budget"]
    for key, part in table.groupby(group, dropna=False, sort=False):
        part = part.dropna(subset=["pool_crystals", "ssl_minus_strongest"])
        if part["pool_crystals"].nunique() < 2:
            continue
        x = np.log10(part["pool_crystals"].to_numpy(float))
        y = part["ssl_minus_strongest"].to_numpy(float)
        sd = (part["ssl_minus_strongest_high"] - part["ssl_minus_strongest_low"]).to_numpy(float) / (2 * Z95)
        w = 1.0 / np.maximum(sd, 1e-12) ** 2
        design = np.column_stack([np.ones_like(x), x])
        cov = np.linalg.inv(design.T @ (design * w[:, None]))
        a, b = cov @ design.T @ (w * y)
        half = Z95 * np.sqrt(cov[1, 1])
        row = dict(zip(group, key, strict=True)) | {
            "pool_sizes": int(part["pool_crystals"].nunique()),
            "gap_at_largest": float(a + b * x.max()),
            "slope_per_decade": float(b),
            "slope_low": float(b - half),
            "slope_high": float(b + half),
            "crosses_at": np.nan,
            "crosses_low": np.nan,
            "crosses_high": np.nan,
        }
        if np.sign(b - half) == np.sign(b + half) and np.sign(b) != np.sign(a + b * x.max()):
            # the gap moves toward zero: where would the line reach it
            sample = np.random.default_rng(seed).multivariate_normal([a, b], cov, size=draws)
            same_sign = np.sign(sample[:, 1]) == np.sign(b)
            crossing = -sample[same_sign, 0] / sample[same_sign, 1]
            row["crosses_at"] = float(10 ** (-a / b))
            row["crosses_low"], row["crosses_high"] = (float(10**q) for q in np.quantile(crossing, [0.025, 0.975]))
        rows.append(row)
    return pd.DataFrame(rows)


def map_markdown(table: pd.DataFrame, lines: pd.DataFrame) -> str:
    """The map's section of results.md: one row per task and encoder, then the trend of
    the gap with the pool's size where there are several sizes."""
    if table.empty:
        return ""
    header = [
        "task",
        "pool (crystals)",
        "strongest without pretraining",
        "SSL minus it (95% CI)",
        "SSL",
        "hybrid minus random init (95% CI)",
        "pretext val loss (lower lookup)",
    ]
    rows = [
        [
            r.dataset,
            f"{int(r.pool_crystals):,}" if r.pool_crystals == r.pool_crystals else "",
            f"{r.strongest} {r.strongest_mae:.4f}",
            _ci(r.ssl_minus_strongest, r.ssl_minus_strongest_low, r.ssl_minus_strongest_high),
            f"{r.verdict} ({r.ssl_wins} of {r.cells_counted} cells)",
            _ci(r.hybrid_minus_random_init, r.hybrid_minus_random_init_low, r.hybrid_minus_random_init_high),
            f"{r.pretext_val_loss:.4f} ({r.lookup_val_loss:.4f})",
        ]
        for r in table.itertuples()
    ]
    text = "### The map: SSL per task and pretraining pool\n\n" + table_md(header, rows)
    if len(lines):
        trend_rows = [
            [
                r.dataset,
                str(r.pool_sizes),
                f"{r.slope_per_decade:+.4f} ({r.slope_low:+.4f} to {r.slope_high:+.4f})",
                f"{r.crosses_at:,.0f} ({r.crosses_low:,.0f} to {r.crosses_high:,.0f})"
                if r.crosses_at == r.crosses_at
                else "no crossing resolved",
            ]
            for r in lines.itertuples()
        ]
        text += (
            "\n\nThe gap's trend with the pool: weighted least squares of SSL minus the strongest "
            "on log10(crystals), weights from each interval; the crossing's range is over the "
            "fit's covariance.\n\n"
            + table_md(["task", "pool sizes", "slope per decade (95% CI)", "crosses zero at (95% range)"], trend_rows)
        )
    return text


def _ci(mean: float, low: float, high: float) -> str:
    return "" if mean != mean else f"{mean:+.4f} ({low:+.4f} to {high:+.4f})"


def write_map(
    summary_json: str | Path,
    selected: Sequence[str | Path],
    reference: Sequence[str | Path],
    split: Sequence[str | Path],
    keys: Sequence[dict],
    map_csv: str | Path,
    trend_csv: str | Path,
) -> pd.DataFrame:
    """Write the map's table and its trend (:func:`map_table`, :func:`trend`)."""
    summary = json.loads(Path(summary_json).read_text())
    table = map_table(summary, pretext_rows(selected, reference, split, keys))
    lines = trend(table) if len(table) else pd.DataFrame()
    with atomic_path(map_csv) as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(trend_csv) as tmp:
        lines.to_csv(tmp, index=False)
    return table
