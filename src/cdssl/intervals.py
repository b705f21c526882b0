"""Intervals and tests of a difference in test MAE: bootstraps and Wilcoxon signed-rank tests.

A difference is one model's runs minus another's on the same cells. The interval
resamples every level that varies (pretraining seeds, then cells, then fine-tuning
seeds): :func:`run_array` lays a model's runs out on those levels.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from .runs import Model, model_mask

NAN_INTERVAL = {"mean": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": 0}


def bootstrap_mean(diffs: np.ndarray, n_boot: int = 10_000, seed: int = 0, level: float = 0.95) -> dict:
    """Mean of ``diffs`` with a percentile bootstrap interval (resampling the values)."""
    diffs = np.asarray(diffs, dtype=float)
    diffs = diffs[np.isfinite(diffs)]
    if len(diffs) == 0:
        return dict(NAN_INTERVAL)
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, len(diffs), size=(n_boot, len(diffs)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return {"mean": float(diffs.mean()), "ci_low": float(low), "ci_high": float(high), "n": int(len(diffs))}


def run_array(runs: pd.DataFrame, cells: pd.MultiIndex, model: Model) -> np.ndarray:
    """``model``'s test MAE per run as [pretraining seed, cell, fine-tuning seed] over
    ``cells`` (a (dataset, fraction) index; NaN where a run is missing). A model without
    pretraining has a single pretraining level."""
    seeds = sorted(runs["seed"].unique())
    values = runs[model_mask(runs, model)]
    has_level = values["pretrain_seed"].notna().any()
    levels_of = values["pretrain_seed"].fillna(0) if has_level else pd.Series(0, index=values.index)
    levels = sorted(levels_of.unique())
    out = np.full((len(levels), len(cells), len(seeds)), np.nan)
    cell_of = {key: i for i, key in enumerate(cells)}
    for level, dataset, fraction, seed, mae in zip(
        levels_of, values["dataset"], values["fraction"], values["seed"], values["test_mae"], strict=True
    ):
        c = cell_of.get((dataset, fraction))
        if c is not None:
            out[levels.index(level), c, seeds.index(seed)] = mae
    return out


def hierarchical_bootstrap(
    a: np.ndarray, b: np.ndarray, n_boot: int = 10_000, seed: int = 0, level: float = 0.95
) -> dict:
    """Mean of ``a - b`` with a percentile interval that resamples at every level that
    varies: pretraining seeds, then cells, then fine-tuning seeds within each drawn cell.
    ``a`` and ``b`` are [pretraining seed, cell, fine-tuning seed] (:func:`run_array`);
    one with a single pretraining level is the same for every pretraining seed."""
    diff = a - b  # broadcasts a single pretraining level
    n_p, n_c, n_s = diff.shape
    if not np.isfinite(diff).any():
        return dict(NAN_INTERVAL)
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for start in range(0, n_boot, 500):
        k = min(500, n_boot - start)
        p = rng.integers(0, n_p, size=(k, n_p, 1, 1))
        c = rng.integers(0, n_c, size=(k, 1, n_c, 1))
        s = rng.integers(0, n_s, size=(k, 1, n_c, n_s))
        drawn = diff[p, c, s]  # (k, n_p, n_c, n_s)
        means[start : start + k] = np.nanmean(drawn.reshape(k, -1), axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.nanpercentile(means, [tail, 100 - tail])
    # the point estimate: cell means averaged, each over its pretraining and fine-tuning seeds
    return {
        "mean": float(np.nanmean(np.nanmean(diff, axis=(0, 2)))),
        "ci_low": float(low),
        "ci_high": float(high),
        "n": int(np.isfinite(np.nanmean(diff, axis=(0, 2))).sum()),
        "pretrain_seeds": int(n_p),
    }


def wilcoxon_p(diffs: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of ``diffs`` (zeros dropped); NaN when
    fewer than two values or all zero."""
    finite = np.asarray(diffs, dtype=float)
    finite = finite[np.isfinite(finite)]
    if len(finite) >= 2 and np.any(finite != 0):
        return float(stats.wilcoxon(finite, zero_method="wilcox").pvalue)
    return float("nan")


def difference(
    means: pd.DataFrame, model: Model, other: Model, runs: pd.DataFrame | None = None, cells: pd.Index | None = None
) -> dict:
    """``model`` minus ``other`` over the cells of ``means`` (cell means: a (dataset,
    fraction) index, one column per model), or the subset ``cells``: the mean difference
    of cell means with a 95% interval, and a Wilcoxon signed-rank test over cells. With
    the runs the interval is a hierarchical bootstrap (:func:`hierarchical_bootstrap`);
    without, a bootstrap over cell means."""
    part = means if cells is None else means.loc[cells]
    diffs = (part[model] - part[other]).to_numpy()
    if runs is not None and len(part):
        interval = hierarchical_bootstrap(run_array(runs, part.index, model), run_array(runs, part.index, other))
        unit = "cell (dataset, fraction); interval resampling pretraining seeds, then cells, then fine-tuning seeds"
    else:
        interval, unit = bootstrap_mean(diffs), "cell (dataset, fraction), mean over seeds"
    return {"unit": unit, **interval, "p_value": wilcoxon_p(diffs)}


def paired_test(runs: pd.DataFrame, model: Model, other: Model, cells: pd.Index | None = None) -> dict:
    """Wilcoxon signed-rank of ``model`` vs ``other`` test MAE, paired over (dataset,
    fraction, seed), on ``cells`` only when given (the cells where both learned).

    The pairs share test sets, nested training sets and one encoder, so this p-value is
    optimistic; :func:`difference` gives the one whose unit is the cell."""
    keys = ["dataset", "fraction", "seed"]
    # several pretraining runs of one pair count as their mean
    a = runs[model_mask(runs, model)].groupby(keys)["test_mae"].mean()
    b = runs[model_mask(runs, other)].groupby(keys)["test_mae"].mean()
    pairs = pd.concat([a, b], axis=1, keys=["a", "b"], join="inner")
    if cells is not None:
        pairs = pairs[pairs.index.droplevel("seed").isin(cells)]
    diff = (pairs["a"] - pairs["b"]).to_numpy()
    result = {
        "n_pairs": int(len(diff)),
        "median_diff": float(np.median(diff)) if len(diff) else float("nan"),
        "lower_pairs": int((diff < 0).sum()),
        "statistic": float("nan"),
        "p_value": float("nan"),
    }
    if len(diff) >= 2 and np.any(diff != 0):
        res = stats.wilcoxon(pairs["a"], pairs["b"], alternative="two-sided", zero_method="wilcox")
        result["statistic"], result["p_value"] = float(res.statistic), float(res.pvalue)
    return result
