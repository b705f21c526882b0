"""Figures 3-5 and the budget figure: pretraining curves beside their references, SSL against the baselines per cell
and per pretraining budget, the UMAP maps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .statistics import BASELINES, RESULT_LABELS, ssl_models, ssl_parts
from .utils import atomic_path

MODE_LABELS = {"ssl": "SSL (pretrained)", "sl": "SL (Table 3)", "sl_large": "SL large (Table 2)"}
MODE_COLOURS = {"ssl": "#1b9e77", "sl": "#d95f02", "sl_large": "#7570b3"}
TRIVIAL_LABELS = {
    "mean_predictor": "mean predictor",
    "composition": "element-fraction ridge",
    "strongest_composition": "best composition model (of the cell)",
    "strongest_chgnet": "best on frozen CHGNet features (of the cell)",
}
# per cell, the lowest mean test MAE of a family of baselines (cdssl.statistics.TRIVIAL)
FAMILIES = {
    "strongest_composition": ("composition", "magpie_ridge", "magpie_boosting"),
    "strongest_chgnet": ("chgnet_ridge", "chgnet_boosting"),
}


def reference_line(cells: pd.DataFrame, name: str):
    """The values of a horizontal reference per cell: one baseline, or the best of a
    family (None when the cells lack it, or a family has nothing beyond the ridge that is
    drawn on its own)."""
    columns = [f"mean_{m}" for m in FAMILIES.get(name, (name,)) if f"mean_{m}" in cells]
    if not columns or columns == ["mean_composition"] and name in FAMILIES:
        return None
    return cells[columns].min(axis=1).to_numpy()


def ssl_tag(model: str) -> str:
    """``sigma 0.5 A, 100 epochs``: what tells one ssl model from another."""
    parts = ssl_parts(model)
    words = [f"sigma {parts['sigma']:g} A"] if "sigma" in parts else []
    words += [f"{parts['budget']:g} epochs"] if "budget" in parts else []
    return ", ".join(words)


def model_label(model: str) -> str:
    if model.startswith("ssl_"):
        return f"SSL (pretrained, {ssl_tag(model)})"
    return MODE_LABELS.get(model, model)


def model_colour(model: str, models: list[str]) -> str | None:
    if model.startswith("ssl_"):
        import matplotlib

        ssl = [m for m in ssl_models(models) if m != "ssl"]
        return matplotlib.colormaps["Greens"](0.45 + 0.5 * ssl.index(model) / max(1, len(ssl) - 1))
    return MODE_COLOURS.get(model)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


REFERENCES = [
    ("val_loss_noisy_distances", "noisy distances as answer", ":"),
    ("val_loss_lookup_noisy_length", "lookup: noisy length", "--"),
    ("val_loss_lookup_element_pair", "lookup: noisy length x element pair", "-."),
]


def figure3(history_csvs, selected_jsons, reference_jsons, out_png, sigmas: list | None = None) -> None:
    """Pretraining curves, one colour per noise scale (lists in the order of ``sigmas``),
    each beside its own references that need no learning."""
    plt = _plt()
    paths = [history_csvs] if isinstance(history_csvs, (str, Path)) else list(history_csvs)
    selected = [selected_jsons] if isinstance(selected_jsons, (str, Path)) else list(selected_jsons)
    refs = [reference_jsons] if isinstance(reference_jsons, (str, Path)) else list(reference_jsons)
    sigmas = list(sigmas) if sigmas is not None else [None] * len(paths)
    sweep = len(paths) > 1
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for k, (path, sel, ref_path, sigma) in enumerate(zip(paths, selected, refs, sigmas, strict=True)):
        h = pd.read_csv(path)
        best = json.loads(Path(sel).read_text())["epoch"]
        ref = json.loads(Path(ref_path).read_text())
        tag = f"sigma {sigma} A: " if sweep else ""
        colour = f"C{k}"
        if sweep:
            axes[0].plot(h["epoch"], h["val_loss"], color=colour, label=f"{tag}validation")
            axes[0].plot(h["epoch"], h["train_loss"], color=colour, alpha=0.4, lw=0.8)
            axes[1].plot(h["epoch"], h["val_mae"], color=colour, label=f"{tag}validation MAE")
        else:
            axes[0].plot(h["epoch"], h["train_loss"], label="train")
            axes[0].plot(h["epoch"], h["val_loss"], label="validation")
            axes[1].plot(h["epoch"], h["train_mae"], label="train MAE")
            axes[1].plot(h["epoch"], h["val_mae"], label="validation MAE")
        for key, label, style in REFERENCES:
            if key in ref:
                axes[0].axhline(
                    ref[key],
                    color=colour if sweep else "tab:red",
                    ls=style,
                    lw=1,
                    label=f"{tag}{label} ({ref[key]:.3f})",
                )
        if "val_output_share_lookup" in h and not sweep:
            twin = axes[1].twinx()
            twin.plot(
                h["epoch"],
                h["val_output_share_lookup"],
                color="grey",
                ls=":",
                label="output variance a lookup explains",
            )
            twin.set_ylim(0, 1.02)
            twin.set_ylabel("share of output variance explained\nby a lookup of the noisy length", fontsize=8)
        axes[2].plot(h["epoch"], h["grad_norm"], color=colour if sweep else "grey", label=tag.rstrip(": ") or None)
        for ax in axes:
            ax.axvline(
                best,
                color=colour if sweep else "k",
                ls="--",
                lw=0.8,
                label=f"{tag}selected (epoch {best})" if ax is axes[2] or not sweep else None,
            )
    axes[0].set_ylabel("MSE loss (standardised distance)")
    axes[1].set_ylabel("MAE (standardised distance)")
    axes[2].set_ylabel("mean gradient norm")
    for ax in axes:
        ax.set_xlabel("epoch")
    # legends below their panels, never over the curves; the middle panel's twin axis
    # shares its legend
    below = {"loc": "upper center", "bbox_to_anchor": (0.5, -0.26), "fontsize": 6 if sweep else 7}
    axes[0].legend(**below)
    handles, labels = axes[1].get_legend_handles_labels()
    for other in axes[1].get_shared_x_axes().get_siblings(axes[1]):
        if other is not axes[1]:
            more = other.get_legend_handles_labels()
            handles, labels = handles + more[0], labels + more[1]
    axes[1].legend(handles, labels, **below)
    if sweep:
        axes[2].legend(**below)
    fig.suptitle("Figure 3: CDSSL pretraining, validation loss beside answers that need no learning")
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)


def _bars(ax, jobs: pd.DataFrame, cells: pd.DataFrame, modes: list[str]) -> None:
    """Grouped bars (seaborn): per fraction and model the mean test MAE over seeds with
    its standard error, from the per-seed rows; the trivial answers as lines across."""
    import seaborn as sns

    labels = {m: model_label(m) for m in modes}
    data = jobs[jobs["model"].isin(modes)].assign(label=lambda d: d["model"].map(labels))
    sns.barplot(
        data=data,
        x="fraction",
        y="test_mae",
        hue="label",
        hue_order=[labels[m] for m in modes],
        order=sorted(cells["fraction"]),
        palette={labels[m]: model_colour(m, modes) for m in modes},
        errorbar="se",
        capsize=0.15,
        err_kws={"linewidth": 1},
        ax=ax,
    )
    # a model that did not learn in a cell (not below the mean predictor, or predictions
    # nearly constant: cdssl.statistics.cell_table) is drawn hollow: flagged, never a win
    for mode, container in zip(modes, ax.containers, strict=True):
        colour = model_colour(mode, modes)
        learned = cells.get(f"learned_{mode}", cells.get(f"beats_mean_{mode}", [True] * len(cells)))
        for bar, beats in zip(container, learned, strict=True):
            if not beats:
                bar.set_facecolor("none")
                bar.set_edgecolor(colour or "k")
                bar.set_hatch("//")
    for name, style in (
        ("mean_predictor", "k--"),
        ("composition", "k:"),
        ("strongest_composition", "r-."),
        ("strongest_chgnet", "b-."),
    ):
        values = reference_line(cells, name)
        if values is not None:
            for j, value in enumerate(values):
                ax.plot(
                    [j - 0.45, j + 0.45], [value, value], style, lw=1.2, label=TRIVIAL_LABELS[name] if j == 0 else None
                )
    ax.set_xticks(range(len(cells)), [f"{f:g}" for f in cells["fraction"]])
    ax.set_xlabel("training fraction")


def _wins(sub: pd.DataFrame, ssl: str, base: str) -> tuple[int, int]:
    counted = sub[f"counted_{ssl}_{base}"]
    return int((sub[f"{ssl}_wins_{base}"] & counted).sum()), int(counted.sum())


def _title(dataset: str, sub: pd.DataFrame, models: list[str]) -> str:
    wins = []
    for ssl in ssl_models(models):
        for base in BASELINES:
            if f"{ssl}_wins_{base}" in sub:
                won, counted = _wins(sub, ssl, base)
                who = "" if ssl == "ssl" else f"{ssl_tag(ssl)}: "
                wins.append(f"{who}{won}/{counted} vs {MODE_LABELS[base].split(' (')[0]}")
    text = f"{dataset}: SSL lower in " + ", ".join(wins) if wins else dataset
    return text + "\n(hollow bars: did not learn, cell not counted)"


def _panel(ax, jobs: pd.DataFrame, sub: pd.DataFrame, dataset: str, modes: list[str]) -> None:
    units = sub["units"].iloc[0] if isinstance(sub["units"].iloc[0], str) else ""
    _bars(ax, jobs[jobs["dataset"] == dataset], sub, modes)
    ax.set_ylabel(f"test MAE ({units})" if units else "test MAE")
    ax.set_title(_title(dataset, sub, modes), fontsize=9)
    # beside the panel, never over the bars
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def cell_models(cells: pd.DataFrame, modes: list[str]) -> list[str]:
    """The models of ``cells`` in the order of ``modes``; ssl expands to a sweep's sigmas."""
    out = []
    for mode in modes:
        if mode == "ssl":
            out += ssl_models(c.removeprefix("mean_") for c in cells.columns if c.startswith("mean_ssl"))
        elif f"mean_{mode}" in cells:
            out.append(mode)
    return out


