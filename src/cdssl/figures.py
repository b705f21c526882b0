"""Figures 3-5 and the budget figure: pretraining curves beside their references, SSL against the baselines per cell
and per pretraining budget, the UMAP maps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .runs import WORDS, Model, encoder_tags, label, models_of, read_table, varying_axes
from .statistics import SCRATCH, learned, per_cell
from .utils import atomic_path

COLOURS = {"sl": "#d95f02", "sl_large": "#7570b3"}
SSL_COLOUR = "#1b9e77"
LINE_WORDS = {
    "mean_predictor": "mean predictor",
    "composition": "element-fraction ridge",
    "strongest_composition": "best composition model (of the cell)",
    "strongest_structure": "best on Magpie+structure features (of the cell)",
    "strongest_chgnet": "best on frozen CHGNet features (of the cell)",
    "hybrid": "hybrid: Magpie+structure + pretrained PCs",
    "hybrid_random": "hybrid with a random-init encoder",
}
# per cell, the lowest mean test MAE of a group of baseline families (cdssl.runs.BASELINES)
GROUPS = {
    "mean_predictor": ("mean_predictor",),
    "composition": ("composition",),
    "strongest_composition": ("composition", "magpie_ridge", "magpie_boosting"),
    "strongest_structure": ("magpie_structure_ridge", "magpie_structure_boosting"),
    "strongest_chgnet": ("chgnet_ridge", "chgnet_boosting"),
    "hybrid": ("hybrid",),
    "hybrid_random": ("hybrid_random",),
}


def reference_line(cells: pd.DataFrame, name: str):
    """The values of a horizontal reference per cell: one baseline, or the best of a
    group (None when the cells lack it, or a group has nothing beyond the ridge that is
    drawn on its own)."""
    models = models_of(cells, GROUPS[name])
    if not models or (name.startswith("strongest") and [m.family for m in models] == ["composition"]):
        return None
    return per_cell(cells, models).min(axis=1).to_numpy()


def model_colour(model: Model, models: list[Model]) -> str | tuple | None:
    """A scratch network its own colour; ssl models shades of green, one per encoder."""
    ssl = [m for m in models if m.family == "ssl"]
    if model.family != "ssl":
        return COLOURS.get(model.family)
    if len(ssl) == 1:
        return SSL_COLOUR
    import matplotlib

    return matplotlib.colormaps["Greens"](0.45 + 0.5 * ssl.index(model) / max(1, len(ssl) - 1))


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


def _save(plt, fig, out_png) -> None:
    """Lay out, write (whole or not at all) and close a figure."""
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)


def _run_tag(sigma, size, sigmas: list, pool_sizes: list) -> str:
    """A pretraining curve's words among several: its sigma and, with several pool sizes, its pool."""
    words = [f"sigma {sigma} A"] if len(set(sigmas)) > 1 or len(set(pool_sizes)) == 1 else []
    words += [f"pool of {size}"] if len(set(pool_sizes)) > 1 else []
    return f"{', '.join(words)}: "


