"""Statistics of the fine-tuning grid: cell means, which models learned, SSL against every other answer, the verdict.

Input is the long runs table (:mod:`cdssl.runs`); a cell is a (dataset, fraction) and
each model of it one row of the cells table. Comparisons take one column of cell values
per model (:func:`per_cell`) and select models by their keys, never by a name.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .intervals import bootstrap_mean, difference, hierarchical_bootstrap, paired_test, run_array
from .runs import CELL_KEYS, MODEL_KEYS, Model, model_mask, models_of, sort_runs

# the scratch networks SSL is counted against cell by cell (the paper's win count)
SCRATCH = ("sl", "sl_large")
# what the verdict compares SSL with: every answer without pretraining but the mean
# predictor (the floor a model must beat to count at all) ...
NO_PRETRAINING = (
    "sl",
    "sl_large",
    "composition",
    "magpie_ridge",
    "magpie_boosting",
    "magpie_structure_ridge",
    "magpie_structure_boosting",
)
# ... and, separately, the answers on a foundation model pretrained elsewhere, on far
# more data (cdssl.features): the strongest baseline of all is the best of both
PRETRAINED_ELSEWHERE = ("chgnet_ridge", "chgnet_boosting")
MIN_PREDICTION_SPREAD = 0.1
FLOOR = "mean_predictor"


def _sem(x: pd.Series) -> float:
    return x.std(ddof=1) / np.sqrt(len(x)) if len(x) > 1 else np.nan


def cell_table(runs: pd.DataFrame, min_prediction_spread: float = MIN_PREDICTION_SPREAD) -> pd.DataFrame:
    """One row per (cell, model): mean and standard error of the test MAE over seeds
    (``n`` runs); the smallest prediction spread of its runs (standard deviation of the
    test predictions over the test targets'; networks only); ``beats_mean``: below the
    mean predictor of the same test sets; ``learned``: beats the mean predictor and every
    run's spread is at least ``min_prediction_spread`` (the mean predictor itself is the
    floor, always kept); ``flag``: why a model did not learn, empty when it did."""
    keys = [*CELL_KEYS, *MODEL_KEYS]
    grouped = runs.groupby(keys, dropna=False, sort=False)
    cells = grouped["test_mae"].agg(mean="mean", sem=_sem, n="count")
    if "target_std" in runs:
        ratio = runs["prediction_std"] / runs["target_std"]
        cells["spread"] = ratio.groupby([runs[k] for k in keys], dropna=False, sort=False).min()
    else:  # metrics written before target_std existed: only the mean predictor flags
        cells["spread"] = np.nan
    cells = cells.reset_index()
    floor = cells[cells["family"] == FLOOR].set_index(list(CELL_KEYS))["mean"]
    is_floor = (cells["family"] == FLOOR).to_numpy()
    if floor.empty:  # metrics written before the baselines existed: nothing to flag against
        beats = np.ones(len(cells), dtype=bool)
    else:
        at = pd.MultiIndex.from_frame(cells[list(CELL_KEYS)])
        beats = cells["mean"].to_numpy() < floor.reindex(at).to_numpy()
    constant = (cells["spread"] < min_prediction_spread).to_numpy()
    cells["learned"] = is_floor | (beats & ~constant)
    # the floor is not below itself, nor above: empty
    cells["beats_mean"] = pd.array(np.where(is_floor, None, beats), dtype="boolean")
    reasons = np.where(
        beats,
        [f"predictions nearly constant (spread {s:.3g} < {min_prediction_spread:g})" for s in cells["spread"]],
        "not below the mean predictor",
    )
    cells["flag"] = np.where(cells["learned"], "", reasons)
    if "units" in runs:
        cells["units"] = cells["dataset"].map(runs.groupby("dataset")["units"].first())
    return sort_runs(cells)


def grid(cells: pd.DataFrame) -> pd.MultiIndex:
    """The (dataset, fraction) cells, in order."""
    return pd.MultiIndex.from_frame(cells[list(CELL_KEYS)].drop_duplicates().sort_values(list(CELL_KEYS)))


def per_cell(cells: pd.DataFrame, models: list[Model], column: str = "mean") -> pd.DataFrame:
    """One column per model (the :class:`Model` itself labels it), one row per cell: its
    ``column`` of the cells table (NaN where the model has no row)."""
    index = grid(cells)
    out = {}
    for model in models:
        rows = cells[model_mask(cells, model)].set_index(list(CELL_KEYS))[column]
        out[model] = rows.reindex(index)
    return pd.DataFrame(out, index=index)


def learned(cells: pd.DataFrame, models: list[Model]) -> pd.DataFrame:
    """Whether each model learned in each cell (:func:`per_cell` of ``learned``; a
    missing row counts as learned, as the floor's does)."""
    return per_cell(cells, models, "learned").fillna(True).astype(bool)


def by_family(models: list[Model]) -> dict[str, Model]:
    """The one model of each family that is not ssl (within one backbone's analysis)."""
    return {m.family: m for m in models if m.family != "ssl"}


def against(means, counted, runs, ssl: Model, others: list[Model]) -> dict:
    """The lowest mean test MAE over the cells among ``others``, and ``ssl`` against it
    on the cells where both learned."""
    strongest = min(others, key=lambda m: means[m].mean())
    both = counted[ssl] & counted[strongest]
    index = means.index[both]
    won = (means[ssl] < means[strongest]) & both
    return {
        "name": strongest.family,
        "its_mean_test_mae": float(means[strongest].mean()),
        "its_procedure_sd": procedure_sd(runs, strongest, means.index),
        "ssl_minus_it": difference(means, ssl, strongest, runs, index),
        "ssl_wins": int(won.sum()),
        "cells_counted": int(both.sum()),
        "_diffs": list((means[ssl] - means[strongest])[both]),
        # the runs behind the counted cells, for the pooled interval
        "_runs": (run_array(runs, index, ssl), run_array(runs, index, strongest)),
    }


def procedure_sd(runs: pd.DataFrame, model: Model, cells: pd.Index) -> float | None:
    """A boosting baseline's own noise over ``cells``: the root mean square, over its runs,
    of the spread of refits on inputs perturbed at their last kept digit
    (cdssl.baselines.procedure_noise); None for a model without one."""
    if "procedure_sd" not in runs:
        return None
    rows = runs[model_mask(runs, model)].set_index(list(CELL_KEYS))["procedure_sd"]
    rows = rows[rows.index.isin(cells)].dropna()
    return float(np.sqrt((rows**2).mean())) if len(rows) else None


def pooled_interval(diffs: list, runs: list) -> dict:
    """SSL minus each dataset's strongest, over every counted cell of every dataset: the
    hierarchical interval (cells side by side; a baseline repeated over SSL's pretraining
    seeds), or a bootstrap over cell differences when the levels differ."""
    runs = [r for r in runs if r[0].shape[1]]
    if not runs or len({a.shape[0] for a, _ in runs}) != 1:
        return bootstrap_mean(np.array(diffs))
    a = np.concatenate([a for a, _ in runs], axis=1)
    b = np.concatenate([np.broadcast_to(b, (a_.shape[0], *b.shape[1:])) for a_, b in runs], axis=1)
    return hierarchical_bootstrap(a, b)


def verdict(cells: pd.DataFrame, runs: pd.DataFrame, ssl: Model) -> dict:
    """Per dataset, the strongest answer that used no pretraining (lowest mean test MAE
    over the dataset's cells among the networks from scratch and the composition models)
    and SSL against it, on the cells where both learned; beside it the strongest
    baseline of all, the foundation model's features included; overall, SSL against
    each dataset's strongest, pooled over those cells."""
    families = by_family(models_of(cells))
    candidates = [families[f] for f in NO_PRETRAINING + PRETRAINED_ELSEWHERE if f in families]
    means, counted = per_cell(cells, [ssl, *candidates]), learned(cells, [ssl, *candidates])
    per_dataset: dict = {}
    pooled = {"without_pretraining": [[], 0, 0, []], "overall": [[], 0, 0, []]}
    for dataset in means.index.unique("dataset"):
        sub, ok = means.xs(dataset, drop_level=False), counted.xs(dataset, drop_level=False)
        present = [m for m in candidates if sub[m].notna().any()]
        without = [m for m in present if m.family in NO_PRETRAINING]
        if not without or not sub[ssl].notna().any():
            continue
        blocks = {
            "without_pretraining": against(sub, ok, runs, ssl, without),
            "overall": against(sub, ok, runs, ssl, present),
        }
        for key, block in blocks.items():
            pooled[key][0] += block.pop("_diffs")
            pooled[key][3].append(block.pop("_runs"))
            pooled[key][1] += block["ssl_wins"]
            pooled[key][2] += block["cells_counted"]
        first = blocks["without_pretraining"]
        ranked = sorted([*present, ssl], key=lambda m: sub[m].mean())
        per_dataset[dataset] = {
            "strongest_without_pretraining": first["name"],
            "its_mean_test_mae": first["its_mean_test_mae"],
            "its_procedure_sd": first["its_procedure_sd"],
            "ssl_mean_test_mae": float(sub[ssl].mean()),
            "ssl_minus_strongest": first["ssl_minus_it"],
            "ssl_wins": first["ssl_wins"],
            "cells_counted": first["cells_counted"],
            "cells": int(len(sub)),
            "strongest_baseline": blocks["overall"],
            "ranking": [{"family": m.family, "mean_test_mae": float(sub[m].mean())} for m in ranked],
        }
    overall = {k: {**pooled_interval(d, r), "ssl_wins": w, "cells_counted": n} for k, (d, w, n, r) in pooled.items()}
    return {
        "model": ssl.keys(),
        "per_dataset": per_dataset,
        "overall": overall["without_pretraining"],
        "overall_any": overall["overall"],
    }


def comparison(cells: pd.DataFrame, runs: pd.DataFrame, ssl: Model, other: Model) -> dict:
    """``ssl`` minus ``other`` on the cells where both learned, over all datasets and per
    dataset; against a scratch network also the cell-by-cell win count."""
    means, ok = per_cell(cells, [ssl, other]), learned(cells, [ssl, other])
    both = ok[ssl] & ok[other]
    index = means.index[both]
    out: dict = {
        "model": ssl.keys(),
        "other": other.keys(),
        "cell_means": difference(means, ssl, other, runs, index),
        "per_dataset": {
            d: difference(means, ssl, other, runs, index[index.get_level_values(0) == d])
            for d in index.unique("dataset")
        },
    }
    if other.family in SCRATCH:
        wins = means[ssl] < means[other]
        flags = per_cell(cells, [ssl, other], "flag").fillna("")
        out.update(
            ssl_wins=int((wins & both).sum()),
            cells_counted=int(both.sum()),
            cells_excluded=int((~both).sum()),
            # each excluded cell with why: which model did not learn, and how
            excluded=[
                {
                    "dataset": d,
                    "fraction": f,
                    "why": {m.family: flags.loc[(d, f), m] for m in (ssl, other) if flags.loc[(d, f), m]},
                }
                for d, f in means.index[~both]
            ],
            # the paper's count: every cell, models that did not learn included
            paper_count={
                "ssl_wins": int(wins.sum()),
                "cells": int(len(means)),
                "includes_models_that_did_not_learn": True,
            },
            wins_per_dataset={d: int((wins & both).xs(d).sum()) for d in means.index.unique("dataset")},
            # over the counted cells only: a pair of models that did not learn is no evidence
            pairs=paired_test(runs, ssl, other, index),
        )
    return out


def summarise(runs: pd.DataFrame, cells: pd.DataFrame) -> dict:
    """Every ssl model against every other model of the cells, and its verdict."""
    models = models_of(cells)
    networks = models_of(runs[runs["family"].isin(("ssl", *SCRATCH))])
    flagged = {m: int((~learned(cells, [m])[m]).sum()) for m in networks}
    ssl_models = [m for m in models if m.family == "ssl"]
    others = [m for m in models if m.family != "ssl"]
    return {
        "n_jobs": int(runs["family"].isin(("ssl", *SCRATCH)).sum()),
        "families": sorted(runs.loc[runs["family"].isin(("ssl", *SCRATCH)), "family"].unique()),
        "models": [m.keys() for m in networks],
        "cells": int(len(grid(cells))),
        "cells_flagged": [{"model": m.keys(), "n": n} for m, n in flagged.items()],
        "comparisons": [comparison(cells, runs, s, o) for s in ssl_models for o in others],
        "verdict": [verdict(cells, runs, s) for s in ssl_models],
    }
