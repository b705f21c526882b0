"""What pretraining adds to the descriptors a materials scientist already uses.

The hybrid model of a cell is gradient boosting on the strongest descriptor set of the
baselines (Magpie with structure numbers, cdssl.features) beside k principal components
of a frozen encoder's crystal embedding (cdssl.models.graph_embedding). Its control is the
same model on the embedding of an untrained encoder of the same architecture, its weights
drawn with the pretraining seed: the difference between the two is what pretraining adds
beyond composition and structure, with the descriptors, the boosting and the split held
fixed.

Every choice is made on the cell's validation split, the test split untouched:

* the PCA (after standardising the embedding) is fitted on the training split only;
* k is the one of :data:`COMPONENTS` with the lowest validation MAE;
* the boosting setting (learning rate, leaf size) is the one the descriptor-only boosting
  baseline chose on the same split, so the hybrid differs from that baseline by the
  components alone; the tree count is chosen again along the fit (cdssl.baselines).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .baselines import fit_boosting, rounded
from .features import read_features
from .graphs import GraphCache
from .model_files import read_model_folder, untrained_twin
from .splits import finetune_split
from .utils import LOG, atomic_path, write_json

COMPONENTS = (2, 4, 8)
FAMILIES = {"z": "hybrid", "z_random": "hybrid_random"}
# the strongest descriptor set of the baselines (cdssl.features)
DESCRIPTORS = "magpie_structure"


def encoder_embeddings(encoder: str | Path, graphs: str | Path, seed: int, out_npz: str | Path) -> None:
    """Rule embed: every crystal of a dataset through the frozen pretrained encoder and
    through its untrained twin (weights drawn with ``seed``), one row per crystal."""
    from .probes import embeddings

    folder = read_model_folder(encoder)  # checked before any work: no file chooses code
    cache = GraphCache.load(graphs)
    rows = np.arange(len(cache))
    z = embeddings(folder.build(), cache, rows)
    z_random = embeddings(untrained_twin(folder, seed), cache, rows)
    LOG.info("embeddings of %d crystals: %d numbers each", *z.shape)
    with atomic_path(out_npz) as tmp:
        np.savez(tmp, ids=np.array(cache.ids), z=z, z_random=z_random)


def components(z: np.ndarray, train: np.ndarray, k: int) -> np.ndarray:
    """The first ``k`` principal components of the embedding, every crystal projected,
    the scaling and the axes fitted on the training rows alone."""
    from sklearn.decomposition import PCA

    from .probes import informative_columns

    keep = informative_columns(z[train])
    z = z[:, keep]
    mean, std = z[train].mean(axis=0), z[train].std(axis=0)
    scaled = (z - mean) / np.where(std > 0, std, 1.0)
    k = min(k, scaled.shape[1], len(train))
    return PCA(n_components=k, svd_solver="full").fit(scaled[train]).transform(scaled)


def hybrid_on_validation(
    x: np.ndarray, z: np.ndarray, y: np.ndarray, train, val, test, setting: dict[str, Any], max_iter: int, seed: int
) -> tuple[np.ndarray, dict]:
    """Boosting on [x, k components of z] for every k of :data:`COMPONENTS` at the
    descriptor model's ``setting``; the k and tree count with the lowest validation MAE.
    Returns the test predictions and the choices."""
    best = None
    for k in COMPONENTS:
        features = rounded(np.hstack([x, components(z, train, k)]))
        model = fit_boosting(
            features[train], y[train], setting["learning_rate"], setting["min_samples_leaf"], max_iter, seed
        )
        val_mae = [float(np.abs(p - y[val]).mean()) for p in model.staged_predict(features[val])]
        n_trees = int(np.argmin(val_mae)) + 1
        if best is None or val_mae[n_trees - 1] < best[0]:
            best = (val_mae[n_trees - 1], k, n_trees, model, features)
    val_mae, k, n_trees, model, features = best
    prediction = next(itertools.islice(model.staged_predict(features[test]), n_trees - 1, None))
    return prediction, {"components": k, "n_trees": n_trees, "val_mae": val_mae, **setting}


def run_hybrid(
    graphs: str | Path,
    descriptors: str | Path,
    embeddings_npz: str | Path,
    baseline_jsons: Sequence[str | Path],
    *,
    dataset: str,
    fraction: float,
    seeds: Sequence[int],
    test_fraction: float,
    val_fraction: float,
    boosting: dict[str, Any],
    encoder: dict[str, Any],
    units: str,
    metrics_jsons: Sequence[str | Path],
) -> None:
    """Rule hybrid: for one (dataset, fraction, pretrained encoder) and every seed, on the
    networks' split, the hybrid and its random-init control; one metrics.json per seed
    with a row per family (``encoder``: the encoder's keys, sigma, budget, pretrain_seed).
    ``baseline_jsons`` are the cell's baseline metrics, seed by seed: the setting the
    descriptor-only boosting chose there is the hybrid's."""
    cache = GraphCache.load(graphs)
    x = rounded(read_features(descriptors, cache))
    table = np.load(embeddings_npz)
    if list(table["ids"]) != cache.ids:
        raise ValueError(f"{embeddings_npz} does not belong to the graph cache {graphs}; rerun its rule")
    y = cache.targets.numpy()
    for seed, out, baseline in zip(seeds, metrics_jsons, baseline_jsons, strict=True):
        train, val, test = finetune_split(len(cache), int(seed), fraction, test_fraction, val_fraction)
        # the descriptor model's own choice on this split: the hybrid adds components only
        chosen_there = json.loads(Path(baseline).read_text())[f"{DESCRIPTORS}_boosting_params"]
        setting = {k: chosen_there[k] for k in ("learning_rate", "min_samples_leaf")}
        runs = []
        for key, family in FAMILIES.items():
            pred, chosen = hybrid_on_validation(
                x, table[key], y, train, val, test, setting, boosting["max_iter"], int(seed)
            )
            runs.append(
                {
                    "dataset": dataset,
                    "fraction": fraction,
                    "seed": int(seed),
                    "mode": family,
                    **encoder,
                    "test_mae": float(np.abs(pred - y[test]).mean()),
                    "prediction_std": float(pred.std()),
                    "target_std": float(y[test].std()),
                    "units": units,
                    "settings": chosen,
                }
            )
            LOG.info(
                "%s fraction=%s seed=%s %s: test MAE %.4g (%s)",
                dataset,
                fraction,
                seed,
                family,
                runs[-1]["test_mae"],
                chosen,
            )
        write_json({"runs": runs}, out)