def figure3(
    history_csvs, selected_jsons, reference_jsons, out_png, sigmas: list | None = None, pool_sizes: list | None = None
) -> None:
    """Pretraining curves, one colour per run (noise scale ``sigmas`` and ``pool_sizes``,
    lists in the order of the files), each beside its own references that need no learning."""
    plt = _plt()
    paths = [history_csvs] if isinstance(history_csvs, (str, Path)) else list(history_csvs)
    selected = [selected_jsons] if isinstance(selected_jsons, (str, Path)) else list(selected_jsons)
    refs = [reference_jsons] if isinstance(reference_jsons, (str, Path)) else list(reference_jsons)
    sigmas = list(sigmas) if sigmas is not None else [None] * len(paths)
    pool_sizes = list(pool_sizes) if pool_sizes is not None else [None] * len(paths)
    sweep = len(paths) > 1
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for k, (path, sel, ref_path, sigma, size) in enumerate(zip(paths, selected, refs, sigmas, pool_sizes, strict=True)):
        h = pd.read_csv(path)
        best = json.loads(Path(sel).read_text())["epoch"]
        ref = json.loads(Path(ref_path).read_text())
        tag = _run_tag(sigma, size, sigmas, pool_sizes) if sweep else ""
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
        for key, words, style in REFERENCES:
            if key in ref:
                axes[0].axhline(
                    ref[key],
                    color=colour if sweep else "tab:red",
                    ls=style,
                    lw=1,
                    label=f"{tag}{words} ({ref[key]:.3f})",
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


def _bars(ax, runs: pd.DataFrame, cells: pd.DataFrame, models: list[Model]) -> None:
    """Grouped bars (seaborn): per fraction and model the mean test MAE over seeds with
    its standard error, from the per-seed rows; the baselines as lines across."""
    import seaborn as sns

    axes = varying_axes(models)
    words = {m: label(m, axes) for m in models}
    data = runs.assign(model=[Model.of(r) for r in runs.to_dict("records")])
    data = data[data["model"].isin(models)].assign(label=lambda d: d["model"].map(words))
    sns.barplot(
        data=data,
        x="fraction",
        y="test_mae",
        hue="label",
        hue_order=[words[m] for m in models],
        order=sorted(cells["fraction"].unique()),
        palette={words[m]: model_colour(m, models) for m in models},
        errorbar="se",
        capsize=0.15,
        err_kws={"linewidth": 1},
        ax=ax,
    )
    # a model that did not learn in a cell (not below the mean predictor, or predictions
    # nearly constant: cdssl.statistics.cell_table) is drawn hollow: flagged, never a win
    ok = learned(cells, models)
    for model, container in zip(models, ax.containers, strict=True):
        for bar, beats in zip(container, ok[model], strict=True):
            if not beats:
                bar.set_facecolor("none")
                bar.set_edgecolor(model_colour(model, models) or "k")
                bar.set_hatch("//")
    for name, style in (
        ("mean_predictor", "k--"),
        ("composition", "k:"),
        ("strongest_composition", "r-."),
        ("strongest_structure", "m-."),
        ("strongest_chgnet", "b-."),
        ("hybrid", "g:"),
        ("hybrid_random", "y:"),
    ):
        values = reference_line(cells, name)
        if values is not None:
            for j, value in enumerate(values):
                ax.plot([j - 0.45, j + 0.45], [value, value], style, lw=1.2, label=LINE_WORDS[name] if j == 0 else None)
    fractions = per_cell(cells, models[:1]).index.get_level_values("fraction")
    ax.set_xticks(range(len(fractions)), [f"{f:g}" for f in fractions])
    ax.set_xlabel("training fraction")


def wins(cells: pd.DataFrame, ssl: Model, other: Model) -> tuple[int, int]:
    """Cells where ``ssl`` has the lower mean and both learned, and cells where both learned."""
    means, ok = per_cell(cells, [ssl, other]), learned(cells, [ssl, other])
    counted = ok[ssl] & ok[other]
    return int(((means[ssl] < means[other]) & counted).sum()), int(counted.sum())


def _title(dataset: str, cells: pd.DataFrame, models: list[Model]) -> str:
    axes = varying_axes(models)
    scratch = [m for m in models if m.family in SCRATCH]
    parts = []
    for ssl in (m for m in models if m.family == "ssl"):
        tags = encoder_tags(ssl, axes)
        who = f"{', '.join(tags)}: " if tags else ""
        for other in scratch:
            won, counted = wins(cells, ssl, other)
            parts.append(f"{who}{won}/{counted} vs {WORDS[other.family].split(' (')[0]}")
    # one comparison per line where there are several (pool sizes, sigmas): in one line
    # they run into the next panel's title
    sep = "\n" if len(parts) > 1 else " "
    text = f"{dataset}: SSL lower in{sep}" + f",{sep}".join(parts) if parts else dataset
    return text + "\n(hollow bars: did not learn, cell not counted)"


def _panel(ax, runs: pd.DataFrame, cells: pd.DataFrame, dataset: str, models: list[Model]) -> None:
    units = cells["units"].iloc[0] if isinstance(cells["units"].iloc[0], str) else ""
    _bars(ax, runs[runs["dataset"] == dataset], cells, models)
    ax.set_ylabel(f"test MAE ({units})" if units else "test MAE")
    ax.set_title(_title(dataset, cells, models), fontsize=9)
    # beside the panel, never over the bars
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def network_models(cells: pd.DataFrame, modes: list[str]) -> list[Model]:
    """The networks of ``cells`` in the order of ``modes``; ssl gives every ssl model."""
    return [m for mode in modes for m in models_of(cells, mode)]


def figure4(jobs_csv, cells_csv, modes: list[str], out_png, per_dataset_dir) -> list[Path]:
    """One multi-panel figure plus one file per dataset: bars and error bars from the
    per-seed rows (``jobs_csv``), flags and baselines from the cells."""
    plt = _plt()
    runs = read_table(jobs_csv)
    cells = read_table(cells_csv)
    models = network_models(cells, modes)
    datasets = list(dict.fromkeys(cells["dataset"]))
    per_dataset_dir = Path(per_dataset_dir)
    per_dataset_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for dataset in datasets:
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        _panel(ax, runs, cells[cells["dataset"] == dataset], dataset, models)
        fig.tight_layout()
        path = per_dataset_dir / f"{dataset}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    ncols = min(3, len(datasets))
    nrows = int(np.ceil(len(datasets) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(8, 5 * ncols), 3.8 * nrows + 0.6), squeeze=False)
    # the grid has ncols x nrows panels, one per dataset and the last row's spare ones hidden
    panels = list(axes.flat)
    for ax, dataset in zip(panels[: len(datasets)], datasets, strict=True):
        _panel(ax, runs, cells[cells["dataset"] == dataset], dataset, models)
    for ax in panels[len(datasets) :]:
        ax.set_visible(False)
    head = (
        "Figure 4: test MAE, mean and standard error over seeds\n"
        "dashed: mean predictor, dotted: element-fraction ridge, dash-dot: best baseline per feature set\n"
        "green and yellow dotted: the hybrid and its random-init control"
    )
    axes_words = varying_axes(models)
    sl = [m for m in models if m.family == "sl"]
    for ssl in (m for m in models if m.family == "ssl" and sl):
        won, counted = wins(cells, ssl, sl[0])
        n = len(per_cell(cells, [ssl]))
        head += f"\n{label(ssl, axes_words)} lower than SL in {won} of {counted} counted cells ({n - counted} excluded)"
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
        sub["budget"], sub["ssl_mean"], yerr=1.96 * sub["ssl_sem"], color=SSL_COLOUR, marker="o", ms=4,
        capsize=2, label="SSL (pretrained)",
    )  # fmt: skip
    for key, colour in (
        ("sl_large", COLOURS["sl_large"]),
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
        ax.axhline(mean, color=colour, lw=1.2, label=label(Model(name)))
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
        ("sl_large", COLOURS["sl_large"]),
        ("strongest", "tab:red"),
        ("strongest_any", "tab:blue"),
    ):
        if f"diff_{key}" not in sub or sub[f"{key}_name"].iloc[0] in shown:
            continue
        shown.add(sub[f"{key}_name"].iloc[0])
        y = sub[f"diff_{key}"]
        err = np.vstack([y - sub[f"diff_{key}_low"], sub[f"diff_{key}_high"] - y])
        name = sub[f"{key}_name"].iloc[0]
        words = label(Model(name))
        ax.errorbar(sub["budget"], y, yerr=err, color=colour, marker="o", ms=4, capsize=2, label=f"SSL - {words}")
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
    ax.plot(first["budget"], first["pretrain_val_loss"], "o", color=SSL_COLOUR, ms=5, label="budgets")
    for key, words, style in REFERENCES:
        if key in ref:
            ax.axhline(ref[key], color="tab:red", ls=style, lw=1, label=f"{words} ({ref[key]:.3f})")
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
    _save(plt, fig, out_png)


