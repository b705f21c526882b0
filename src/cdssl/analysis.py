"""Analysis: aggregate the grid, test SSL against the baselines, draw Figures 3-5, run probes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from .utils import atomic_path, write_json

MODE_LABELS = {"ssl": "SSL (pretrained)", "sl": "SL (Table 3)", "sl_large": "SL large (Table 2)"}
MODE_COLOURS = {"ssl": "#1b9e77", "sl": "#d95f02", "sl_large": "#7570b3"}
BASELINES = ("sl", "sl_large")


def collect_jobs(metric_files: list[str | Path]) -> pd.DataFrame:
    rows = [json.loads(Path(f).read_text()) for f in metric_files]
    jobs = pd.DataFrame(rows)
    return jobs.sort_values(["dataset", "fraction", "mode", "seed"]).reset_index(drop=True)


def cell_table(jobs: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, fraction): mean and standard error over seeds for each mode,
    and, per baseline, SSL minus baseline and whether SSL has the lower mean."""
    g = jobs.groupby(["dataset", "fraction", "mode"])["test_mae"]
    agg = g.agg(mean="mean", sem=lambda x: x.std(ddof=1) / np.sqrt(len(x)) if len(x) > 1 else np.nan, n="count")
    wide = agg.unstack("mode")
    wide.columns = [f"{stat}_{mode}" for stat, mode in wide.columns]
    wide = wide.reset_index()
    for base in BASELINES:
        if f"mean_{base}" in wide and "mean_ssl" in wide:
            wide[f"diff_ssl_{base}"] = wide["mean_ssl"] - wide[f"mean_{base}"]
            wide[f"ssl_wins_{base}"] = wide["mean_ssl"] < wide[f"mean_{base}"]
    units = jobs.groupby("dataset")["units"].first()
    wide["units"] = wide["dataset"].map(units)
    return wide


def paired_test(jobs: pd.DataFrame, baseline: str) -> dict:
    """Wilcoxon signed-rank of SSL vs ``baseline`` test MAE, paired over (fraction, seed)."""
    keys = ["dataset", "fraction", "seed"]
    a = jobs[jobs["mode"] == "ssl"].set_index(keys)["test_mae"]
    b = jobs[jobs["mode"] == baseline].set_index(keys)["test_mae"]
    pairs = pd.concat([a, b], axis=1, keys=["ssl", baseline], join="inner")
    diff = (pairs["ssl"] - pairs[baseline]).to_numpy()
    result = {
        "baseline": baseline,
        "n_pairs": int(len(diff)),
        "median_diff": float(np.median(diff)) if len(diff) else float("nan"),
        "ssl_lower_pairs": int((diff < 0).sum()),
        "statistic": float("nan"),
        "p_value": float("nan"),
    }
    if len(diff) >= 2 and np.any(diff != 0):
        res = stats.wilcoxon(pairs["ssl"], pairs[baseline], alternative="two-sided", zero_method="wilcox")
        result["statistic"], result["p_value"] = float(res.statistic), float(res.pvalue)
    return result


def summarise(jobs: pd.DataFrame, cells: pd.DataFrame) -> dict:
    modes = sorted(jobs["mode"].unique())
    out: dict = {"n_jobs": int(len(jobs)), "modes": modes, "comparisons": {}}
    for base in BASELINES:
        if base not in modes or "ssl" not in modes:
            continue
        wins = cells[f"ssl_wins_{base}"]
        comp = {
            "ssl_wins": int(wins.sum()),
            "cells": int(wins.notna().sum()),
            "overall": paired_test(jobs, base),
            "per_dataset": {d: paired_test(sub, base) for d, sub in jobs.groupby("dataset")},
            "wins_per_dataset": {d: int(s.sum()) for d, s in cells.groupby("dataset")[f"ssl_wins_{base}"]},
        }
        out["comparisons"][f"ssl_vs_{base}"] = comp
    return out


def write_aggregates(metric_files, jobs_csv, cells_csv, summary_json) -> dict:
    jobs = collect_jobs(metric_files)
    cells = cell_table(jobs)
    for frame, path in ((jobs, jobs_csv), (cells, cells_csv)):
        with atomic_path(path, suffix=".csv") as tmp:
            frame.to_csv(tmp, index=False)
    summary = summarise(jobs, cells)
    write_json(summary, summary_json)
    return summary


