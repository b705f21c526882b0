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

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .baselines import fit_boosting, rounded, split_predictions
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


def fit_components(z_train: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """The projection onto the first ``k`` principal components, fitted on the training
    rows alone: the informative columns (cdssl.probes), their scaling and the axes; all
    plain arrays, so a saved hybrid model stores them as such (:func:`project`)."""
    from sklearn.decomposition import PCA

    from .probes import informative_columns

    keep = informative_columns(z_train)
    z = z_train[:, keep]
    mean, std = z.mean(axis=0), z.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    k = min(k, z.shape[1], len(z))
    pca = PCA(n_components=k, svd_solver="full").fit((z - mean) / std)
    return {"keep": keep, "mean": mean, "std": std, "center": pca.mean_, "axes": pca.components_}


def project(z: np.ndarray, fitted: dict[str, np.ndarray]) -> np.ndarray:
    """Every row of ``z`` on the axes of :func:`fit_components` (one code path for the
    workflow's runs and for cdssl-predict)."""
    scaled = (z[:, fitted["keep"]] - fitted["mean"]) / fitted["std"]
    return (scaled - fitted["center"]) @ fitted["axes"].T


def components(z: np.ndarray, train: np.ndarray, k: int) -> np.ndarray:
    """The first ``k`` principal components of the embedding, every crystal projected,
    the scaling and the axes fitted on the training rows alone."""
    return project(z, fit_components(z[train], k))


def hybrid_on_validation(
    x: np.ndarray, z: np.ndarray, y: np.ndarray, train, val, test, setting: dict[str, Any], max_iter: int, seed: int
) -> tuple[np.ndarray, dict]:
    """Boosting on [x, k components of z] for every k of :data:`COMPONENTS` at the
    descriptor model's ``setting``; the k and tree count with the lowest validation MAE.
    Returns the test predictions and the choices (:func:`chosen_hybrid` gives the model)."""
    model, fitted, chosen = chosen_hybrid(x, z, y, train, val, setting, max_iter, seed)
    return model.predict(hybrid_features(x[test], z[test], fitted)), chosen


def hybrid_features(x: np.ndarray, z: np.ndarray, fitted: dict[str, np.ndarray]) -> np.ndarray:
    """What the hybrid's boosting reads: the descriptors beside the embedding's components, rounded."""
    return rounded(np.hstack([x, project(z, fitted)]))


def chosen_hybrid(
    x: np.ndarray, z: np.ndarray, y: np.ndarray, train, val, setting: dict[str, Any], max_iter: int, seed: int
) -> tuple[Any, dict[str, np.ndarray], dict]:
    """The hybrid of :func:`hybrid_on_validation`: the boosting model refitted with its
    chosen tree count (the same trees), the projection and the choices."""
    best = None
    for k in COMPONENTS:
        fitted = fit_components(z[train], k)
        features = hybrid_features(x, z, fitted)
        model = fit_boosting(
            features[train], y[train], setting["learning_rate"], setting["min_samples_leaf"], max_iter, seed
        )
        val_mae = [float(np.abs(p - y[val]).mean()) for p in model.staged_predict(features[val])]
        n_trees = int(np.argmin(val_mae)) + 1
        if best is None or val_mae[n_trees - 1] < best[0]:
            best = (val_mae[n_trees - 1], k, n_trees, fitted, features)
    val_mae, k, n_trees, fitted, features = best
    model = fit_boosting(
        features[train], y[train], setting["learning_rate"], setting["min_samples_leaf"], n_trees, seed
    )
    return model, fitted, {"components": k, "n_trees": n_trees, "val_mae": val_mae, **setting}


def save_hybrid(
    model: Any, fitted: dict[str, np.ndarray], folder: str | Path, *, encoder: str, twin_seed: int | None
) -> None:
    """One hybrid model in files that cannot run code when read: the boosting in skops'
    format (cdssl.model_files), the projection as plain arrays, and ``hybrid.json``
    naming the descriptors and the encoder (its folder relative to this one; for the
    control, the seed its untrained twin is drawn with)."""
    from .model_files import save_estimator

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_estimator(model, folder / "boosting.skops")
    with atomic_path(folder / "components.npz") as tmp:
        np.savez(tmp, **fitted)
    info = {"kind": "hybrid", "descriptors": DESCRIPTORS, "encoder": encoder, "untrained_seed": twin_seed}
    write_json({"cdssl": info}, folder / "hybrid.json")


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
    predictions_csvs: Sequence[str | Path] | None = None,
    model_dirs: Sequence[str | Path] | None = None,
    encoder_folder: str | Path | None = None,
) -> None:
    """Rule hybrid: for one (dataset, fraction, pretrained encoder) and every seed, on the
    networks' split, the hybrid and its random-init control; one metrics.json per seed
    with a row per family (``encoder``: the encoder's keys, sigma, budget, pretrain_seed).
    ``baseline_jsons`` are the cell's baseline metrics, seed by seed: the setting the
    descriptor-only boosting chose there is the hybrid's. With ``predictions_csvs`` and
    ``model_dirs`` (seed by seed), each split's validation and test predictions of both
    families and the models (:func:`save_hybrid`; ``encoder_folder`` is the encoder the
    embeddings came from)."""
    cache = GraphCache.load(graphs)
    x = rounded(read_features(descriptors, cache))
    table = np.load(embeddings_npz)
    if list(table["ids"]) != cache.ids:
        raise ValueError(f"{embeddings_npz} does not belong to the graph cache {graphs}; rerun its rule")
    y = cache.targets.numpy()
    for i, (seed, out, baseline) in enumerate(zip(seeds, metrics_jsons, baseline_jsons, strict=True)):
        train, val, test = finetune_split(len(cache), int(seed), fraction, test_fraction, val_fraction)
        # the descriptor model's own choice on this split: the hybrid adds components only
        chosen_there = json.loads(Path(baseline).read_text())[f"{DESCRIPTORS}_boosting_params"]
        setting = {k: chosen_there[k] for k in ("learning_rate", "min_samples_leaf")}
        runs, columns = [], {}
        common = {"dataset": dataset, "fraction": fraction, "seed": int(seed), **encoder, "units": units}
        for key, family in FAMILIES.items():
            model, fitted, chosen = chosen_hybrid(
                x, table[key], y, train, val, setting, boosting["max_iter"], int(seed)
            )
            pred_val, pred = (model.predict(hybrid_features(x[r], table[key][r], fitted)) for r in (val, test))
            columns[family] = np.concatenate([pred_val, pred])
            if model_dirs is not None:
                folder = Path(model_dirs[i]) / family
                relative = os.path.relpath(Path(encoder_folder).resolve(), folder.resolve())
                twin = encoder["pretrain_seed"] if key == "z_random" else None
                save_hybrid(model, fitted, folder, encoder=relative, twin_seed=twin)
            mae = float(np.abs(pred - y[test]).mean())
            spread = {"prediction_std": float(pred.std()), "target_std": float(y[test].std())}
            runs.append({**common, "mode": family, "test_mae": mae, **spread, "settings": chosen})
            LOG.info("%s fraction=%s seed=%s %s: test MAE %.4g (%s)", dataset, fraction, seed, family, mae, chosen)
        if predictions_csvs is not None:
            with atomic_path(predictions_csvs[i]) as tmp:
                split_predictions(cache.ids, y, {"val": val, "test": test}, columns).to_csv(tmp, index=False)
        write_json({"runs": runs}, out)