def _map_panel(ax, table: pd.DataFrame, column: str, title: str) -> None:
    """Tasks x pool sizes, coloured by ``column`` relative to the strongest answer's MAE
    (tasks have different units), each cell annotated with the difference and its 95%
    interval; a ring marks an interval that excludes zero."""
    rows = list(dict.fromkeys(table["row"]))
    sizes = sorted(table["pool_crystals"].dropna().unique())
    grid = np.full((len(rows), len(sizes)), np.nan)
    shown = table.dropna(subset=[column, "pool_crystals"])
    for r in shown.itertuples():
        grid[rows.index(r.row), sizes.index(r.pool_crystals)] = 100 * getattr(r, column) / r.strongest_mae
    bound = max(5.0, float(np.nanmax(np.abs(grid)))) if np.isfinite(grid).any() else 5.0
    for r in shown.itertuples():
        i, j = rows.index(r.row), sizes.index(r.pool_crystals)
        low, high = getattr(r, f"{column}_low"), getattr(r, f"{column}_high")
        ring = low > 0 or high < 0
        text = f"{getattr(r, column):+.3g}\n[{low:+.2g}, {high:+.2g}]"
        # light text on the dark ends of the colour scale
        colour = "white" if abs(grid[i, j]) > 0.6 * bound else "black"
        weight = "bold" if ring else "normal"
        ax.text(j, i, text, ha="center", va="center", fontsize=6.5, fontweight=weight, color=colour)
        if ring:
            ax.add_patch(_plt().Rectangle((j - 0.48, i - 0.48), 0.96, 0.96, fill=False, lw=1.5, ec=colour))
    image = ax.imshow(grid, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto")
    ax.set_xticks(range(len(sizes)), [f"{int(s):,}" for s in sizes])
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set_xlabel("pretraining pool (crystals)")
    ax.set_title(title, fontsize=9)
    _plt().colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="% of the strongest answer's MAE")


