"""Trivial answers for a fine-tuning cell, scored on the same test set as the networks.

A network's test MAE means something only beside what needs no learning from structure:

* the mean predictor: the training subset's mean target for every test crystal;
* a composition-only model: ridge regression on element fractions, its strength chosen
  on the cell's validation set (the set the networks use to choose their epoch).
"""

from __future__ import annotations

import numpy as np
import torch

from .graphs import GraphCache

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