def figure4(jobs_csv, cells_csv, modes: list[str], out_png, per_dataset_dir) -> list[Path]:
    """One multi-panel figure plus one file per dataset: bars and error bars from the
    per-seed rows (``jobs_csv``), flags and trivial answers from the cells."""
    plt = _plt()
    jobs = pd.read_csv(jobs_csv)
    cells = pd.read_csv(cells_csv)
    modes = cell_models(cells, modes)
    datasets = list(dict.fromkeys(cells["dataset"]))
    per_dataset_dir = Path(per_dataset_dir)
    per_dataset_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for dataset in datasets:
        sub = cells[cells["dataset"] == dataset].sort_values("fraction")
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        _panel(ax, jobs, sub, dataset, modes)
        fig.tight_layout()
        path = per_dataset_dir / f"{dataset}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    ncols = min(3, len(datasets))
    nrows = int(np.ceil(len(datasets) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(8, 5 * ncols), 3.8 * nrows + 0.6), squeeze=False)
    for ax, dataset in zip(axes.flat, datasets, strict=True):
        _panel(ax, jobs, cells[cells["dataset"] == dataset].sort_values("fraction"), dataset, modes)
    for ax in list(axes.flat)[len(datasets) :]:
        ax.set_visible(False)
    head = (
        "Figure 4: test MAE, mean and standard error over seeds\n"
        "dashed: mean predictor, dotted: element-fraction ridge, red: Magpie gradient boosting"
    )
    for ssl in ssl_models(modes):
        if f"{ssl}_wins_sl" in cells:
            won, counted = _wins(cells, ssl, "sl")
            head += (
                f"\n{model_label(ssl)} lower than SL in {won} of {counted} counted cells "
                f"({len(cells) - counted} excluded)"
            )
    fig.suptitle(head, fontsize=10)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return written