def figure_map(map_csv, out_png) -> None:
    """The map (cdssl.pretraining_map): SSL minus the strongest answer without pretraining,
    the hybrid minus its random-init control, each per task and pool size with its 95%
    hierarchical interval, and the pretext validation loss per pool size beside the lower
    lookup reference."""
    plt = _plt()
    try:
        table = pd.read_csv(map_csv)
    except pd.errors.EmptyDataError:
        table = pd.DataFrame()
    if table.empty:
        fig, ax = plt.subplots(figsize=(4, 2))
        ax.text(0.5, 0.5, "no SSL model with a verdict", ha="center", va="center")
        ax.set_axis_off()
    else:
        settings = [k for k in ("backbone", "sigma", "budget") if table[k].nunique(dropna=False) > 1]
        table["row"] = [", ".join([r["dataset"], *(f"{k} {r[k]}" for k in settings)]) for r in table.to_dict("records")]
        n = table["row"].nunique()
        fig, axes = plt.subplots(1, 3, figsize=(15, 1.2 + 0.55 * n + 1.5), width_ratios=[1.2, 1.2, 1.0])
        _map_panel(axes[0], table, "ssl_minus_strongest", "SSL minus the strongest answer without pretraining")
        _map_panel(axes[1], table, "hybrid_minus_random_init", "hybrid (pretrained) minus hybrid (random init)")
        ax = axes[2]
        pretext = table.drop_duplicates(["backbone", "sigma", "budget", "pool_crystals"]).sort_values("pool_crystals")
        for k, (key, part) in enumerate(pretext.groupby(["backbone", "sigma", "budget"], dropna=False, sort=False)):
            words = ", ".join(
                f"{name} {value}" for name, value in zip(("", "sigma", "budget"), key, strict=True) if value == value
            )
            ax.plot(
                part["pool_crystals"], part["pretext_val_loss"], "o-", color=f"C{k}", label=f"{words.strip()}: selected"
            )
            ax.plot(
                part["pool_crystals"], part["lookup_val_loss"], "x--", color=f"C{k}", alpha=0.7, label="lower lookup"
            )
        ax.set_xscale("log")
        ax.set_xlabel("pretraining pool (crystals)")
        ax.set_ylabel("pretext validation loss (MSE)")
        ax.set_title("pretext: below its lookup = learned beyond a table", fontsize=9)
        ax.legend(fontsize=6)
        fig.suptitle(
            "Where pretraining pays: test MAE differences per task (below 0: the first model better;\n"
            "bold with a box: the 95% hierarchical interval excludes 0)",
            fontsize=10,
        )
    _save(plt, fig, out_png)
