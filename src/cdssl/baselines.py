"""Trivial answers for a fine-tuning cell, scored on the same test set as the networks.

A network's test MAE means something only beside what needs no learning from structure:

* the mean predictor: the training subset's mean target for every test crystal;
* a composition-only model: ridge regression on element fractions, its strength chosen
  on the cell's validation set (the set the networks use to choose their epoch);
* the field's standard models on fixed features (cdssl.features), once per (dataset,
  fraction, seed) rather than once per run: ridge and scikit-learn's gradient boosting
  (``HistGradientBoostingRegressor``) on Magpie composition features and on a frozen
  foundation model's crystal features (CHGNet), every choice made on the cell's
  validation set. On small property sets these are the answers to beat.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from .features import read_features
from .graphs import GraphCache
from .splits import finetune_split
from .utils import LOG, write_json

ALPHAS = np.logspace(-4, 3, 15)


def element_fractions(cache: GraphCache, indices: np.ndarray, n_types: int) -> np.ndarray:
    """Each graph's fraction of atoms per element type (MatGL's type index)."""
    out = np.zeros((len(indices), n_types))
    types = cache.data["node_type"]
    for row, i in enumerate(indices):
        start, stop = int(cache.node_ptr[i]), int(cache.node_ptr[i + 1])
        counts = torch.bincount(types[start:stop].long(), minlength=n_types).double()
        out[row] = (counts / counts.sum()).numpy()
    return out


def mean_predictor_mae(y: np.ndarray, train: np.ndarray, test: np.ndarray) -> float:
    return float(np.abs(y[test] - y[train].mean()).mean())


def composition_mae(cache: GraphCache, y: np.ndarray, train: np.ndarray, val: np.ndarray, test: np.ndarray) -> float:
    """Test MAE of ridge on element fractions; alpha has the lowest validation MAE."""
    from sklearn.linear_model import Ridge

    n_types = int(cache.data["node_type"].max()) + 1
    x_train, x_val, x_test = (element_fractions(cache, idx, n_types) for idx in (train, val, test))
    best = None
    for alpha in ALPHAS:
        model = Ridge(alpha=alpha).fit(x_train, y[train])
        val_mae = float(np.abs(model.predict(x_val) - y[val]).mean())
        if best is None or val_mae < best[0]:
            best = (val_mae, model)
    return float(np.abs(best[1].predict(x_test) - y[test]).mean())


def _best_on_validation(candidates, x: np.ndarray, y: np.ndarray, train, val, test) -> tuple[float, dict]:
    """Fit every (params, model) candidate on train, keep the lowest validation MAE,
    return its test MAE and its params."""
    best = None
    for params, model in candidates:
        model.fit(x[train], y[train])
        val_mae = float(np.abs(model.predict(x[val]) - y[val]).mean())
        if best is None or val_mae < best[0]:
            best = (val_mae, params, model)
    _, params, model = best
    return float(np.abs(model.predict(x[test]) - y[test]).mean()), {**params, "val_mae": best[0]}


def boosting_on_validation(
    x: np.ndarray, y: np.ndarray, train, val, test, boosting: dict[str, Any], seed: int
) -> tuple[float, dict]:
    """Gradient boosting with every choice made on validation MAE: each (learning rate,
    leaf size) of the grid is fitted once up to ``max_iter`` trees, and the number of
    trees is chosen along the way (staged predictions), so the cap costs one fit, not one
    per candidate count. Returns the test MAE and the chosen settings."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    best = None
    for lr, leaf in itertools.product(boosting["learning_rates"], boosting["min_samples_leaf"]):
        model = HistGradientBoostingRegressor(
            learning_rate=lr, min_samples_leaf=leaf, max_iter=boosting["max_iter"], random_state=seed
        )
        # its OpenMP would take every core; the job has torch's thread count (set from the
        # rule's threads), and the jobs beside it use the rest
        with threadpool_limits(limits=torch.get_num_threads(), user_api="openmp"):
            model.fit(x[train], y[train])
        val_mae = [float(np.abs(p - y[val]).mean()) for p in model.staged_predict(x[val])]
        n_trees = int(np.argmin(val_mae)) + 1
        if best is None or val_mae[n_trees - 1] < best[0]:
            best = (val_mae[n_trees - 1], {"learning_rate": float(lr), "min_samples_leaf": int(leaf)}, model, n_trees)
    val_mae, params, model, n_trees = best
    prediction = next(itertools.islice(model.staged_predict(x[test]), n_trees - 1, None))
    return float(np.abs(prediction - y[test]).mean()), {**params, "n_trees": n_trees, "val_mae": val_mae}


def feature_baselines(
    name: str, x: np.ndarray, y: np.ndarray, train, val, test, boosting: dict[str, Any], seed: int
) -> dict[str, Any]:
    """Test MAE of ridge and of gradient boosting on one feature matrix (standardised on
    the training subset for ridge), every choice made on validation MAE; keys
    ``test_mae_<name>_ridge``, ``test_mae_<name>_boosting`` and their settings."""
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    ridge = ((({"alpha": float(a)}), make_pipeline(StandardScaler(), Ridge(alpha=a))) for a in ALPHAS)
    ridge_mae, ridge_params = _best_on_validation(ridge, x, y, train, val, test)
    boost_mae, boost_params = boosting_on_validation(x, y, train, val, test, boosting, seed)
    return {
        f"test_mae_{name}_ridge": ridge_mae,
        f"{name}_ridge_params": ridge_params,
        f"test_mae_{name}_boosting": boost_mae,
        f"{name}_boosting_params": boost_params,
    }


def run_baselines(
    graphs: str | Path,
    features: dict[str, str | Path],
    *,
    dataset: str,
    fraction: float,
    seeds: Sequence[int],
    test_fraction: float,
    val_fraction: float,
    boosting: dict[str, Any],
    metrics_jsons: Sequence[str | Path],
) -> None:
    """Rule baselines: ridge and boosting on each feature matrix (``{featurizer: npz}``,
    cdssl.features) for one (dataset, fraction), every seed, on exactly the split the
    networks of that cell use (:func:`finetune_split`)."""
    cache = GraphCache.load(graphs)
    matrices = {name: read_features(path, cache) for name, path in features.items()}
    y = cache.targets.numpy()
    for seed, out in zip(seeds, metrics_jsons, strict=True):
        train, val, test = finetune_split(len(cache), int(seed), fraction, test_fraction, val_fraction)
        result: dict[str, Any] = {"dataset": dataset, "fraction": fraction, "seed": int(seed)}
        for name, x in matrices.items():
            result.update(feature_baselines(name, x, y, train, val, test, boosting, int(seed)))
            LOG.info(
                "%s fraction=%s seed=%s: %s ridge %.4g, %s boosting %.4g (%s)",
                dataset,
                fraction,
                seed,
                name,
                result[f"test_mae_{name}_ridge"],
                name,
                result[f"test_mae_{name}_boosting"],
                result[f"{name}_boosting_params"],
            )
        write_json(result, out)
