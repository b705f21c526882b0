"""Statistics of the fine-tuning grid: cell means, which models learned, one model against another.

Input is the long runs table (:mod:`cdssl.runs`); a cell is a (dataset, fraction) and
each model of it one row of the cells table. Comparisons take one column of cell values
per model (:func:`per_cell`) and select models by their keys, never by a name.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .intervals import difference, paired_test
from .runs import CELL_KEYS, MODEL_KEYS, Model, model_mask, sort_runs

# the scratch networks SSL is counted against cell by cell (the paper's win count)
SCRATCH = ("sl", "sl_large")
# what the verdict compares SSL with: every answer without pretraining but the mean
# predictor (the floor a model must beat to count at all) ...
NO_PRETRAINING = (
    "sl",
    "sl_large",
    "composition",
    "magpie_ridge",
    "magpie_boosting",
    "magpie_structure_ridge",
    "magpie_structure_boosting",
)
# ... and, separately, the answers on a foundation model pretrained elsewhere, on far
# more data (cdssl.features): the strongest baseline of all is the best of both
PRETRAINED_ELSEWHERE = ("chgnet_ridge", "chgnet_boosting")
MIN_PREDICTION_SPREAD = 0.1
FLOOR = "mean_predictor"


def _sem(x: pd.Series) -> float:
    return x.std(ddof=1) / np.sqrt(len(x)) if len(x) > 1 else np.nan


def cell_table(runs: pd.DataFrame, min_prediction_spread: float = MIN_PREDICTION_SPREAD) -> pd.DataFrame:
    """One row per (cell, model): mean and standard error of the test MAE over seeds
    (``n`` runs); the smallest prediction spread of its runs (standard deviation of the
    test predictions over the test targets'; networks only); ``beats_mean``: below the
    mean predictor of the same test sets; ``learned``: beats the mean predictor and every
    run's spread is at least ``min_prediction_spread`` (the mean predictor itself is the
    floor, always kept); ``flag``: why a model did not learn, empty when it did."""
    keys = [*CELL_KEYS, *MODEL_KEYS]
    grouped = runs.groupby(keys, dropna=False, sort=False)
    cells = grouped["test_mae"].agg(mean="mean", sem=_sem, n="count")
    if "target_std" in runs:
        ratio = runs["prediction_std"] / runs["target_std"]
        cells["spread"] = ratio.groupby([runs[k] for k in keys], dropna=False, sort=False).min()
    else:  # metrics written before target_std existed: only the mean predictor flags
        cells["spread"] = np.nan
    cells = cells.reset_index()
    floor = cells[cells["family"] == FLOOR].set_index(list(CELL_KEYS))["mean"]
    is_floor = (cells["family"] == FLOOR).to_numpy()
    if floor.empty:  # metrics written before the baselines existed: nothing to flag against
        beats = np.ones(len(cells), dtype=bool)
    else:
        at = pd.MultiIndex.from_frame(cells[list(CELL_KEYS)])
        beats = cells["mean"].to_numpy() < floor.reindex(at).to_numpy()
    constant = (cells["spread"] < min_prediction_spread).to_numpy()
    cells["learned"] = is_floor | (beats & ~constant)
    # the floor is not below itself, nor above: empty
    cells["beats_mean"] = pd.array(np.where(is_floor, None, beats), dtype="boolean")
    reasons = np.where(
        beats,
        [f"predictions nearly constant (spread {s:.3g} < {min_prediction_spread:g})" for s in cells["spread"]],
        "not below the mean predictor",
    )
    cells["flag"] = np.where(cells["learned"], "", reasons)
    if "units" in runs:
        cells["units"] = cells["dataset"].map(runs.groupby("dataset")["units"].first())
    return sort_runs(cells)


def grid(cells: pd.DataFrame) -> pd.MultiIndex:
    """The (dataset, fraction) cells, in order."""
    return pd.MultiIndex.from_frame(cells[list(CELL_KEYS)].drop_duplicates().sort_values(list(CELL_KEYS)))


def per_cell(cells: pd.DataFrame, models: list[Model], column: str = "mean") -> pd.DataFrame:
    """One column per model (the :class:`Model` itself labels it), one row per cell: its
    ``column`` of the cells table (NaN where the model has no row)."""
    index = grid(cells)
    out = {}
    for model in models:
        rows = cells[model_mask(cells, model)].set_index(list(CELL_KEYS))[column]
        out[model] = rows.reindex(index)
    return pd.DataFrame(out, index=index)


def learned(cells: pd.DataFrame, models: list[Model]) -> pd.DataFrame:
    """Whether each model learned in each cell (:func:`per_cell` of ``learned``; a
    missing row counts as learned, as the floor's does)."""
    return per_cell(cells, models, "learned").fillna(True).astype(bool)


def by_family(models: list[Model]) -> dict[str, Model]:
    """The one model of each family that is not ssl (within one backbone's analysis)."""
    return {m.family: m for m in models if m.family != "ssl"}


def comparison(cells: pd.DataFrame, runs: pd.DataFrame, ssl: Model, other: Model) -> dict:
    """``ssl`` minus ``other`` on the cells where both learned, over all datasets and per
    dataset; against a scratch network also the cell-by-cell win count."""
    means, ok = per_cell(cells, [ssl, other]), learned(cells, [ssl, other])
    both = ok[ssl] & ok[other]
    index = means.index[both]
    out: dict = {
        "model": ssl.keys(),
        "other": other.keys(),
        "cell_means": difference(means, ssl, other, runs, index),
        "per_dataset": {
            d: difference(means, ssl, other, runs, index[index.get_level_values(0) == d])
            for d in index.unique("dataset")
        },
    }
    if other.family in SCRATCH:
        wins = means[ssl] < means[other]
        flags = per_cell(cells, [ssl, other], "flag").fillna("")
        out.update(
            ssl_wins=int((wins & both).sum()),
            cells_counted=int(both.sum()),
            cells_excluded=int((~both).sum()),
            # each excluded cell with why: which model did not learn, and how
            excluded=[
                {
                    "dataset": d,
                    "fraction": f,
                    "why": {m.family: flags.loc[(d, f), m] for m in (ssl, other) if flags.loc[(d, f), m]},
                }
                for d, f in means.index[~both]
            ],
            # the paper's count: every cell, models that did not learn included
            paper_count={
                "ssl_wins": int(wins.sum()),
                "cells": int(len(means)),
                "includes_models_that_did_not_learn": True,
            },
            wins_per_dataset={d: int((wins & both).xs(d).sum()) for d in means.index.unique("dataset")},
            # over the counted cells only: a pair of models that did not learn is no evidence
            pairs=paired_test(runs, ssl, other, index),
        )
    return out
