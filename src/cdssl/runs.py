"""The results table: one row per run, keyed by explicit columns, and the one name of a model.

Every fine-tuning run (a network) and every answer without a network of ours (a
baseline: the mean predictor, the composition models, the foundation model's features)
is one row of one long table. What a row is, is said by its key columns, never by a name
built from them:

- the cell: ``dataset``, ``fraction``;
- the run within the cell: ``seed`` (fine-tuning) and ``pretrain_seed`` (the pretraining
  run an ssl network started from; a bootstrap level, pooled within a model);
- the model (:data:`MODEL_KEYS`): ``family`` (``ssl``, ``sl``, ``sl_large`` or a
  baseline's name), ``backbone``, and for ssl the encoder's ``sigma``, ``budget``,
  pretraining ``pool`` (the dataset) and ``pool_size`` (crystals; empty: all of it); a
  key that does not apply is empty.

Cells, comparisons, figures and documents group and select by these columns
(:func:`model_mask`); the words shown for a model come from :func:`label` alone. A new
axis is one more key column here, filled where the runs are collected.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

CELL_KEYS = ("dataset", "fraction")
RUN_KEYS = ("seed", "pretrain_seed")
MODEL_KEYS = ("family", "backbone", "sigma", "budget", "pool", "pool_size")
KEYS = (*CELL_KEYS, *RUN_KEYS, *MODEL_KEYS)

# the networks of ours, in the order tables show them
NETWORKS = ("ssl", "sl", "sl_large")
# the answers without a network of ours, by family: the key of its test MAE in a run's
# metrics (the mean predictor and the element-fraction ridge, scored on each network's
# split: cdssl.finetune) or in a split's baseline metrics (cdssl.baselines)
BASELINES = {
    "mean_predictor": "test_mae_mean_predictor",
    "composition": "test_mae_composition",
    "magpie_ridge": "test_mae_magpie_ridge",
    "magpie_boosting": "test_mae_magpie_boosting",
    "magpie_structure_ridge": "test_mae_magpie_structure_ridge",
    "magpie_structure_boosting": "test_mae_magpie_structure_boosting",
    "chgnet_ridge": "test_mae_chgnet_ridge",
    "chgnet_boosting": "test_mae_chgnet_boosting",
}
# what a frozen encoder adds to the strongest descriptors (cdssl.hybrid), and its control
HYBRIDS = ("hybrid", "hybrid_random")
# the families whose model is keyed by an encoder (its sigma, budget, pool, pool size, pretrain_seed)
ENCODED = ("ssl", *HYBRIDS)
# what a user should take (cdssl.blend): the validation-best of a cell's models or their
# blend; both draw on every other family, so no comparison counts them as rivals
CHOSEN = ("best", "blend")
FAMILIES = (*CHOSEN, *NETWORKS, *HYBRIDS, *BASELINES)
WORDS = {
    "ssl": "SSL (pretrained)",
    "sl": "SL (Table 3)",
    "sl_large": "SL large (Table 2)",
    "mean_predictor": "mean predictor",
    "composition": "element-fraction ridge",
    "magpie_ridge": "Magpie ridge",
    "magpie_boosting": "Magpie boosting",
    "magpie_structure_ridge": "Magpie+structure ridge",
    "magpie_structure_boosting": "Magpie+structure boosting",
    "chgnet_ridge": "CHGNet ridge",
    "chgnet_boosting": "CHGNet boosting",
    "hybrid": "Hybrid (Magpie+structure + pretrained PCs)",
    "hybrid_random": "Hybrid, random-init encoder",
    "best": "Best on validation",
    "blend": "Blend (validation weights)",
}
# the ssl axes a label names when they tell one model of a table from another
SSL_AXES = ("sigma", "budget", "pool", "pool_size")


def _value(value: Any) -> Any:
    """A key's value as one Python type: empty (None), an int, a float or a string."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


@dataclass(frozen=True)
class Model:
    """One model of a cell: its key columns (:data:`MODEL_KEYS`)."""

    family: str
    backbone: str | None = None
    sigma: float | None = None
    budget: int | None = None
    pool: str | None = None
    pool_size: int | None = None

    @classmethod
    def of(cls, row: Mapping) -> Model:
        values = {f.name: _value(row.get(f.name)) for f in fields(cls)}
        for key, kind in (("sigma", float), ("budget", int), ("pool_size", int)):
            if values[key] is not None:
                values[key] = kind(values[key])
        return cls(**values)

    def keys(self) -> dict[str, Any]:
        return asdict(self)

    def order(self) -> tuple:
        """Tables' order: the families as :data:`FAMILIES` lists them, then sigma, budget, pool."""
        rank = FAMILIES.index(self.family) if self.family in FAMILIES else len(FAMILIES)
        return (rank, self.family, self.sigma or 0.0, self.budget or 0, self.pool or "", self.pool_size or 0)


def label(model: Model, varying: Iterable[str] = ()) -> str:
    """A model in words, for a legend or a table header: its family's words, and for ssl
    the axes among ``varying`` that tell it from the table's other ssl models
    (``SSL (pretrained; sigma 0.3 A, 100 epochs)``)."""
    words = WORDS.get(model.family, model.family.replace("_", " "))
    tags = encoder_tags(model, varying) if model.family in ENCODED else []
    if not tags:
        return words
    return f"{words.removesuffix(')')}; {', '.join(tags)})" if words.endswith(")") else f"{words} ({', '.join(tags)})"


