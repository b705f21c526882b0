"""Trivial answers for a fine-tuning cell, scored on the same test set as the networks.

A network's test MAE means something only beside what needs no learning from structure:

* the mean predictor: the training subset's mean target for every test crystal;
* a composition-only model: ridge regression on element fractions, its strength chosen
  on the cell's validation set (the set the networks use to choose their epoch);
* the field's standard models on fixed features (cdssl.features), once per (dataset,
  fraction, seed) rather than once per run: ridge and scikit-learn's gradient boosting
  (``HistGradientBoostingRegressor``) on Magpie composition features, on Magpie with
  structure numbers and on a frozen foundation model's crystal features (CHGNet), every
  choice made on the cell's validation set. On small property sets these are the
  answers to beat.

Boosting bins each feature at the midpoints between its distinct values, so a last-bit
difference in a feature (another CPU's vector instructions, another BLAS) can make two
equal values distinct and grow other trees: the matrices are rounded to
:data:`MANTISSA_BITS` bits before any fit, which makes the fits the same on any CPU.
What is left is the procedure's own noise at the features' precision: the chosen
setting is refitted :data:`PROCEDURE_REPEATS` times on inputs perturbed at that bit,
and the spread of those test MAEs is reported beside the verdict (boosting's
``random_state`` alone changes nothing here: no subsampling, no internal early stop).
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
# Rounding keeps this many bits of each feature's mantissa (a relative step of at most 2^-17,
# about 8e-6): Magpie's tabulated element data carry at most 5 significant digits, so two
# distinct values stay distinct. A binary grid, not a decimal one: a decimal grid puts its
# rounding ties exactly where decimal data sit (the mean of two 5-digit values ends in 5),
# and a tie flips with the last bit; a value lies on a binary tie almost never.
MANTISSA_BITS = 18
PROCEDURE_REPEATS = 3


def rounded(x: np.ndarray, bits: int = MANTISSA_BITS) -> np.ndarray:
    """``x`` with each mantissa rounded to ``bits`` bits (zeros, NaN and infinities kept):
    two inputs that differ only below that bit give the same array, bit for bit."""
    x = np.asarray(x, dtype=np.float64)
    finite = np.isfinite(x)
    out = x.copy()
    mantissa, exponent = np.frexp(x[finite])
    out[finite] = np.ldexp(np.round(np.ldexp(mantissa, bits)), exponent - bits)
    return out


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


def _best_on_validation(candidates, x: np.ndarray, y: np.ndarray, train, val, test) -> tuple[float, dict, Any]:
    """Fit every (params, model) candidate on train, keep the lowest validation MAE,
    return its test MAE, its params and the fitted model."""
    best = None
    for params, model in candidates:
        model.fit(x[train], y[train])
        val_mae = float(np.abs(model.predict(x[val]) - y[val]).mean())
        if best is None or val_mae < best[0]:
            best = (val_mae, params, model)
    _, params, model = best
    return float(np.abs(model.predict(x[test]) - y[test]).mean()), {**params, "val_mae": best[0]}, model


def fit_boosting(x: np.ndarray, y: np.ndarray, lr: float, leaf: int, max_iter: int, seed: int):
    """One HistGradientBoostingRegressor fit at the job's thread count, without internal early stop."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    # early_stopping off: its default turns on above 10,000 rows and would hold out a
    # random tenth, so a large set would lose rows and depend on the seed; the tree count
    # is chosen on the cell's own validation split instead
    model = HistGradientBoostingRegressor(
        learning_rate=lr, min_samples_leaf=leaf, max_iter=max_iter, early_stopping=False, random_state=seed
    )
    # its OpenMP would take every core; the job has torch's thread count (set from the
    # rule's threads), and the jobs beside it use the rest
    with threadpool_limits(limits=torch.get_num_threads(), user_api="openmp"):
        return model.fit(x, y)