# ---------------------------------------------------------------- figures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure3(history_csv, selected_json, reference_json, out_png) -> None:
    plt = _plt()
    h = pd.read_csv(history_csv)
    best = json.loads(Path(selected_json).read_text())["epoch"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(h["epoch"], h["train_loss"], label="train")
    axes[0].plot(h["epoch"], h["val_loss"], label="validation")
    axes[0].set_ylabel("MSE loss (standardised distance)")
    noisy = json.loads(Path(reference_json).read_text())["val_loss_noisy_distances"]
    axes[0].axhline(noisy, color="tab:red", ls=":", lw=1, label=f"noisy distances as answer ({noisy:.3f})")
    axes[1].plot(h["epoch"], h["train_mae"], label="train")
    axes[1].plot(h["epoch"], h["val_mae"], label="validation")
    axes[1].set_ylabel("MAE (standardised distance)")
    axes[2].plot(h["epoch"], h["grad_norm"], color="grey")
    axes[2].set_ylabel("mean gradient norm")
    for ax in axes:
        ax.axvline(best, color="k", ls="--", lw=0.8, label=f"selected (epoch {best})")
        ax.set_xlabel("epoch")
    axes[0].legend(fontsize=8)
    fig.suptitle("Figure 3: CDSSL pretraining")
    fig.tight_layout()
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def _bars(ax, cells: pd.DataFrame, modes: list[str]) -> None:
    x = np.arange(len(cells))
    width = 0.8 / len(modes)
    for i, mode in enumerate(modes):
        ax.bar(
            x + (i - (len(modes) - 1) / 2) * width,
            cells[f"mean_{mode}"],
            width,
            yerr=cells.get(f"sem_{mode}"),
            capsize=2,
            label=MODE_LABELS.get(mode, mode),
            color=MODE_COLOURS.get(mode),
        )
    ax.set_xticks(x, [f"{f:g}" for f in cells["fraction"]])
    ax.set_xlabel("training fraction")


def _title(dataset: str, sub: pd.DataFrame) -> str:
    wins = [
        f"{int(sub[f'ssl_wins_{base}'].sum())}/{len(sub)} vs {MODE_LABELS[base].split(' (')[0]}"
        for base in BASELINES
        if f"ssl_wins_{base}" in sub
    ]
    return f"{dataset}: SSL lower in " + ", ".join(wins) if wins else dataset


def _panel(ax, sub: pd.DataFrame, dataset: str, modes: list[str]) -> None:
    units = sub["units"].iloc[0] if isinstance(sub["units"].iloc[0], str) else ""
    _bars(ax, sub, modes)
    ax.set_ylabel(f"test MAE ({units})" if units else "test MAE")
    ax.set_title(_title(dataset, sub), fontsize=10)
    ax.legend(fontsize=7)


def figure4(cells_csv, modes: list[str], out_png, per_dataset_dir) -> list[Path]:
    """One multi-panel figure plus one file per dataset."""
    plt = _plt()
    cells = pd.read_csv(cells_csv)
    datasets = list(dict.fromkeys(cells["dataset"]))
    per_dataset_dir = Path(per_dataset_dir)
    per_dataset_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for dataset in datasets:
        sub = cells[cells["dataset"] == dataset].sort_values("fraction")
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        _panel(ax, sub, dataset, modes)
        fig.tight_layout()
        path = per_dataset_dir / f"{dataset}.png"
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=120)
        plt.close(fig)
        written.append(path)
    ncols = min(3, len(datasets))
    nrows = int(np.ceil(len(datasets) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(5 * ncols, 3.8 * nrows), squeeze=False)
    for ax, dataset in zip(axes.flat, datasets):
        _panel(ax, cells[cells["dataset"] == dataset].sort_values("fraction"), dataset, modes)
    for ax in list(axes.flat)[len(datasets) :]:
        ax.set_visible(False)
    total = int(cells["ssl_wins_sl"].sum()) if "ssl_wins_sl" in cells else 0
    fig.suptitle(
        f"Figure 4: test MAE, mean and standard error over seeds\nSSL lower than SL in {total} of {len(cells)} cells",
        fontsize=10,
    )
    fig.tight_layout()
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return written


# ---------------------------------------------------------------- probes


PAPER_R2 = {"log_density": 0.703, "log_volume": 0.756}


def embeddings(model, cache, indices: np.ndarray, batch_size: int = 256):
    """z = concat(mean over nodes, mean over edges, state) of the last MEGNet block."""
    import torch
    from torch_geometric.utils import scatter

    from .models import encode

    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(indices), batch_size):
            batch = cache.collate(indices[start : start + batch_size].tolist())
            node, edge, state = encode(model, batch)
            n = scatter(node, batch.batch, dim=0, dim_size=batch.num_graphs, reduce="mean")
            e = scatter(edge, batch.edge_batch, dim=0, dim_size=batch.num_graphs, reduce="mean")
            out.append(torch.cat([n, e, state.reshape(batch.num_graphs, -1)], dim=1).numpy())
    return np.concatenate(out)


