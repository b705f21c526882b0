"""The fine-tuning split of a labelled dataset, shared by the networks and the composition baselines."""

from __future__ import annotations

import numpy as np


def finetune_split(
    n: int, seed: int, fraction: float, test_fraction: float, val_fraction: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, test) indices for one (dataset, seed, fraction).

    One permutation per seed: its head is the test set, then the validation set, so
    both are the same for every fraction; training subsets are prefixes of the rest,
    so the 10% subset lies inside the 20% one, and so on. ``fraction`` is a fraction of
    the whole dataset, as in the paper.
    """
    order = np.random.default_rng(seed).permutation(n)
    n_test = max(1, int(round(test_fraction * n)))
    n_val = max(1, int(round(val_fraction * n)))
    pool = order[n_test + n_val :]
    n_train = min(len(pool), max(1, int(round(fraction * n))))
    return np.sort(pool[:n_train]), np.sort(order[n_test : n_test + n_val]), np.sort(order[:n_test])
