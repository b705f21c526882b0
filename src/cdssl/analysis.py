"""Analysis: aggregate the grid, test SSL against the baselines and the trivial answers, draw Figures 3-5."""

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


TRIVIAL = {"mean_predictor": "test_mae_mean_predictor", "composition": "test_mae_composition"}
TRIVIAL_LABELS = {"mean_predictor": "mean predictor", "composition": "composition ridge"}


def _sem(x: pd.Series) -> float:
    return x.std(ddof=1) / np.sqrt(len(x)) if len(x) > 1 else np.nan


def cell_table(jobs: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, fraction): mean and standard error over seeds for each mode
    and for the trivial answers of the same test sets; per mode whether it beat the mean
    predictor (``beats_mean_<mode>``); per baseline, SSL minus baseline, whether SSL has
    the lower mean (``ssl_wins_<base>``, the paper's count) and whether the cell counts
    (``counted_<base>``: both SSL and the baseline beat the mean predictor)."""
    g = jobs.groupby(["dataset", "fraction", "mode"])["test_mae"]
    wide = g.agg(mean="mean", sem=_sem, n="count").unstack("mode")
    wide.columns = [f"{stat}_{mode}" for stat, mode in wide.columns]
    modes = sorted(jobs["mode"].unique())
    # one trivial answer per (dataset, fraction, seed): the same for every mode
    per_seed = jobs.groupby(["dataset", "fraction", "seed"])[[c for c in TRIVIAL.values() if c in jobs]].first()
    for name, column in TRIVIAL.items():
        if column in per_seed:
            wide[f"mean_{name}"] = per_seed[column].groupby(["dataset", "fraction"]).mean()
            wide[f"sem_{name}"] = per_seed[column].groupby(["dataset", "fraction"]).agg(_sem)
    wide = wide.reset_index()
    for mode in modes:
        if "mean_mean_predictor" in wide:
            wide[f"beats_mean_{mode}"] = wide[f"mean_{mode}"] < wide["mean_mean_predictor"]
        else:  # metrics written before the baselines existed: nothing to flag against
            wide[f"beats_mean_{mode}"] = True
    wide["flagged"] = [
        "; ".join(f"{m} not below the mean predictor" for m in modes if not row[f"beats_mean_{m}"])
        for _, row in wide.iterrows()
    ]
    for base in BASELINES:
        if f"mean_{base}" in wide and "mean_ssl" in wide:
            wide[f"diff_ssl_{base}"] = wide["mean_ssl"] - wide[f"mean_{base}"]
            wide[f"ssl_wins_{base}"] = wide["mean_ssl"] < wide[f"mean_{base}"]
            wide[f"counted_{base}"] = wide["beats_mean_ssl"] & wide[f"beats_mean_{base}"]
    units = jobs.groupby("dataset")["units"].first()
    wide["units"] = wide["dataset"].map(units)
    return wide


def paired_test(jobs: pd.DataFrame, baseline: str) -> dict:
    """Wilcoxon signed-rank of SSL vs ``baseline`` test MAE, paired over (fraction, seed).

    The pairs share test sets, nested training sets and one encoder, so this p-value is
    optimistic; :func:`cell_statistics` gives the one whose unit is the cell.
    """
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


def bootstrap_mean(diffs: np.ndarray, n_boot: int = 10_000, seed: int = 0, level: float = 0.95) -> dict:
    """Mean of ``diffs`` with a percentile bootstrap interval (resampling the values)."""
    diffs = np.asarray(diffs, dtype=float)
    diffs = diffs[np.isfinite(diffs)]
    if len(diffs) == 0:
        return {"mean": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": 0}
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, len(diffs), size=(n_boot, len(diffs)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return {"mean": float(diffs.mean()), "ci_low": float(low), "ci_high": float(high), "n": int(len(diffs))}


def cell_statistics(cells: pd.DataFrame, other: str) -> dict:
    """SSL minus ``other`` (a mode or a trivial answer) on cell means: the mean difference
    with a bootstrap 95% interval over cells, and a Wilcoxon signed-rank test over cells."""
    diffs = (cells["mean_ssl"] - cells[f"mean_{other}"]).to_numpy()
    out = {"unit": "cell (dataset, fraction), mean over seeds", **bootstrap_mean(diffs), "p_value": float("nan")}
    finite = diffs[np.isfinite(diffs)]
    if len(finite) >= 2 and np.any(finite != 0):
        out["p_value"] = float(stats.wilcoxon(finite, zero_method="wilcox").pvalue)
    return out


def summarise(jobs: pd.DataFrame, cells: pd.DataFrame) -> dict:
    modes = sorted(jobs["mode"].unique())
    out: dict = {
        "n_jobs": int(len(jobs)),
        "modes": modes,
        "cells": int(len(cells)),
        "cells_flagged": {m: int((~cells[f"beats_mean_{m}"]).sum()) for m in modes},
        "comparisons": {},
    }
    if "ssl" not in modes:
        return out
    for other in [b for b in BASELINES if b in modes] + [t for t in TRIVIAL if f"mean_{t}" in cells]:
        comp: dict = {
            "cell_means": cell_statistics(cells, other),
            "per_dataset": {d: cell_statistics(sub, other) for d, sub in cells.groupby("dataset")},
        }
        if other in BASELINES:
            counted = cells[f"counted_{other}"]
            wins = cells[f"ssl_wins_{other}"]
            comp.update(
                ssl_wins=int((wins & counted).sum()),
                cells_counted=int(counted.sum()),
                cells_excluded=int((~counted).sum()),
                excluded=[f"{r.dataset} {r.fraction:g}" for r in cells[~counted].itertuples()],
                paper_count={"ssl_wins": int(wins.sum()), "cells": int(len(cells))},
                wins_per_dataset={d: int((s[f"ssl_wins_{other}"] & s[f"counted_{other}"]).sum())
                                  for d, s in cells.groupby("dataset")},
                pairs=paired_test(jobs, other),
            )
        out["comparisons"][f"ssl_vs_{other}"] = comp
    return out


def summary_lines(summary: dict) -> list[str]:
    """The summary in words: what a log or a README quotes."""
    lines = [f"{summary['cells']} cells; not below the mean predictor: "
             + ", ".join(f"{m} {n}" for m, n in summary["cells_flagged"].items())]
    for name, comp in summary["comparisons"].items():
        c = comp["cell_means"]
        line = (f"{name}: mean difference {c['mean']:+.4g} (95% bootstrap CI {c['ci_low']:+.4g} to "
                f"{c['ci_high']:+.4g}) over {c['n']} cells, Wilcoxon on cell means p = {c['p_value']:.3g}")
        if "ssl_wins" in comp:
            line += (f"; SSL lower in {comp['ssl_wins']} of {comp['cells_counted']} counted cells "
                     f"({comp['cells_excluded']} excluded: a model not below the mean predictor); paper-style "
                     f"count {comp['paper_count']['ssl_wins']} of {comp['paper_count']['cells']}")
        lines.append(line)
    return lines


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
    ref = json.loads(Path(reference_json).read_text())
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    axes[0].plot(h["epoch"], h["train_loss"], label="train")
    axes[0].plot(h["epoch"], h["val_loss"], label="validation")
    axes[0].set_ylabel("MSE loss (standardised distance)")
    references = [
        ("val_loss_noisy_distances", "noisy distances as answer", "tab:red", ":"),
        ("val_loss_lookup_noisy_length", "lookup: noisy length", "tab:purple", "--"),
        ("val_loss_lookup_element_pair", "lookup: noisy length x element pair", "tab:brown", "-."),
    ]
    for key, label, colour, style in references:
        if key in ref:
            axes[0].axhline(ref[key], color=colour, ls=style, lw=1, label=f"{label} ({ref[key]:.3f})")
    axes[1].plot(h["epoch"], h["train_mae"], label="train MAE")
    axes[1].plot(h["epoch"], h["val_mae"], label="validation MAE")
    axes[1].set_ylabel("MAE (standardised distance)")
    if "val_output_share_lookup" in h:
        twin = axes[1].twinx()
        twin.plot(h["epoch"], h["val_output_share_lookup"], color="grey", ls=":", label="output variance a lookup explains")
        twin.set_ylim(0, 1.02)
        twin.set_ylabel("share of output variance explained\nby a lookup of the noisy length", fontsize=8)
        twin.legend(fontsize=7, loc="center right")
    axes[2].plot(h["epoch"], h["grad_norm"], color="grey")
    axes[2].set_ylabel("mean gradient norm")
    for ax in axes:
        ax.axvline(best, color="k", ls="--", lw=0.8, label=f"selected (epoch {best})")
        ax.set_xlabel("epoch")
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7, loc="upper right")
    fig.suptitle("Figure 3: CDSSL pretraining, validation loss beside answers that need no learning")
    fig.tight_layout()
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def _bars(ax, cells: pd.DataFrame, modes: list[str]) -> None:
    x = np.arange(len(cells))
    width = 0.8 / len(modes)
    for i, mode in enumerate(modes):
        bars = ax.bar(
            x + (i - (len(modes) - 1) / 2) * width,
            cells[f"mean_{mode}"],
            width,
            yerr=cells.get(f"sem_{mode}"),
            capsize=2,
            label=MODE_LABELS.get(mode, mode),
            color=MODE_COLOURS.get(mode),
        )
        # a bar not below the mean predictor is drawn hollow: flagged, never a win
        for bar, beats in zip(bars, cells.get(f"beats_mean_{mode}", [True] * len(cells))):
            if not beats:
                bar.set_facecolor("none")
                bar.set_edgecolor(MODE_COLOURS.get(mode, "k"))
                bar.set_hatch("//")
    for name, style in (("mean_predictor", "k--"), ("composition", "k:")):
        if f"mean_{name}" in cells:
            for j, value in enumerate(cells[f"mean_{name}"]):
                ax.plot([x[j] - 0.45, x[j] + 0.45], [value, value], style, lw=1.2,
                        label=TRIVIAL_LABELS[name] if j == 0 else None)
    ax.set_xticks(x, [f"{f:g}" for f in cells["fraction"]])
    ax.set_xlabel("training fraction")


def _title(dataset: str, sub: pd.DataFrame) -> str:
    wins = []
    for base in BASELINES:
        if f"ssl_wins_{base}" in sub:
            counted = sub[f"counted_{base}"]
            wins.append(f"{int((sub[f'ssl_wins_{base}'] & counted).sum())}/{int(counted.sum())} vs "
                        f"{MODE_LABELS[base].split(' (')[0]}")
    text = f"{dataset}: SSL lower in " + ", ".join(wins) if wins else dataset
    return text + "\n(counted cells: every model below the mean predictor; hollow bars are not)"


def _panel(ax, sub: pd.DataFrame, dataset: str, modes: list[str]) -> None:
    units = sub["units"].iloc[0] if isinstance(sub["units"].iloc[0], str) else ""
    _bars(ax, sub, modes)
    ax.set_ylabel(f"test MAE ({units})" if units else "test MAE")
    ax.set_title(_title(dataset, sub), fontsize=9)
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
    head = "Figure 4: test MAE, mean and standard error over seeds; dashed: mean predictor, dotted: composition"
    if "ssl_wins_sl" in cells:
        counted = cells["counted_sl"]
        head += (f"\nSSL lower than SL in {int((cells['ssl_wins_sl'] & counted).sum())} of {int(counted.sum())} "
                 f"counted cells ({int((~counted).sum())} excluded)")
    fig.suptitle(head, fontsize=10)
    fig.tight_layout()
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return written


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
    ax.set_title(f"Figure 5: pretrained embeddings of {len(z)} crystals\nnever trained on (the probes' crystals)",
                 fontsize=10)
    fig.tight_layout()
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