def ridge_probe(z: np.ndarray, y: np.ndarray, seed: int = 0) -> dict:
    """Ridge on 80% (alpha by cross-validation on that part), R^2 on the other 20%."""
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    order = np.random.default_rng(seed).permutation(len(y))
    n_train = int(round(0.8 * len(y)))
    tr, te = order[:n_train], order[n_train:]
    probe = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-4, 4, 17)))
    probe.fit(z[tr], y[tr])
    return {"r2": float(probe.score(z[te], y[te])), "alpha": float(probe[-1].alpha_), "n_train": int(len(tr)), "n_test": int(len(te))}


def run_probes(
    encoder_dir, graphs, split_csv, *, sizes: dict, cutoff: float, max_structures: int, probe_csv, embeddings_npz
) -> pd.DataFrame:
    import lightning as L
    import matgl

    from .config import megnet_sizes
    from .graphs import GraphCache
    from .models import build_megnet

    cache = GraphCache.load(graphs, cutoff)
    split = pd.read_csv(split_csv)
    if split["id"].astype(str).tolist() != cache.ids:
        raise ValueError(f"{split_csv} does not list the graphs of {graphs}; rerun pretraining")
    val = np.flatnonzero(split["split"].to_numpy() == "val")
    if len(val) > max_structures:
        val = np.sort(np.random.default_rng(0).choice(val, max_structures, replace=False))
    targets = {
        "log_density": np.log(cache.data["density"].numpy()[val]),
        "log_volume": np.log(cache.data["volume"].numpy()[val]),
    }
    L.seed_everything(0, verbose=False)
    encoders = {
        "pretrained": matgl.load_model(Path(encoder_dir)),
        "random_init": build_megnet(megnet_sizes(sizes), cutoff),
    }
    rows, zs = [], {}
    for name, model in encoders.items():
        z = embeddings(model, cache, val)
        zs[name] = z
        for target, y in targets.items():
            rows.append({"encoder": name, "target": target, **ridge_probe(z, y), "paper_r2": PAPER_R2[target]})
    table = pd.DataFrame(rows)
    with atomic_path(probe_csv, suffix=".csv") as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(embeddings_npz, suffix=".npz") as tmp:
        np.savez(tmp, z=zs["pretrained"], density=cache.data["density"].numpy()[val], ids=np.array(cache.ids)[val])
    return table


def figure5(embeddings_npz, out_png, seed: int = 0) -> None:
    import umap

    plt = _plt()
    data = np.load(embeddings_npz)
    z, density = data["z"], data["density"]
    coords = umap.UMAP(n_neighbors=min(15, len(z) - 1), random_state=seed).fit_transform(z)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    sc = ax.scatter(coords[:, 0], coords[:, 1], c=density, s=6, cmap="viridis")
    fig.colorbar(sc, ax=ax, label="density (g/cm$^3$)")
    ax.set_xlabel("UMAP 1")
    ax.set_ylabel("UMAP 2")
    ax.set_title(f"Figure 5: pretrained embeddings of\n{len(z)} validation structures", fontsize=10)
    fig.tight_layout()
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