def figure5(embeddings_npz, out_png, seed: int = 0) -> None:
    """UMAP maps of the pretrained encoder's embeddings and, beside them, the random-init
    encoder's on the same crystals, coloured by log density on one shared scale."""
    import umap

    plt = _plt()
    data = np.load(embeddings_npz)
    maps = [("pretrained encoder", data["z"])]
    if "z_random" in data:  # embeddings written before the random-init map existed have one
        maps.append(("random-init encoder (same architecture)", data["z_random"]))
    log_density = np.log10(data["density"])
    norm = plt.Normalize(float(np.min(log_density)), float(np.max(log_density)))
    # constrained: the colour bar and the second map's axis label keep clear of the first map
    fig, axes = plt.subplots(1, len(maps), figsize=(5.0 * len(maps) + 1.0, 4.5), squeeze=False, layout="constrained")
    for ax, (title, z) in zip(axes.flat, maps, strict=True):
        coords = umap.UMAP(n_neighbors=min(15, len(z) - 1), random_state=seed).fit_transform(z)
        ax.scatter(coords[:, 0], coords[:, 1], c=log_density, cmap="viridis", norm=norm, s=6, linewidths=0)
        ax.set_xlabel("UMAP 1")
        ax.set_ylabel("UMAP 2")
        ax.set_title(title, fontsize=9)
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap="viridis"), ax=list(axes.flat), label="log10 density (g/cm$^3$)")
    fig.suptitle(
        f"Figure 5: embeddings of {len(log_density)} crystals pretraining never trained on (the probes' crystals)",
        fontsize=10,
    )
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)


