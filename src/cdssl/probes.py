"""Linear probes: what frozen embeddings say about a crystal, beside what composition and size say.

The paper's probe (its section 3.3) fits ridge regression from the pretrained encoder's
embeddings z = concat(mean over nodes, mean over edges, state) to log density and log
volume of held-out crystals. About half of the variance of log volume is the atom count,
which any sum over atoms carries, so the probe adds log volume per atom, the target that
asks about structure. Every probe is repeated over seeded 80/20 splits and reported as
mean +- sd, on the same crystals for every feature set: each pretrained encoder, a
randomly initialised one of the same size, element fractions, element fractions plus the
atom count, log(atom count) alone, Magpie composition features and the frozen CHGNet
crystal feature (cdssl.features). An encoder is only worth its pretraining where it beats
the random one and the answers that need no structure.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .baselines import element_fractions
from .features import read_features
from .graphs import GraphCache
from .model_files import read_model_folder
from .utils import LOG, atomic_path

PAPER_R2 = {"log_density": 0.703, "log_volume": 0.756}
FEATURES = ("pretrained", "random_init", "element_fractions", "element_fractions+atoms", "log_atoms")
# a column whose spread over the crystals is below this share of its magnitude carries
# no information a ridge can use, only float noise that standardising would blow up
MIN_RELATIVE_SPREAD = 1e-3


def embeddings(model, cache: GraphCache, indices: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """One vector per crystal from the encoder's last features (cdssl.models.graph_embedding;
    MEGNet: the means over atoms and over edges, and the state)."""
    import torch

    from .models import graph_embedding

    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(indices), batch_size):
            batch = cache.collate(indices[start : start + batch_size].tolist())
            out.append(graph_embedding(model, batch).numpy())
    return np.concatenate(out)


def ridge_probe(z: np.ndarray, y: np.ndarray, seed: int = 0) -> dict:
    """Ridge on 80% (alpha by cross-validation on that part), R^2 on the other 20%."""
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    order = np.random.default_rng(seed).permutation(len(y))
    n_train = int(round(0.8 * len(y)))
    tr, te = order[:n_train], order[n_train:]
    keep = informative_columns(z[tr])
    probe = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-4, 4, 17)))
    probe.fit(z[tr][:, keep], y[tr])
    return {
        "r2": float(probe.score(z[te][:, keep], y[te])),
        "alpha": float(probe[-1].alpha_),
        "n_train": int(len(tr)),
        "n_test": int(len(te)),
        "n_columns": int(keep.sum()),
    }


def informative_columns(z: np.ndarray, min_relative_spread: float = MIN_RELATIVE_SPREAD) -> np.ndarray:
    """Columns whose standard deviation is at least ``min_relative_spread`` of their root
    mean square: constant and near-constant columns (a random encoder's state vector, an
    element no crystal has) are dropped before standardising, which would otherwise
    scale their last bits to unit variance."""
    spread = z.std(axis=0)
    magnitude = np.sqrt((z**2).mean(axis=0))
    return spread > min_relative_spread * np.maximum(magnitude, np.finfo(float).tiny)


def repeated_probe(z: np.ndarray, y: np.ndarray, repeats: int) -> dict:
    """:func:`ridge_probe` over ``repeats`` seeded splits: R^2 mean, sd, min and max."""
    runs = [ridge_probe(z, y, seed) for seed in range(repeats)]
    r2 = np.array([r["r2"] for r in runs])
    return {
        "n_columns": min(r["n_columns"] for r in runs),
        "r2_mean": float(r2.mean()),
        "r2_sd": float(r2.std(ddof=1)) if repeats > 1 else float("nan"),
        "r2_min": float(r2.min()),
        "r2_max": float(r2.max()),
        "repeats": repeats,
    }


def probe_structures(
    pretrain_graphs, split_csv, other_graphs: list, cutoff: float, max_structures: int
) -> list[tuple[GraphCache, np.ndarray, int]]:
    """Crystals pretraining never trained on: the pretraining validation split, then every
    crystal of ``other_graphs`` (the fine-tuning sets, which a pool with exclude_finetune
    never saw); at most ``max_structures``, drawn with seed 0 when there are more."""
    cache = GraphCache.load(pretrain_graphs, cutoff)
    split = pd.read_csv(split_csv)
    if split["id"].astype(str).tolist() != cache.ids:
        raise ValueError(f"{split_csv} does not list the graphs of {pretrain_graphs}; rerun pretraining")
    parts = [(cache, np.flatnonzero(split["split"].to_numpy() == "val"))]
    for path in other_graphs:
        other = GraphCache.load(path, cutoff)
        parts.append((other, np.arange(len(other))))
    total = sum(len(idx) for _, idx in parts)
    if total > max_structures:
        keep = np.zeros(total, dtype=bool)
        keep[np.random.default_rng(0).choice(total, max_structures, replace=False)] = True
        out, start = [], 0
        for c, idx in parts:
            out.append((c, idx[keep[start : start + len(idx)]]))
            start += len(idx)
        parts = out
    # the number of the source (0: the pretraining graphs, then other_graphs in order)
    # travels with each part, so per-dataset files can be matched to it
    return [(c, idx, k) for k, (c, idx) in enumerate(parts) if len(idx)]


def encoder_names(sigmas: list, budgets: list, pool_sizes: list | None = None) -> list[str]:
    """``pretrained``, plus ``_sigma_<s>`` in a noise-scale sweep, ``_budget_<k>`` with
    budgets and ``_pool_<n>`` with several pool sizes: row ids only (the keys travel in
    their own columns)."""
    sweep = len(set(sigmas)) > 1
    pool_sizes = [None] * len(sigmas) if pool_sizes is None else list(pool_sizes)
    pools = len(set(pool_sizes)) > 1
    return [
        "pretrained"
        + (f"_sigma_{float(s):g}" if sweep else "")
        + (f"_budget_{int(b)}" if b is not None else "")
        + (f"_pool_{n}" if pools else "")
        for s, b, n in zip(sigmas, budgets, pool_sizes, strict=True)
    ]


def probe_table(
    features: dict[str, np.ndarray], targets: dict[str, np.ndarray], rows: list[str], labels: dict, repeats: int
) -> pd.DataFrame:
    """One row per (feature set, target): :func:`repeated_probe`'s R^2; a pretrained
    encoder's row carries its sigma (and its budget or pool size, when any encoder has one)."""
    optional = [k for k in ("budget", "pool_size") if any(label.get(k) is not None for label in labels.values())]
    out = []
    for name in rows:
        label = labels.get(name, {})
        for target, y in targets.items():
            out.append(
                {
                    "features": name,
                    "sigma": label.get("sigma"),
                    **{k: label.get(k) for k in optional},
                    "target": target,
                    **repeated_probe(features[name], y, repeats),
                    "n_structures": len(y),
                    "paper_r2": PAPER_R2.get(target, np.nan),
                }
            )
    return pd.DataFrame(out)