def procedure_noise(
    x: np.ndarray, y: np.ndarray, train, test, params: dict, seed: int, repeats: int = PROCEDURE_REPEATS
) -> float:
    """Standard deviation of the test MAE over ``repeats`` refits of the chosen setting
    (learning rate, leaf size, tree count) on inputs perturbed by about one step of the
    rounding (relative normal noise of 2^-MANTISSA_BITS, then rounded again): how far
    the baseline moves for reasons that are not in the data."""
    maes = []
    for r in range(repeats):
        rng = np.random.default_rng([seed, r])
        jittered = rounded(x * (1 + rng.normal(0, 2.0**-MANTISSA_BITS, x.shape)))
        model = fit_boosting(
            jittered[train], y[train], params["learning_rate"], params["min_samples_leaf"], params["n_trees"], seed
        )
        maes.append(float(np.abs(model.predict(jittered[test]) - y[test]).mean()))
    return float(np.std(maes, ddof=1)) if repeats > 1 else 0.0


def boosting_on_validation(
    x: np.ndarray, y: np.ndarray, train, val, test, boosting: dict[str, Any], seed: int
) -> tuple[float, dict]:
    """Gradient boosting with every choice made on validation MAE (:func:`chosen_boosting`):
    the test MAE and the chosen settings."""
    mae, params, _ = chosen_boosting(x, y, train, val, test, boosting, seed)
    return mae, params


def chosen_boosting(
    x: np.ndarray, y: np.ndarray, train, val, test, boosting: dict[str, Any], seed: int
) -> tuple[float, dict, Any]:
    """Gradient boosting with every choice made on validation MAE: each (learning rate,
    leaf size) of the grid is fitted once up to ``max_iter`` trees, and the number of
    trees is chosen along the way (staged predictions), so the cap costs one fit, not one
    per candidate count. Returns the test MAE, the chosen settings and the chosen model,
    refitted with exactly its tree count (the same trees: no subsampling, no internal
    stop), so that a saved model holds no tree it does not use."""
    best = None
    for lr, leaf in itertools.product(boosting["learning_rates"], boosting["min_samples_leaf"]):
        model = fit_boosting(x[train], y[train], lr, leaf, boosting["max_iter"], seed)
        val_mae = [float(np.abs(p - y[val]).mean()) for p in model.staged_predict(x[val])]
        n_trees = int(np.argmin(val_mae)) + 1
        if best is None or val_mae[n_trees - 1] < best[0]:
            best = (val_mae[n_trees - 1], {"learning_rate": float(lr), "min_samples_leaf": int(leaf)}, model, n_trees)
    val_mae, params, model, n_trees = best
    prediction = next(itertools.islice(model.staged_predict(x[test]), n_trees - 1, None))
    chosen = fit_boosting(x[train], y[train], params["learning_rate"], params["min_samples_leaf"], n_trees, seed)
    return float(np.abs(prediction - y[test]).mean()), {**params, "n_trees": n_trees, "val_mae": val_mae}, chosen