def _budget_panel(ax, sub: pd.DataFrame, fraction: str) -> None:
    """Test MAE against pretraining epochs for one fraction: SSL with 95% intervals over
    seeds, SL large and the strongest baseline as bands of their own 95% intervals."""
    sub = sub.sort_values("budget")
    ax.errorbar(
        sub["budget"], sub["ssl_mean"], yerr=1.96 * sub["ssl_sem"], color=MODE_COLOURS["ssl"], marker="o", ms=4,
        capsize=2, label="SSL (pretrained)",
    )  # fmt: skip
    for key, colour in (
        ("sl_large", MODE_COLOURS["sl_large"]),
        ("strongest", "tab:red"),
        ("strongest_any", "tab:blue"),
    ):
        if f"{key}_mean" not in sub or (
            key == "strongest_any" and sub[f"{key}_name"].iloc[0] == sub["strongest_name"].iloc[0]
        ):
            continue
        if key == "strongest" and sub["strongest_name"].iloc[0] == "sl_large":
            continue
        mean, sem = float(sub[f"{key}_mean"].iloc[0]), float(sub[f"{key}_sem"].iloc[0])
        name = sub[f"{key}_name"].iloc[0]
        ax.axhline(mean, color=colour, lw=1.2, label=RESULT_LABELS.get(name, name.replace("_", " ")))
        if np.isfinite(sem):
            ax.axhspan(mean - 1.96 * sem, mean + 1.96 * sem, color=colour, alpha=0.12, lw=0)
    _budget_axis(ax, sub["budget"])
    ax.set_title(f"training fraction {fraction}", fontsize=9)


def _budget_axis(ax, budgets) -> None:
    """A log axis of pretraining epochs, ticked at the budgets themselves."""
    ax.set_xscale("log")
    ticks = sorted({int(b) for b in budgets})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    # slanted: budgets a factor of 2 apart sit close on a log axis
    ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    ax.minorticks_off()
    ax.set_xlabel("pretraining epochs (budget)")


