"""One ssl model beside its references, per cell and over all fractions: the rows the budget and backbone tables share.

The references are SL large, the strongest answer without pretraining and the strongest
of all (a foundation model's features included), as the model's verdict names them
(:func:`cdssl.verdicts.verdict`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .intervals import NAN_INTERVAL, difference
from .runs import Model, models_of
from .statistics import by_family, learned, per_cell

ALL = "all"  # the fraction column of rows over every fraction


def _verdict_of(summary: dict, ssl: Model) -> dict | None:
    return next((v for v in summary["verdict"] if Model(**v["model"]) == ssl), None)


def _compare(means: pd.DataFrame, ok: pd.DataFrame, runs: pd.DataFrame, ssl: Model, other: Model) -> dict:
    both = means.index[ok[ssl] & ok[other]]
    if both.empty:
        return dict(NAN_INTERVAL)
    return difference(means, ssl, other, runs, both)


def reference_rows(runs: pd.DataFrame, cells: pd.DataFrame, summary: dict, ssl: Model) -> list[dict]:
    """One row per (dataset, fraction) and per dataset over all fractions (fraction
    :data:`ALL`): the ssl model's mean test MAE beside SL large's and the strongest
    baselines' (the verdict's strongest answer without pretraining, and of all), and SSL
    minus each with its 95% interval (one cell: resampling seeds; all: pretraining seeds,
    cells, fine-tuning seeds). Cells where either model did not learn are left out of a
    difference. Each row carries the ssl model's keys."""
    v = _verdict_of(summary, ssl)
    if v is None:
        return []
    families = by_family(models_of(cells))
    rows = []
    for dataset, sub in cells.groupby("dataset"):
        d = v["per_dataset"].get(dataset)
        if d is None:
            continue
        names = {"sl_large": "sl_large", "strongest": d["strongest_without_pretraining"]}
        names["strongest_any"] = d["strongest_baseline"]["name"]
        refs = {key: families[name] for key, name in names.items() if name in families}
        models = [ssl, *dict.fromkeys(refs.values())]
        means, sems, ok = per_cell(sub, models), per_cell(sub, models, "sem"), learned(sub, models)
        groups = [(f"{key[1]:g}", [key]) for key in means.index] + [(ALL, list(means.index))]
        for fraction, keys in groups:
            one = len(keys) == 1
            row = {"dataset": dataset, "fraction": fraction, **ssl.keys(), "units": sub["units"].iloc[0]}
            row |= {
                "ssl_mean": float(means.loc[keys, ssl].mean()),
                "ssl_sem": float(sems.loc[keys[0], ssl]) if one else np.nan,
            }
            for key, model in refs.items():
                row[f"{key}_name"] = model.family
                row[f"{key}_mean"] = float(means.loc[keys, model].mean())
                row[f"{key}_sem"] = float(sems.loc[keys[0], model]) if one else np.nan
                c = _compare(means.loc[keys], ok.loc[keys], runs, ssl, model)
                row[f"diff_{key}"], row[f"diff_{key}_low"], row[f"diff_{key}_high"] = (
                    c["mean"],
                    c["ci_low"],
                    c["ci_high"],
                )
            rows.append(row)
    return rows
