"""The verdicts: per dataset, the strongest answer without pretraining and SSL against it,
what each hybrid adds beyond composition and structure, and the summary that holds them.

Built on the cells table and its per-cell views (:mod:`cdssl.statistics`); every interval
comes from :mod:`cdssl.intervals`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .intervals import bootstrap_mean, difference, hierarchical_bootstrap, run_array
from .runs import CELL_KEYS, CHOSEN, HYBRIDS, Model, model_mask, models_of
from .statistics import (
    NO_PRETRAINING,
    PRETRAINED_ELSEWHERE,
    SCRATCH,
    by_family,
    comparison,
    grid,
    learned,
    per_cell,
)


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


def _same_encoder(a: Model, b: Model) -> bool:
    return (a.backbone, a.sigma, a.budget, a.pool, a.pool_size) == (b.backbone, b.sigma, b.budget, b.pool, b.pool_size)


def hybrid_verdict(cells: pd.DataFrame, runs: pd.DataFrame, hybrid: Model) -> dict:
    """What one pretrained encoder adds beyond composition and structure, per dataset:
    the hybrid minus the strongest answer without pretraining, minus its random-init
    control (the same descriptors, boosting and split: the encoder's pretraining alone),
    and the fine-tuned network of the same encoder minus the hybrid; each on the cells
    where both models learned, with its hierarchical interval."""
    models = models_of(cells)
    control = next((m for m in models if m.family == "hybrid_random" and _same_encoder(m, hybrid)), None)
    ssl = next((m for m in models if m.family == "ssl" and _same_encoder(m, hybrid)), None)
    families = by_family(models)
    candidates = [families[f] for f in NO_PRETRAINING if f in families]
    per_dataset: dict = {}
    for dataset in cells["dataset"].unique():
        sub = cells[cells["dataset"] == dataset]
        present = [m for m in candidates if model_mask(sub, m).any()]
        block: dict = {}
        if present:
            means, ok = per_cell(sub, [hybrid, *present]), learned(sub, [hybrid, *present])
            found = against(means, ok, runs, hybrid, present)
            block["hybrid_minus_strongest"] = {
                "name": found["name"],
                "its_mean_test_mae": found["its_mean_test_mae"],
                **found["ssl_minus_it"],
                "lower_in": found["ssl_wins"],
                "cells_counted": found["cells_counted"],
            }
        for key, (a, b) in {
            "hybrid_minus_random_init": (hybrid, control),
            "ssl_minus_hybrid": (ssl, hybrid),
        }.items():
            if a is not None and b is not None:
                means, ok = per_cell(sub, [a, b]), learned(sub, [a, b])
                both = ok[a] & ok[b]
                block[key] = {
                    **difference(means, a, b, runs, means.index[both]),
                    "lower_in": int(((means[a] < means[b]) & both).sum()),
                    "cells_counted": int(both.sum()),
                }
        block["hybrid_mean_test_mae"] = float(per_cell(sub, [hybrid])[hybrid].mean())
        per_dataset[dataset] = block
    return {"model": hybrid.keys(), "per_dataset": per_dataset}


def choice(cells: pd.DataFrame, runs: pd.DataFrame) -> dict:
    """What a user should take (cdssl.blend), per dataset: for each fraction the model the
    validation split chose in most seeds (``use``, ties to the first label) with every
    seed's choice, the best's and the blend's mean test MAE; and the best and the blend
    each minus the strongest answer without pretraining, with their intervals."""
    models = models_of(cells)
    chosen = {m.family: m for m in models if m.family in CHOSEN}
    if "best" not in chosen:
        return {}
    families = by_family(models)
    candidates = [families[f] for f in NO_PRETRAINING if f in families]
    best_runs = runs[runs["family"] == "best"]
    per_dataset: dict = {}
    for dataset in cells["dataset"].unique():
        sub = cells[cells["dataset"] == dataset]
        means = per_cell(sub, list(chosen.values()))
        block: dict = {"per_fraction": []}
        for fraction, part in best_runs[best_runs["dataset"] == dataset].groupby("fraction"):
            counts = part.groupby(["chosen", "chosen_family"]).size().reset_index(name="n")
            top = counts.sort_values(["n", "chosen"], ascending=[False, True], kind="stable").iloc[0]
            block["per_fraction"].append(
                {
                    "fraction": float(fraction),
                    "use": top["chosen"],
                    "use_family": top["chosen_family"],
                    "seeds_chosen": int(top["n"]),
                    "seeds": int(len(part)),
                    "chosen_per_seed": dict(zip(part["seed"].astype(int).astype(str), part["chosen"], strict=True)),
                    **{f"{f}_mean_test_mae": float(means.loc[(dataset, fraction), m]) for f, m in chosen.items()},
                }
            )
        block["weights"] = mean_weights(runs[(runs["family"] == "blend") & (runs["dataset"] == dataset)])
        present = [m for m in candidates if model_mask(sub, m).any()]
        for family, model in chosen.items():
            if present:
                found = against(per_cell(sub, [model, *present]), learned(sub, [model, *present]), runs, model, present)
                block[f"{family}_minus_strongest"] = {
                    "name": found["name"],
                    "its_mean_test_mae": found["its_mean_test_mae"],
                    **found["ssl_minus_it"],
                    "lower_in": found["ssl_wins"],
                    "cells_counted": found["cells_counted"],
                }
        per_dataset[dataset] = block
    return {"per_dataset": per_dataset}


def mean_weights(blends: pd.DataFrame) -> list[dict]:
    """Each candidate's mean weight in ``blends`` (a dataset's blend rows; 0 where it got
    none or was left out) and the number of splits that gave it weight, heaviest first."""
    weights = [r["weights"] for r in blends.get("settings", pd.Series(dtype=object)) if isinstance(r, dict)]
    labels = sorted({label for w in weights for label in w})
    rows = [
        {"label": label, "mean": float(np.mean([w.get(label, 0.0) for w in weights])), "splits": len(weights)}
        | {"weighted_in": sum(label in w for w in weights)}
        for label in labels
    ]
    return sorted(rows, key=lambda r: (-r["mean"], r["label"]))


def summarise(runs: pd.DataFrame, cells: pd.DataFrame) -> dict:
    """Every ssl model against every other model of the cells (a hybrid: the one of its
    own encoder), its verdict, and what each hybrid adds."""
    models = models_of(cells)
    networks = models_of(runs[runs["family"].isin(("ssl", *SCRATCH))])
    flagged = {m: int((~learned(cells, [m])[m]).sum()) for m in networks}
    ssl_models = [m for m in models if m.family == "ssl"]
    others = [m for m in models if m.family not in ("ssl", *CHOSEN)]
    pairs = [(s, o) for s in ssl_models for o in others if o.family not in HYBRIDS or _same_encoder(s, o)]
    return {
        "n_jobs": int(runs["family"].isin(("ssl", *SCRATCH)).sum()),
        "families": sorted(runs.loc[runs["family"].isin(("ssl", *SCRATCH)), "family"].unique()),
        "models": [m.keys() for m in networks],
        "cells": int(len(grid(cells))),
        "cells_flagged": [{"model": m.keys(), "n": n} for m, n in flagged.items()],
        "comparisons": [comparison(cells, runs, s, o) for s, o in pairs],
        "verdict": [verdict(cells, runs, s) for s in ssl_models],
        "hybrid": [hybrid_verdict(cells, runs, h) for h in models if h.family == "hybrid"],
        "choice": choice(cells, runs),
    }