def _budget_gap_panel(ax, sub: pd.DataFrame) -> None:
    """Over all fractions: SSL minus each reference with its hierarchical 95% interval."""
    sub = sub.sort_values("budget")
    ax.axhline(0, color="k", lw=0.8)
    shown = set()
    for key, colour in (
        ("sl_large", MODE_COLOURS["sl_large"]),
        ("strongest", "tab:red"),
        ("strongest_any", "tab:blue"),
    ):
        if f"diff_{key}" not in sub or sub[f"{key}_name"].iloc[0] in shown:
            continue
        shown.add(sub[f"{key}_name"].iloc[0])
        y = sub[f"diff_{key}"]
        err = np.vstack([y - sub[f"diff_{key}_low"], sub[f"diff_{key}_high"] - y])
        name = sub[f"{key}_name"].iloc[0]
        label = RESULT_LABELS.get(name, name.replace("_", " "))
        ax.errorbar(sub["budget"], y, yerr=err, color=colour, marker="o", ms=4, capsize=2, label=f"SSL - {label}")
    _budget_axis(ax, sub["budget"])
    ax.set_title("all fractions: SSL minus reference\n(below 0: SSL better)", fontsize=9)


def figure_budget(budget_csv, history_csv, reference_json, out_png) -> None:
    """The budget figure: the pretext validation loss of the one run against its lookup
    references, with the budgets marked; per dataset, test MAE against budget per
    fraction, and SSL minus SL large and minus the strongest baseline over all fractions."""
    plt = _plt()
    table = pd.read_csv(budget_csv, dtype={"fraction": str})
    datasets = list(dict.fromkeys(table["dataset"]))
    fractions = [f for f in dict.fromkeys(table["fraction"]) if f != "all"]
    ncols = len(fractions) + 1
    fig, axes = plt.subplots(1 + len(datasets), ncols, figsize=(3.3 * ncols, 3.2 * (1 + len(datasets))), squeeze=False)
    h = pd.read_csv(history_csv)
    ref = json.loads(Path(reference_json).read_text())
    ax = axes[0, 0]
    ax.plot(h["epoch"] + 1, h["val_loss"], color="grey", lw=1, label="validation loss")
    ax.plot(h["epoch"] + 1, h["val_loss"].cummin(), color="k", lw=1.2, label="lowest so far")
    first = table.drop_duplicates("budget").sort_values("budget")
    ax.plot(first["budget"], first["pretrain_val_loss"], "o", color=MODE_COLOURS["ssl"], ms=5, label="budgets")
    for key, label, style in REFERENCES:
        if key in ref:
            ax.axhline(ref[key], color="tab:red", ls=style, lw=1, label=f"{label} ({ref[key]:.3f})")
    _budget_axis(ax, first["budget"])
    ax.set_xlabel("pretraining epochs")
    ax.set_ylabel("pretext validation loss (MSE)")
    ax.set_title("pretraining (first seed)", fontsize=9)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    for extra in axes[0, 1:]:
        extra.set_visible(False)
    for row, dataset in enumerate(datasets, start=1):
        sub = table[table["dataset"] == dataset]
        units = sub["units"].dropna().iloc[0] if "units" in sub and sub["units"].notna().any() else ""
        for col, fraction in enumerate(fractions):
            _budget_panel(axes[row, col], sub[sub["fraction"] == fraction], fraction)
        axes[row, 0].set_ylabel(f"{dataset}\ntest MAE" + (f" ({units})" if units else ""))
        axes[row, -1].set_ylabel("difference in test MAE" + (f" ({units})" if units else ""))
        axes[row, 0].legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=1)
        _budget_gap_panel(axes[row, -1], sub[sub["fraction"] == "all"])
        axes[row, -1].legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=1)
    fig.suptitle(
        "Pretraining budget: the best encoder of the first k epochs of one run, fine-tuned\n"
        "(SSL: mean and 95% interval over seeds; bands: 95% intervals of the references)",
        fontsize=10,
    )
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