def run_probes(
    encoder_dirs,
    pretrain_graphs,
    split_csv,
    other_graphs: list,
    *,
    feature_files: list[dict[str, str | Path]] = (),
    sizes: dict,
    cutoff: float,
    max_structures: int,
    repeats: int,
    probe_csv,
    embeddings_npz,
    sigmas: list | None = None,
    budgets: list | None = None,
    pool_sizes: list | None = None,
) -> pd.DataFrame:
    """Probe every pretrained encoder (one per noise scale ``sigmas``, pretraining
    budget ``budgets`` and ``pool_sizes``, parallel lists in the order of ``encoder_dirs``) and the
    references on the same crystals; ``feature_files`` gives, for the pretraining graphs
    and then each of ``other_graphs``, ``{featurizer: npz}`` (cdssl.features), each a row
    per probe row. ``embeddings_npz`` holds the embeddings of the first sigma's encoder
    with the largest budget and of the random-init encoder (Figure 5)."""
    import lightning as L

    from .models import build_network

    # every encoder folder checked before any work: no file of one chooses what code runs
    dirs = [encoder_dirs] if isinstance(encoder_dirs, (str, Path)) else list(encoder_dirs)
    folders = [read_model_folder(d) for d in dirs]
    sources = probe_structures(pretrain_graphs, split_csv, other_graphs, cutoff, max_structures)
    parts = [(c, idx) for c, idx, _ in sources]
    n_types = max(int(c.data["node_type"].max()) for c, _ in parts) + 1

    def stack(fn) -> np.ndarray:
        return np.concatenate([fn(c, idx) for c, idx in parts])

    density = stack(lambda c, idx: c.data["density"].numpy()[idx])
    volume = stack(lambda c, idx: c.data["volume"].numpy()[idx])
    atoms = stack(lambda c, idx: (c.node_ptr[idx + 1] - c.node_ptr[idx]).numpy().astype(float))
    targets = {
        "log_density": np.log(density),
        "log_volume": np.log(volume),
        "log_volume_per_atom": np.log(volume / atoms),
    }
    L.seed_everything(0, verbose=False)
    sigmas, budgets, pool_sizes = ([None] * len(dirs) if k is None else list(k) for k in (sigmas, budgets, pool_sizes))
    names = encoder_names(sigmas, budgets, pool_sizes)
    encoders = {name: folder.build() for name, folder in zip(names, folders, strict=True)}
    encoders["random_init"] = build_network(sizes, cutoff)
    fractions = stack(lambda c, idx: element_fractions(c, idx, n_types))
    features = {name: stack(lambda c, idx, m=model: embeddings(m, c, idx)) for name, model in encoders.items()}
    features["element_fractions"] = fractions
    features["element_fractions+atoms"] = np.column_stack([fractions, atoms, np.log(atoms)])
    features["log_atoms"] = np.log(atoms)[:, None]
    featurizers = list(feature_files[0]) if feature_files else []
    if feature_files and len(feature_files) != 1 + len(other_graphs):
        raise ValueError("feature_files needs one {featurizer: npz} for the pretraining graphs and each other set")
    for featurizer in featurizers:
        # each part's rows of its dataset's matrix; a part is (cache, rows, source number)
        features[featurizer] = np.concatenate(
            [read_features(feature_files[k][featurizer], c)[idx] for c, idx, k in sources]
        )
    labels = {
        name: {"sigma": s, "budget": b, "pool_size": n}
        for name, s, b, n in zip(names, sigmas, budgets, pool_sizes, strict=True)
    }
    table = probe_table(features, targets, names + list(FEATURES[1:]) + featurizers, labels, repeats)
    LOG.info("linear probes:\n%s", table.to_string(index=False))
    with atomic_path(probe_csv) as tmp:
        table.to_csv(tmp, index=False)
    ids = stack(lambda c, idx: np.array(c.ids)[idx])
    with atomic_path(embeddings_npz) as tmp:
        # the first sigma's longest-pretrained encoder of the largest pool
        shown = max(
            (i for i, s in enumerate(sigmas) if s == sigmas[0]), key=lambda i: (pool_sizes[i] or 0, budgets[i] or 0)
        )
        # and the random-init encoder's on the same crystals: what pretraining added
        np.savez(tmp, z=features[names[shown]], z_random=features["random_init"], density=density, ids=ids)
    return table
