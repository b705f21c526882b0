"""Statistics of the fine-tuning grid: per-cell means, SSL against every baseline and trivial answer, win counts."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from .utils import LOG, atomic_path, write_json

BASELINES = ("sl", "sl_large")


def ssl_model(sigma: float | None = None, budget: int | None = None) -> str:
    """The model name of ssl cells: ``ssl``, plus ``_sigma_<s>`` in a noise-scale sweep and
    ``_budget_<k>`` for the encoder of the first k pretraining epochs."""
    name = "ssl"
    if sigma is not None:
        name += f"_sigma_{float(sigma):g}"
    if budget is not None:
        name += f"_budget_{int(budget)}"
    return name


def ssl_parts(model: str) -> dict[str, float]:
    """``sigma`` and ``budget`` of an ssl model name (those it has)."""
    words = model.split("_")[1:]
    return {key: float(value) for key, value in zip(words[::2], words[1::2], strict=True)}


def ssl_order(model: str) -> tuple[float, float]:
    """Sorts ssl models by sigma, then budget (numbers, not text: budget 25 before 100)."""
    parts = ssl_parts(model)
    return parts.get("sigma", 0.0), parts.get("budget", 0.0)


def collect_jobs(metric_files: list[str | Path], baseline_files: list[str | Path] = ()) -> pd.DataFrame:
    """Every run's metrics, with ``model``: the mode, except that in a noise-scale sweep
    (ssl runs at several sigmas) each sigma's ssl runs are their own model, and so are
    each pretraining budget's (pretrain.export_epochs). Each row also gets its (dataset,
    fraction, seed)'s feature baselines (cdssl.baselines), which are computed once per
    split and are the same for every mode."""
    rows = [json.loads(Path(f).read_text()) for f in metric_files]
    jobs = pd.DataFrame(rows)
    if baseline_files:
        keys = ["dataset", "fraction", "seed"]
        base = pd.DataFrame([json.loads(Path(f).read_text()) for f in baseline_files])
        base = base[keys + [c for c in base if c.startswith("test_mae_")]]
        jobs = jobs.merge(base, on=keys, how="left", validate="many_to_one")
    jobs["model"] = jobs["mode"]
    ssl = jobs["mode"] == "ssl"
    sweep = "sigma" in jobs and jobs.loc[ssl, "sigma"].nunique() > 1
    budgets = "budget" in jobs and jobs.loc[ssl, "budget"].notna().any()
    if sweep or budgets:
        jobs.loc[ssl, "model"] = [
            ssl_model(row.sigma if sweep else None, row.budget if budgets else None) for row in jobs[ssl].itertuples()
        ]
    return jobs.sort_values(["dataset", "fraction", "model", "seed"]).reset_index(drop=True)


def ssl_models(models) -> list[str]:
    """The ssl models among ``models``, by sigma, then budget."""
    return sorted((m for m in models if m == "ssl" or m.startswith("ssl_")), key=ssl_order)


# The answers without a graph network of ours, by name: the column of a run's (or its
# split's) test MAE (cdssl.baselines).
TRIVIAL = {
    "mean_predictor": "test_mae_mean_predictor",
    "composition": "test_mae_composition",
    "magpie_ridge": "test_mae_magpie_ridge",
    "magpie_boosting": "test_mae_magpie_boosting",
    "chgnet_ridge": "test_mae_chgnet_ridge",
    "chgnet_boosting": "test_mae_chgnet_boosting",
}
# what the verdict compares SSL with: every answer without pretraining but the mean
# predictor (the floor a model must beat to count at all) ...
NO_PRETRAINING = ("sl", "sl_large", "composition", "magpie_ridge", "magpie_boosting")
# ... and, separately, the answers on a foundation model pretrained elsewhere, on far
# more data (cdssl.features): the strongest baseline of all is the best of both
PRETRAINED_ELSEWHERE = ("chgnet_ridge", "chgnet_boosting")
MIN_PREDICTION_SPREAD = 0.1


def _sem(x: pd.Series) -> float:
    return x.std(ddof=1) / np.sqrt(len(x)) if len(x) > 1 else np.nan


def cell_table(jobs: pd.DataFrame, min_prediction_spread: float = MIN_PREDICTION_SPREAD) -> pd.DataFrame:
    """One row per (dataset, fraction): mean and standard error over seeds for each mode
    and for the trivial answers of the same test sets; per mode whether it beat the mean
    predictor (``beats_mean_<mode>``), the smallest over seeds of its prediction spread
    (standard deviation of its test predictions over the test targets', ``spread_<mode>``)
    and whether it learned (``learned_<mode>``: beats the mean predictor and every seed's
    spread is at least ``min_prediction_spread``); per baseline, SSL minus baseline,
    whether SSL has the lower mean (``ssl_wins_<base>``, the paper's count) and whether
    the cell counts (``counted_<ssl>_<base>``: both learned). In a noise-scale sweep or
    with budgets every ssl model (:func:`ssl_model`) gets these columns in place of ssl."""
    if "model" not in jobs:
        jobs = jobs.assign(model=jobs["mode"])
    g = jobs.groupby(["dataset", "fraction", "model"])["test_mae"]
    wide = g.agg(mean="mean", sem=_sem, n="count").unstack("model")
    wide.columns = [f"{stat}_{model}" for stat, model in wide.columns]
    modes = sorted(jobs["model"].unique())
    # one trivial answer per (dataset, fraction, seed): the same for every mode
    per_seed = jobs.groupby(["dataset", "fraction", "seed"])[[c for c in TRIVIAL.values() if c in jobs]].first()
    for name, column in TRIVIAL.items():
        if column in per_seed:
            wide[f"mean_{name}"] = per_seed[column].groupby(["dataset", "fraction"]).mean()
            wide[f"sem_{name}"] = per_seed[column].groupby(["dataset", "fraction"]).agg(_sem)
    if "target_std" in jobs:
        ratio = jobs["prediction_std"] / jobs["target_std"]
        spread = ratio.groupby([jobs["dataset"], jobs["fraction"], jobs["model"]]).min().unstack("model")
        spread.columns = [f"spread_{m}" for m in spread.columns]
        wide = wide.join(spread)
    wide = wide.reset_index()
    for mode in modes:
        if "mean_mean_predictor" in wide:
            wide[f"beats_mean_{mode}"] = wide[f"mean_{mode}"] < wide["mean_mean_predictor"]
        else:  # metrics written before the baselines existed: nothing to flag against
            wide[f"beats_mean_{mode}"] = True
        # metrics written before target_std existed: only the mean predictor flags
        varies = ~(wide[f"spread_{mode}"] < min_prediction_spread) if f"spread_{mode}" in wide else True
        wide[f"learned_{mode}"] = wide[f"beats_mean_{mode}"] & varies
    wide["flagged"] = [
        "; ".join(
            f"{m} not below the mean predictor"
            if not row[f"beats_mean_{m}"]
            else f"{m} predictions nearly constant (spread {row[f'spread_{m}']:.3g} < {min_prediction_spread:g})"
            for m in modes
            if not row[f"learned_{m}"]
        )
        for _, row in wide.iterrows()
    ]
    for name in TRIVIAL:
        # an answer without a network learned when it beats the mean predictor (it has no
        # training curve to stop early and no constant to collapse to)
        if f"mean_{name}" in wide and name != "mean_predictor":
            wide[f"learned_{name}"] = (
                wide[f"mean_{name}"] < wide["mean_mean_predictor"] if "mean_mean_predictor" in wide else True
            )
    for ssl in ssl_models(modes):
        for base in BASELINES:
            if f"mean_{base}" in wide:
                wide[f"diff_{ssl}_{base}"] = wide[f"mean_{ssl}"] - wide[f"mean_{base}"]
                wide[f"{ssl}_wins_{base}"] = wide[f"mean_{ssl}"] < wide[f"mean_{base}"]
                wide[f"counted_{ssl}_{base}"] = wide[f"learned_{ssl}"] & wide[f"learned_{base}"]
    units = jobs.groupby("dataset")["units"].first()
    wide["units"] = wide["dataset"].map(units)
    return wide


def paired_test(jobs: pd.DataFrame, baseline: str, ssl: str = "ssl") -> dict:
    """Wilcoxon signed-rank of SSL vs ``baseline`` test MAE, paired over (fraction, seed).

    The pairs share test sets, nested training sets and one encoder, so this p-value is
    optimistic; :func:`cell_statistics` gives the one whose unit is the cell.
    """
    keys = ["dataset", "fraction", "seed"]
    model = jobs["model"] if "model" in jobs else jobs["mode"]
    # several pretraining runs of one pair count as their mean
    a = jobs[model == ssl].groupby(keys)["test_mae"].mean()
    b = jobs[model == baseline].groupby(keys)["test_mae"].mean()
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


def run_array(jobs: pd.DataFrame, cells: pd.DataFrame, model: str) -> np.ndarray:
    """``model``'s test MAE per run as [pretraining seed, cell, fine-tuning seed] over the
    given cells (NaN where a run is missing). A model without pretraining, or a trivial
    answer (one value per split), has a single pretraining level."""
    keys = ["dataset", "fraction"]
    seeds = sorted(jobs["seed"].unique())
    if model in TRIVIAL:
        values = jobs.groupby([*keys, "seed"])[TRIVIAL[model]].first().to_frame("test_mae").reset_index()
        values["pretrain_seed"] = 0
    else:
        values = jobs[(jobs["model"] if "model" in jobs else jobs["mode"]) == model].copy()
        has_level = "pretrain_seed" in values and values["pretrain_seed"].notna().any()
        values["pretrain_seed"] = values["pretrain_seed"].fillna(0) if has_level else 0
    levels = sorted(values["pretrain_seed"].unique())
    out = np.full((len(levels), len(cells), len(seeds)), np.nan)
    cell_of = {(d, f): i for i, (d, f) in enumerate(zip(cells["dataset"], cells["fraction"], strict=True))}
    for row in values.itertuples():
        c = cell_of.get((row.dataset, row.fraction))
        if c is not None:
            out[levels.index(row.pretrain_seed), c, seeds.index(row.seed)] = row.test_mae
    return out


def hierarchical_bootstrap(
    a: np.ndarray, b: np.ndarray, n_boot: int = 10_000, seed: int = 0, level: float = 0.95
) -> dict:
    """Mean of ``a - b`` with a percentile interval that resamples at every level that
    varies: pretraining seeds, then cells, then fine-tuning seeds within each drawn cell.
    ``a`` and ``b`` are [pretraining seed, cell, fine-tuning seed] (:func:`run_array`);
    one with a single pretraining level is the same for every pretraining seed."""
    diff = a - b  # broadcasts a single pretraining level
    n_p, n_c, n_s = diff.shape
    finite = np.isfinite(diff)
    if not finite.any():
        return {"mean": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": 0}
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for start in range(0, n_boot, 500):
        k = min(500, n_boot - start)
        p = rng.integers(0, n_p, size=(k, n_p, 1, 1))
        c = rng.integers(0, n_c, size=(k, 1, n_c, 1))
        s = rng.integers(0, n_s, size=(k, 1, n_c, n_s))
        drawn = diff[p, c, s]  # (k, n_p, n_c, n_s)
        means[start : start + k] = np.nanmean(drawn.reshape(k, -1), axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.nanpercentile(means, [tail, 100 - tail])
    # the point estimate: cell means averaged, each over its pretraining and fine-tuning seeds
    return {
        "mean": float(np.nanmean(np.nanmean(diff, axis=(0, 2)))),
        "ci_low": float(low),
        "ci_high": float(high),
        "n": int(np.isfinite(np.nanmean(diff, axis=(0, 2))).sum()),
        "pretrain_seeds": int(n_p),
    }


def cell_statistics(cells: pd.DataFrame, other: str, ssl: str = "ssl", jobs: pd.DataFrame | None = None) -> dict:
    """SSL minus ``other`` (a mode or a trivial answer) over the given cells: the mean
    difference of cell means with a 95% interval, and a Wilcoxon signed-rank test over
    cells. With the runs (``jobs``) the interval is a hierarchical bootstrap (pretraining
    seed, then cell, then fine-tuning seed: :func:`hierarchical_bootstrap`); without, a
    bootstrap over cell means."""
    diffs = (cells[f"mean_{ssl}"] - cells[f"mean_{other}"]).to_numpy()
    if jobs is not None and len(cells):
        interval = hierarchical_bootstrap(run_array(jobs, cells, ssl), run_array(jobs, cells, other))
        unit = "cell (dataset, fraction); interval resampling pretraining seeds, then cells, then fine-tuning seeds"
    else:
        interval, unit = bootstrap_mean(diffs), "cell (dataset, fraction), mean over seeds"
    out = {"unit": unit, **interval, "p_value": float("nan")}
    finite = diffs[np.isfinite(diffs)]
    if len(finite) >= 2 and np.any(finite != 0):
        out["p_value"] = float(stats.wilcoxon(finite, zero_method="wilcox").pvalue)
    return out


def _learned(cells: pd.DataFrame, model: str) -> pd.Series:
    """Whether ``model`` learned in each cell; the mean predictor is the floor, always kept."""
    column = f"learned_{model}"
    return cells[column].astype(bool) if column in cells else pd.Series(True, index=cells.index)


def _against(sub: pd.DataFrame, candidates: list[str], ssl: str, jobs: pd.DataFrame | None = None) -> dict:
    """The lowest mean test MAE over the dataset's cells among ``candidates``, and SSL
    against it on the cells where both learned."""
    strongest = min(candidates, key=lambda m: sub[f"mean_{m}"].mean())
    counted = _learned(sub, ssl) & _learned(sub, strongest)
    won = (sub[f"mean_{ssl}"] < sub[f"mean_{strongest}"]) & counted
    return {
        "name": strongest,
        "its_mean_test_mae": float(sub[f"mean_{strongest}"].mean()),
        "ssl_minus_it": cell_statistics(sub[counted], strongest, ssl, jobs),
        "ssl_wins": int(won.sum()),
        "cells_counted": int(counted.sum()),
        "_diffs": list((sub[f"mean_{ssl}"] - sub[f"mean_{strongest}"])[counted]),
        # the runs behind the counted cells, for the pooled interval
        "_runs": None
        if jobs is None
        else (run_array(jobs, sub[counted], ssl), run_array(jobs, sub[counted], strongest)),
    }


ALL = "all"  # the fraction column of rows over every fraction


def _compare(sub: pd.DataFrame, ssl: str, other: str, jobs: pd.DataFrame) -> dict[str, float]:
    both = sub[_learned(sub, ssl) & _learned(sub, other)]
    if both.empty:
        return {"mean": np.nan, "ci_low": np.nan, "ci_high": np.nan, "n": 0}
    c = cell_statistics(both, other, ssl, jobs)
    return {k: c[k] for k in ("mean", "ci_low", "ci_high", "n")}


def reference_rows(jobs: pd.DataFrame, cells: pd.DataFrame, summary: dict, ssl: str) -> list[dict]:
    """One row per (dataset, fraction) and per dataset over all fractions (fraction
    :data:`ALL`): the ssl model's mean test MAE beside SL large's and the strongest
    baselines' (the verdict's strongest answer without pretraining, and of all, a
    foundation model's features included), and SSL minus each with its 95% interval (one
    cell: resampling seeds; all: pretraining seeds, cells, fine-tuning seeds). Cells where
    either model did not learn are left out of a difference."""
    rows = []
    verdicts = summary["verdict"].get(ssl, {}).get("per_dataset", {})
    for dataset, sub in cells.groupby("dataset"):
        v = verdicts.get(dataset)
        if v is None:
            continue
        refs = {
            "sl_large": "sl_large",
            "strongest": v["strongest_without_pretraining"],
            "strongest_any": v["strongest_baseline"]["name"],
        }
        groups = [(f"{f:g}", sub[sub["fraction"] == f]) for f in sorted(sub["fraction"])] + [(ALL, sub)]
        for fraction, part in groups:
            row = {
                "dataset": dataset,
                "fraction": fraction,
                "model": ssl,
                "units": sub["units"].iloc[0] if "units" in sub else "",
                "ssl_mean": float(part[f"mean_{ssl}"].mean()),
                "ssl_sem": float(part[f"sem_{ssl}"].mean()) if len(part) == 1 else np.nan,
            }
            for key, name in refs.items():
                if f"mean_{name}" not in part:
                    continue
                row[f"{key}_name"] = name
                row[f"{key}_mean"] = float(part[f"mean_{name}"].mean())
                row[f"{key}_sem"] = float(part[f"sem_{name}"].mean()) if len(part) == 1 else np.nan
                c = _compare(part, ssl, name, jobs)
                row[f"diff_{key}"], row[f"diff_{key}_low"], row[f"diff_{key}_high"] = (
                    c["mean"],
                    c["ci_low"],
                    c["ci_high"],
                )
            rows.append(row)
    return rows


def format_diff(row: Mapping, key: str) -> str:
    """``+0.0123 [-0.0010, +0.0250]`` for a reference row's SSL minus ``key``, or "not counted"."""
    mean = row.get(f"diff_{key}", np.nan)
    if not np.isfinite(mean):
        return "not counted"
    return f"{mean:+.4f} [{row[f'diff_{key}_low']:+.4f}, {row[f'diff_{key}_high']:+.4f}]"


def reference_cells(row: Mapping, *, named: bool = False) -> str:
    """A reference row's SSL, SL large and strongest means and SSL minus the two as
    Markdown cells, ``| SSL | SL large | strongest | SSL - SL large | SSL - strongest |``;
    ``named`` writes the strongest baseline's name before its mean."""
    strongest = f"{row['strongest_name']} " if named else ""
    return (
        f"| {row['ssl_mean']:.4f} | {row.get('sl_large_mean', np.nan):.4f} | {strongest}{row['strongest_mean']:.4f} "
        f"| {format_diff(row, 'sl_large')} | {format_diff(row, 'strongest')} |"
    )


def _pooled_interval(diffs: list, runs: list) -> dict:
    """SSL minus each dataset's strongest, over every counted cell of every dataset: the
    hierarchical interval when the runs are known (cells side by side; a trivial answer
    repeated over SSL's pretraining seeds), else a bootstrap over cell differences."""
    runs = [r for r in runs if r is not None and r[0].shape[1]]
    if not runs or len({a.shape[0] for a, _ in runs}) != 1:
        return bootstrap_mean(np.array(diffs))
    a = np.concatenate([a for a, _ in runs], axis=1)
    b = np.concatenate([np.broadcast_to(b, (a_.shape[0], *b.shape[1:])) for a_, b in runs], axis=1)
    return hierarchical_bootstrap(a, b)


def verdict(cells: pd.DataFrame, ssl: str = "ssl", jobs: pd.DataFrame | None = None) -> dict:
    """Per dataset, the strongest answer that used no pretraining (lowest mean test MAE over
    the dataset's cells among the networks from scratch and the composition models) and
    SSL against it, on the cells where both learned; beside it the strongest baseline of
    all, the foundation model's features included; overall, SSL against each dataset's
    strongest, pooled over those cells."""
    per_dataset: dict = {}
    pooled = {"without_pretraining": [[], 0, 0, []], "overall": [[], 0, 0, []]}
    for dataset, sub in cells.groupby("dataset"):
        present = [
            m for m in NO_PRETRAINING + PRETRAINED_ELSEWHERE if f"mean_{m}" in sub and sub[f"mean_{m}"].notna().any()
        ]
        candidates = [m for m in present if m in NO_PRETRAINING]
        if not candidates or f"mean_{ssl}" not in sub:
            continue
        blocks = {
            "without_pretraining": _against(sub, candidates, ssl, jobs),
            "overall": _against(sub, present, ssl, jobs),
        }
        for key, block in blocks.items():
            pooled[key][0] += block.pop("_diffs")
            pooled[key][3].append(block.pop("_runs"))
            pooled[key][1] += block["ssl_wins"]
            pooled[key][2] += block["cells_counted"]
        first = blocks["without_pretraining"]
        per_dataset[dataset] = {
            "strongest_without_pretraining": first["name"],
            "its_mean_test_mae": first["its_mean_test_mae"],
            "ssl_mean_test_mae": float(sub[f"mean_{ssl}"].mean()),
            "ssl_minus_strongest": first["ssl_minus_it"],
            "ssl_wins": first["ssl_wins"],
            "cells_counted": first["cells_counted"],
            "cells": int(len(sub)),
            "strongest_baseline": blocks["overall"],
            "ranking": {
                m: float(sub[f"mean_{m}"].mean())
                for m in sorted(present + [ssl], key=lambda m: sub[f"mean_{m}"].mean())
            },
        }
    overall = {
        key: {**_pooled_interval(d, runs), "ssl_wins": w, "cells_counted": n} for key, (d, w, n, runs) in pooled.items()
    }
    return {
        "model": ssl,
        "per_dataset": per_dataset,
        "overall": overall["without_pretraining"],
        "overall_any": overall["overall"],
    }


def summarise(jobs: pd.DataFrame, cells: pd.DataFrame) -> dict:
    models = sorted((jobs["model"] if "model" in jobs else jobs["mode"]).unique())
    out: dict = {
        "n_jobs": int(len(jobs)),
        "modes": sorted(jobs["mode"].unique()),
        "models": models,
        "cells": int(len(cells)),
        "cells_flagged": {m: int((~cells[f"learned_{m}"]).sum()) for m in models},
        "comparisons": {},
    }
    others = [b for b in BASELINES if b in models] + [t for t in TRIVIAL if f"mean_{t}" in cells]
    for ssl in ssl_models(models):
        for other in others:
            # intervals and tests on the cells where both learned (flagged cells say why in cells.csv)
            both = cells[_learned(cells, ssl) & _learned(cells, other)]
            comp: dict = {
                "cell_means": cell_statistics(both, other, ssl, jobs),
                "per_dataset": {d: cell_statistics(sub, other, ssl, jobs) for d, sub in both.groupby("dataset")},
            }
            if other in BASELINES:
                counted = cells[f"counted_{ssl}_{other}"]
                wins = cells[f"{ssl}_wins_{other}"]
                comp.update(
                    ssl_wins=int((wins & counted).sum()),
                    cells_counted=int(counted.sum()),
                    cells_excluded=int((~counted).sum()),
                    excluded=[f"{r.dataset} {r.fraction:g}" for r in cells[~counted].itertuples()],
                    paper_count={"ssl_wins": int(wins.sum()), "cells": int(len(cells))},
                    wins_per_dataset={
                        d: int((s[f"{ssl}_wins_{other}"] & s[f"counted_{ssl}_{other}"]).sum())
                        for d, s in cells.groupby("dataset")
                    },
                    pairs=paired_test(jobs, other, ssl),
                )
            out["comparisons"][f"{ssl}_vs_{other}"] = comp
    out["verdict"] = {ssl: verdict(cells, ssl, jobs) for ssl in ssl_models(models)}
    return out


def summary_lines(summary: dict) -> list[str]:
    """The summary in words: what a log or a README quotes."""
    lines = [
        f"{summary['cells']} cells; did not learn (not below the mean predictor, or nearly constant): "
        + ", ".join(f"{m} {n}" for m, n in summary["cells_flagged"].items()),
        "intervals: 95% percentile bootstrap resampling pretraining seeds, then cells, then fine-tuning seeds",
    ]
    for name, comp in summary["comparisons"].items():
        c = comp["cell_means"]
        line = (
            f"{name}: mean difference {c['mean']:+.4g} (95% CI {c['ci_low']:+.4g} to "
            f"{c['ci_high']:+.4g}) over {c['n']} cells, Wilcoxon on cell means p = {c['p_value']:.3g}"
        )
        if "ssl_wins" in comp:
            line += (
                f"; SSL lower in {comp['ssl_wins']} of {comp['cells_counted']} counted cells "
                f"({comp['cells_excluded']} excluded: a model not below the mean predictor); paper-style "
                f"count {comp['paper_count']['ssl_wins']} of {comp['paper_count']['cells']}"
            )
        lines.append(line)
    for ssl, v in summary.get("verdict", {}).items():
        for dataset, d in v["per_dataset"].items():
            c = d["ssl_minus_strongest"]
            lines.append(
                f"verdict {dataset}: the strongest answer without pretraining is {d['strongest_without_pretraining']} "
                f"(mean test MAE {d['its_mean_test_mae']:.4g}; {ssl} {d['ssl_mean_test_mae']:.4g}); {ssl} minus it "
                f"{c['mean']:+.4g} (95% CI {c['ci_low']:+.4g} to {c['ci_high']:+.4g}), {ssl} lower in "
                f"{d['ssl_wins']} of {d['cells_counted']} counted cells ({d['cells']} in all)"
            )
            b = d.get("strongest_baseline")
            if b and b["name"] != d["strongest_without_pretraining"]:
                c = b["ssl_minus_it"]
                lines.append(
                    f"verdict {dataset}, a foundation model's features included: the strongest baseline is "
                    f"{b['name']} (mean test MAE {b['its_mean_test_mae']:.4g}); {ssl} minus it {c['mean']:+.4g} "
                    f"(95% CI {c['ci_low']:+.4g} to {c['ci_high']:+.4g}), {ssl} lower in {b['ssl_wins']} of "
                    f"{b['cells_counted']} counted cells"
                )
    return lines


RESULT_COLUMNS = (
    "ssl",
    "sl",
    "sl_large",
    "mean_predictor",
    "composition",
    "magpie_ridge",
    "magpie_boosting",
    "chgnet_ridge",
    "chgnet_boosting",
)
RESULT_LABELS = {
    "ssl": "SSL",
    "sl": "SL (Table 3)",
    "sl_large": "SL large (Table 2)",
    "mean_predictor": "mean predictor",
    "composition": "element-fraction ridge",
    "magpie_ridge": "Magpie ridge",
    "magpie_boosting": "Magpie boosting",
    "chgnet_ridge": "CHGNet ridge",
    "chgnet_boosting": "CHGNet boosting",
}


def result_label(model: str) -> str:
    """A model's column name: ``SSL (sigma 0.3 A, 100 epochs)`` for a sweep's or a budget's ssl model."""
    if model in RESULT_LABELS or not model.startswith("ssl_"):
        return RESULT_LABELS.get(model, model)
    parts = ssl_parts(model)
    tags = [f"sigma {parts['sigma']:g} A"] if "sigma" in parts else []
    tags += [f"{parts['budget']:g} epochs"] if "budget" in parts else []
    return f"SSL ({', '.join(tags)})"


def results_markdown(cells: pd.DataFrame, summary: dict) -> str:
    """The fine-tuning results as the README and the report quote them: per dataset the
    cell table (mean ± standard error over seeds, the lowest mean of a row in bold) and
    the verdict lines (part of the results document, :mod:`cdssl.document`)."""
    out = []
    for dataset, sub in cells.groupby("dataset"):
        models = [m for m in RESULT_COLUMNS if f"mean_{m}" in sub] + [
            m for m in ssl_models(c.removeprefix("mean_") for c in sub if c.startswith("mean_ssl_"))
        ]
        units = sub["units"].iloc[0] if "units" in sub else ""
        out += [f"### {dataset}" + (f" (test MAE, {units})" if units else ""), ""]
        out.append("| fraction | " + " | ".join(result_label(m) for m in models) + " | flagged |")
        out.append("|---" * (len(models) + 2) + "|")
        for _, row in sub.sort_values("fraction").iterrows():
            best = min((row[f"mean_{m}"] for m in models if m != "mean_predictor"), default=np.nan)
            cells_text = []
            for m in models:
                text = f"{row[f'mean_{m}']:.4f}"
                if np.isfinite(row.get(f"sem_{m}", np.nan)):
                    text += f" ± {row[f'sem_{m}']:.4f}"
                cells_text.append(f"**{text}**" if row[f"mean_{m}"] == best else text)
            # read back from cells.csv, an empty flag is NaN
            flag = row.get("flagged")
            flag = flag if isinstance(flag, str) and flag else "-"
            out.append(f"| {row['fraction']:g} | " + " | ".join(cells_text) + f" | {flag} |")
        out.append("")
    out += [f"- {line}" for line in summary_lines(summary)]
    return "\n".join(out) + "\n"


def write_aggregates(
    metric_files,
    jobs_csv,
    cells_csv,
    summary_json,
    baseline_files=(),
    min_prediction_spread: float = MIN_PREDICTION_SPREAD,
) -> dict:
    jobs = collect_jobs(metric_files, baseline_files)
    cells = cell_table(jobs, min_prediction_spread)
    for frame, path in ((jobs, jobs_csv), (cells, cells_csv)):
        with atomic_path(path) as tmp:
            frame.to_csv(tmp, index=False)
    summary = summarise(jobs, cells)
    write_json(summary, summary_json)
    for line in summary_lines(summary):
        LOG.info("%s", line)
    return summary
