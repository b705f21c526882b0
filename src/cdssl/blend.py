"""The model a user should take for a cell: the validation-best of its models, or their blend.

A cell (task, fraction, seed) has many answers: the networks (SSL, SL, SL large), the
feature baselines and the hybrids. Each was fitted on the cell's training split and
made its own choices (epoch, tree count, ridge strength) on its validation split; the
test split is touched by none. On the same validation rows this module

* drops a candidate that did not learn there: its validation MAE not below the training
  mean's, or its validation predictions nearly constant (spread below
  ``min_prediction_spread`` of the targets'), as the analysis flags a model on test;
* blends the rest with non-negative weights that sum to one, least squares on the
  validation rows (scipy's NNLS on the rows and one heavily weighted row for the sum);
* scores the blend on validation by K-fold cross-fitting (weights fitted on K-1 folds
  of the validation rows, applied to the K-th), so that the blend's validation MAE is
  not measured on the rows that chose its weights;
* chooses the candidate or the blend with the lowest validation MAE: the best model.

Both the blend and the best model are scored on the test rows and reported as rows of
their own (families ``blend`` and ``best``). A single model's validation MAE is a little
optimistic, since it chose its epoch or tree count on the same rows; the blend's is
cross-fitted, so a tie leans to the single model, the simpler answer.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .utils import LOG, atomic_path, write_json

FOLDS = 5
# the weight of the sum-to-one row against the squared errors, per validation row
SUM_WEIGHT = 1e3


def convex_weights(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative weights summing to one that minimise the squared error of ``p @ w``
    (one column per model) against ``y``."""
    from scipy.optimize import nnls

    scale = SUM_WEIGHT * max(float(np.abs(y).max()), 1.0) * np.sqrt(len(y))
    a = np.vstack([p, np.full((1, p.shape[1]), scale)])
    b = np.concatenate([y, [scale]])
    w, _ = nnls(a, b, maxiter=50 * p.shape[1])
    total = w.sum()
    return w / total if total > 0 else np.full(p.shape[1], 1.0 / p.shape[1])


def cross_fitted_mae(p: np.ndarray, y: np.ndarray, seed: int, folds: int = FOLDS) -> float:
    """The blend's validation MAE, each row predicted by weights fitted without it."""
    folds = max(2, min(folds, len(y)))
    order = np.random.default_rng(seed).permutation(len(y))
    out = np.empty(len(y))
    for part in np.array_split(order, folds):
        rest = np.setdiff1d(order, part)
        out[part] = p[part] @ convex_weights(p[rest], y[rest])
    return float(np.abs(out - y).mean())


def read_candidates(candidates: Sequence[dict[str, Any]]) -> tuple[pd.DataFrame, dict[str, str]]:
    """The candidates' validation and test predictions in one table (``id``, ``split``,
    ``target``, a column per candidate label), sorted by split and id: the cross-fitting
    folds depend on the crystals, never on the order a file lists them in."""
    table = None
    for c in candidates:
        frame = pd.read_csv(c["predictions"])
        if "split" not in frame:
            raise ValueError(
                f"{c['predictions']}: test rows only (written before blends); "
                "python tools/migrate_results.py <results folder> adds the validation rows"
            )
        part = frame[["id", "split", "target", c["column"]]].rename(columns={c["column"]: c["label"]})
        if table is None:
            table = part
            continue
        merged = table.merge(part.drop(columns="target"), on=["id", "split"], how="left", validate="one_to_one")
        if merged[c["label"]].isna().any() or len(part) != len(table):
            raise ValueError(f"{c['predictions']}: not the validation and test rows of the cell's other models")
        table = merged
    table = table.sort_values(["split", "id"], kind="stable", ignore_index=True)
    return table, {c["label"]: c["predictions"] for c in candidates}


def choose(
    table: pd.DataFrame, labels: Sequence[str], floor: np.ndarray | None, min_spread: float, seed: int
) -> dict[str, Any]:
    """The eligible candidates, the blend's weights and scores, and the best model."""
    val = table["split"] == "val"
    y = table.loc[val, "target"].to_numpy()
    floor_mae = float(np.abs(floor[val.to_numpy()] - y).mean()) if floor is not None else np.inf
    rows = []
    for label in labels:
        pred = table.loc[val, label].to_numpy()
        mae = float(np.abs(pred - y).mean())
        reason = None
        if not mae < floor_mae:
            reason = f"validation MAE {mae:.4g} not below the training mean's {floor_mae:.4g}"
        elif pred.std() < min_spread * y.std():
            reason = f"validation predictions nearly constant (spread {pred.std() / y.std():.3g} of the targets')"
        rows.append({"label": label, "val_mae": mae, "eligible": reason is None, "reason": reason})
    eligible = [r["label"] for r in rows if r["eligible"]]
    if not eligible:
        raise ValueError("no model of the cell learned on validation: nothing to blend or choose")
    p_val = table.loc[val, eligible].to_numpy()
    weights = convex_weights(p_val, y)
    blend_val = cross_fitted_mae(p_val, y, seed)
    single = min((r for r in rows if r["eligible"]), key=lambda r: r["val_mae"])
    chosen = "blend" if blend_val < single["val_mae"] else single["label"]
    return {
        "candidates": rows,
        "weights": {label: float(w) for label, w in zip(eligible, weights, strict=True) if w > 0},
        "blend_val_mae": blend_val,
        "chosen": chosen,
        "chosen_val_mae": blend_val if chosen == "blend" else single["val_mae"],
    }