def encoder_tags(model: Model, varying: Iterable[str]) -> list[str]:
    """What tells a pretrained encoder from the others beside it: the axes among
    ``varying`` that it has (``["sigma 0.3 A", "100 epochs"]``)."""
    varying = set(varying)
    words = {
        "sigma": model.sigma is not None and f"sigma {model.sigma:g} A",
        "budget": model.budget is not None and f"{model.budget} epochs",
        "pool": model.pool is not None and f"pool {model.pool}",
        "pool_size": "the whole pool" if model.pool_size is None else f"pool of {model.pool_size}",
    }
    return [words[axis] for axis in SSL_AXES if axis in varying and words[axis]]


def varying_axes(models: Iterable[Model]) -> tuple[str, ...]:
    """The ssl axes with more than one value among ``models`` (or a budget at all: a
    budget's model always says its epochs)."""
    ssl = [m for m in models if m.family == "ssl"]
    return tuple(
        axis
        for axis in SSL_AXES
        if len({getattr(m, axis) for m in ssl}) > 1 or (axis == "budget" and any(m.budget is not None for m in ssl))
    )


def models_of(frame: pd.DataFrame, family: str | Sequence[str] | None = None) -> list[Model]:
    """The distinct models of ``frame`` (rows with :data:`MODEL_KEYS`), in table order;
    only those of ``family`` (one or several) when given."""
    found = {Model.of(row) for row in frame[[k for k in MODEL_KEYS if k in frame]].to_dict("records")}
    if family is not None:
        wanted = {family} if isinstance(family, str) else set(family)
        found = {m for m in found if m.family in wanted}
    return sorted(found, key=Model.order)


def model_mask(frame: pd.DataFrame, model: Model) -> pd.Series:
    """The rows of ``frame`` that belong to ``model`` (an empty key matches an empty cell)."""
    mask = pd.Series(True, index=frame.index)
    for key, value in model.keys().items():
        column = frame[key] if key in frame else pd.Series(np.nan, index=frame.index)
        mask &= column.isna() if value is None else (column == value)
    return mask


def runs_table(
    metrics: Sequence[Mapping],
    baselines: Sequence[Mapping] = (),
    *,
    backbone: str | None = None,
    pool: str | None = None,
) -> pd.DataFrame:
    """The long table from the runs' metrics (each fine-tuning run's metrics.json) and
    the splits' baseline metrics: one row per network run, one per (split, baseline).

    ``backbone`` is the networks' architecture and ``pool`` the dataset their encoders
    were pretrained on (ssl rows); both key the models but are not in a run's metrics."""
    runs = pd.DataFrame([dict(m) for m in metrics])
    runs["family"] = runs.pop("mode")
    runs["backbone"] = backbone
    encoded = runs["family"].isin(ENCODED)
    runs["pool"] = np.where(encoded, pool, None) if pool is not None else None
    encoder_keys = ["sigma", "budget", "pretrain_seed", "pool_size"]
    for key in encoder_keys:
        if key not in runs:
            runs[key] = np.nan
    runs.loc[~encoded, encoder_keys] = np.nan
    split = list(CELL_KEYS) + ["seed"]
    units = runs.groupby("dataset")["units"].first() if "units" in runs else None
    # one value per split: the first network run of it states the answers scored on it
    sources = [runs[runs["family"].isin(NETWORKS)].drop_duplicates(split)]
    if baselines:
        sources.append(pd.DataFrame([dict(b) for b in baselines]))
    rows = []
    for source in sources:
        for family, column in BASELINES.items():
            if column in source:
                part = source[split + [column]].rename(columns={column: "test_mae"}).assign(family=family)
                params = f"{family}_params"
                if family.endswith("_boosting") and params in source:
                    # the procedure's own noise (cdssl.baselines.procedure_noise), per run
                    part["procedure_sd"] = [
                        p.get("procedure_sd", np.nan) if isinstance(p, dict) else np.nan for p in source[params]
                    ]
                rows.append(part)
    measured = [c for c in runs if c not in KEYS and c not in BASELINES.values()]
    table = pd.concat([runs[list(KEYS) + [c for c in measured if c in runs]], *rows], ignore_index=True)
    if units is not None:
        table["units"] = table["dataset"].map(units)
    table["fraction"] = table["fraction"].astype(float)
    return sort_runs(table)


def sort_runs(table: pd.DataFrame) -> pd.DataFrame:
    """Cell by cell, model by model (table order), then seed and pretraining seed: every
    mean sums its runs in one order."""
    order = table.apply(lambda r: Model.of(r).order(), axis=1)
    table = table.assign(_order=order)
    keys = ["dataset", "fraction", "_order", *(k for k in RUN_KEYS if k in table)]
    return table.sort_values(keys, kind="stable", na_position="first").drop(columns="_order").reset_index(drop=True)


def collect_runs(
    metric_files: Sequence[str | Path],
    baseline_files: Sequence[str | Path] = (),
    *,
    backbone: str | None = None,
    pool: str | None = None,
    run_keys: Mapping[str, Mapping] | None = None,
) -> pd.DataFrame:
    """:func:`runs_table` from metrics.json files; ``run_keys``: per file path, keys its runs lack."""
    read = []
    for f in metric_files:
        metrics = json.loads(Path(f).read_text())
        # a hybrid or blend job's file holds one run per family (cdssl.hybrid, cdssl.blend)
        read.extend(run | dict((run_keys or {}).get(str(f), {})) for run in metrics.get("runs", [metrics]))
    base = [json.loads(Path(f).read_text()) for f in baseline_files]
    return runs_table(read, base, backbone=backbone, pool=pool)


def read_table(path: str | Path) -> pd.DataFrame:
    """jobs.csv or cells.csv as written: the fraction a number, empty keys empty."""
    return pd.read_csv(path, dtype={"family": str, "backbone": object, "pool": object})