def feature_baselines(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    train,
    val,
    test,
    boosting: dict[str, Any],
    seed: int,
    fitted: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Test MAE of ridge and of gradient boosting on one feature matrix (standardised on
    the training subset for ridge), every choice made on validation MAE; keys
    ``test_mae_<name>_ridge``, ``test_mae_<name>_boosting`` and their settings. The
    chosen models go into ``fitted`` (by family, ``<name>_ridge``) when it is given."""
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = rounded(x)
    # a structure number that could not be computed is NaN: ridge takes the training
    # split's median there (a no-op on matrices without one)
    ridge = (
        ({"alpha": float(a)}, make_pipeline(SimpleImputer(strategy="median"), StandardScaler(), Ridge(alpha=a)))
        for a in ALPHAS
    )
    ridge_mae, ridge_params, ridge_model = _best_on_validation(ridge, x, y, train, val, test)
    boost_mae, boost_params, boost_model = chosen_boosting(x, y, train, val, test, boosting, seed)
    if fitted is not None:
        fitted.update({f"{name}_ridge": ridge_model, f"{name}_boosting": boost_model})
    boost_params["procedure_sd"] = procedure_noise(x, y, train, test, boost_params, seed)
    return {
        f"test_mae_{name}_ridge": ridge_mae,
        f"{name}_ridge_params": ridge_params,
        f"test_mae_{name}_boosting": boost_mae,
        f"{name}_boosting_params": boost_params,
    }


def save_baselines(fitted: dict[str, Any], featurizer_of: dict[str, str], model_dir: str | Path) -> None:
    """The chosen models of one split, each in skops' format (cdssl.model_files: no pickle),
    and ``models.json`` saying which feature matrix each reads (cdssl.features)."""
    from .model_files import save_estimator

    folder = Path(model_dir)
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for family, model in fitted.items():
        save_estimator(model, folder / f"{family}.skops")
        files[family] = {"file": f"{family}.skops", "featurizer": featurizer_of[family]}
    write_json({"cdssl": {"kind": "features", "models": files, "mantissa_bits": MANTISSA_BITS}}, folder / "models.json")


def split_predictions(ids: Sequence[str], y: np.ndarray, rows: dict[str, np.ndarray], columns: dict[str, np.ndarray]):
    """One table of a split's validation and test rows: ``id``, ``split``, ``target``,
    then one column per model (``columns``: the model's predictions on the rows of
    ``rows["val"]`` then ``rows["test"]``)."""
    import pandas as pd

    order = np.concatenate([rows["val"], rows["test"]])
    return pd.DataFrame(
        {
            "id": [ids[i] for i in order],
            "split": ["val"] * len(rows["val"]) + ["test"] * len(rows["test"]),
            "target": y[order],
            **columns,
        }
    )


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
    predictions_csvs: Sequence[str | Path] | None = None,
    model_dirs: Sequence[str | Path] | None = None,
) -> None:
    """Rule baselines: ridge and boosting on each feature matrix (``{featurizer: npz}``,
    cdssl.features) for one (dataset, fraction), every seed, on exactly the split the
    networks of that cell use (:func:`finetune_split`). With ``predictions_csvs`` and
    ``model_dirs`` (seed by seed), each split's validation and test predictions of every
    model (what a blend is chosen from: cdssl.blend) and the chosen models themselves."""
    from .utils import atomic_path

    cache = GraphCache.load(graphs)
    matrices = {name: read_features(path, cache) for name, path in features.items()}
    y = cache.targets.numpy()
    for i, (seed, out) in enumerate(zip(seeds, metrics_jsons, strict=True)):
        train, val, test = finetune_split(len(cache), int(seed), fraction, test_fraction, val_fraction)
        result: dict[str, Any] = {"dataset": dataset, "fraction": fraction, "seed": int(seed)}
        fitted: dict[str, Any] = {}
        featurizer_of: dict[str, str] = {}
        columns: dict[str, np.ndarray] = {}
        for name, x in matrices.items():
            models: dict[str, Any] = {}
            result.update(feature_baselines(name, x, y, train, val, test, boosting, int(seed), models))
            x_round = rounded(x)
            for family, model in models.items():
                columns[family] = np.concatenate([model.predict(x_round[val]), model.predict(x_round[test])])
                featurizer_of[family] = name
            fitted.update(models)
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
        if predictions_csvs is not None:
            # the training mean beside the models: the floor a blend's candidates must beat
            columns["mean_predictor"] = np.full(len(val) + len(test), y[train].mean())
            table = split_predictions(cache.ids, y, {"val": val, "test": test}, columns)
            with atomic_path(predictions_csvs[i]) as tmp:
                table.to_csv(tmp, index=False)
        if model_dirs is not None:
            save_baselines(fitted, featurizer_of, model_dirs[i])
        write_json(result, out)