def blend_predictions(table: pd.DataFrame, weights: dict[str, float]) -> np.ndarray:
    """The blend of every row of ``table``."""
    return sum(table[label].to_numpy() * w for label, w in weights.items())


def _floor(candidates: Sequence[dict[str, Any]], table: pd.DataFrame) -> np.ndarray | None:
    """The training mean on ``table``'s rows, from a baselines file among the candidates'
    (its ``mean_predictor`` column); None without one."""
    for c in candidates:
        if c["kind"] == "features":
            frame = pd.read_csv(c["predictions"]).set_index(["id", "split"])
            if "mean_predictor" in frame:
                return frame.loc[list(zip(table["id"], table["split"], strict=True)), "mean_predictor"].to_numpy()
    return None


def run_blend(
    candidates: Sequence[dict[str, Any]],
    *,
    dataset: str,
    fraction: float,
    seeds: Sequence[int],
    min_prediction_spread: float,
    units: str,
    metrics_jsons: Sequence[str | Path],
    predictions_csvs: Sequence[str | Path],
) -> None:
    """Rule blend: for one (dataset, fraction) of a backbone, seed by seed, the blend of
    the cell's candidates and the best model (module docstring). ``candidates`` are dicts
    with ``seed``, ``label``, ``kind`` (network, features, hybrid), the model's keys
    (``family``, ``sigma``, ``budget``, ``pretrain_seed``, ``pool_size``), ``predictions`` (a CSV with
    ``id``, ``split``, ``target`` and ``column``) and ``model`` (what cdssl-predict loads;
    stored relative to the blend's folder). A baselines file's ``mean_predictor`` column
    is the floor a candidate must beat."""
    for seed, out, out_csv in zip(seeds, metrics_jsons, predictions_csvs, strict=True):
        mine = [c for c in candidates if int(c["seed"]) == int(seed)]
        table, _ = read_candidates(mine)
        result = choose(table, [c["label"] for c in mine], _floor(mine, table), min_prediction_spread, int(seed))
        table["blend"] = blend_predictions(table, result["weights"])
        table["best"] = table[result["chosen"]]
        test = table["split"] == "test"
        y = table.loc[test, "target"].to_numpy()
        chosen = result["chosen"]
        family_of = {c["label"]: c["family"] for c in mine} | {"blend": "blend"}
        runs = []
        for family, val_mae in (("blend", result["blend_val_mae"]), ("best", result["chosen_val_mae"])):
            pred = table.loc[test, family].to_numpy()
            runs.append(
                {
                    "dataset": dataset,
                    "fraction": fraction,
                    "seed": int(seed),
                    "mode": family,
                    "test_mae": float(np.abs(pred - y).mean()),
                    "val_mae": val_mae,
                    "prediction_std": float(pred.std()),
                    "target_std": float(y.std()),
                    "units": units,
                    "n_weighted": len(result["weights"]),
                    **({"settings": {"weights": result["weights"]}} if family == "blend" else {}),
                    # which model the best is: a candidate's label, or the blend
                    "chosen": chosen if family == "best" else None,
                    "chosen_family": family_of[chosen] if family == "best" else None,
                }
            )
        folder = Path(out).parent.resolve()
        described = [
            {
                **{k: c.get(k) for k in ("label", "kind", "family", "sigma", "budget", "pretrain_seed", "pool_size")},
                "model": os.path.relpath(Path(c["model"]).resolve(), folder),
                **next(r for r in result["candidates"] if r["label"] == c["label"]),
            }
            for c in mine
        ]
        write_json(
            {"runs": runs, "candidates": described, "weights": result["weights"], "chosen": chosen},
            out,
        )
        with atomic_path(out_csv) as tmp:
            table[["id", "split", "target", "blend", "best"]].to_csv(tmp, index=False)
        LOG.info(
            "%s fraction=%s seed=%s: best on validation %s (%.4g); blend of %d: test MAE %.4g; best: test MAE %.4g",
            dataset,
            fraction,
            seed,
            chosen,
            result["chosen_val_mae"],
            len(result["weights"]),
            runs[0]["test_mae"],
            runs[1]["test_mae"],
        )
