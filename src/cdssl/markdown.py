"""The analysis in words: Markdown tables (one writer, :func:`table`) and the summary's sentences.

Numbers come from the statistics (:mod:`cdssl.statistics`) and the reference rows
(:mod:`cdssl.reference_rows`); a model's words come from :func:`cdssl.runs.label`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from .runs import Model, label, models_of, varying_axes
from .statistics import per_cell


def table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table: one header row, a rule, then ``rows`` (cells written with ``str``)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def mean_sem(mean: float, sem: float = float("nan")) -> str:
    """``0.1234 ± 0.0056`` (the standard error only where there is one)."""
    return f"{mean:.4f}" + (f" ± {sem:.4f}" if np.isfinite(sem) else "")


def format_diff(row: Mapping, key: str) -> str:
    """``+0.0123 [-0.0010, +0.0250]`` for a reference row's SSL minus ``key``, or "not counted"."""
    mean = row.get(f"diff_{key}", np.nan)
    if not np.isfinite(mean):
        return "not counted"
    return f"{mean:+.4f} [{row[f'diff_{key}_low']:+.4f}, {row[f'diff_{key}_high']:+.4f}]"


def reference_cells(row: Mapping, *, named: bool = False) -> list[str]:
    """A reference row's SSL, SL large and strongest means and SSL minus the two:
    ``[SSL, SL large, strongest, SSL - SL large, SSL - strongest]``; ``named`` writes the
    strongest baseline's name before its mean."""
    strongest = f"{row['strongest_name']} " if named else ""
    return [
        f"{row['ssl_mean']:.4f}",
        f"{row.get('sl_large_mean', np.nan):.4f}",
        f"{strongest}{row['strongest_mean']:.4f}",
        format_diff(row, "sl_large"),
        format_diff(row, "strongest"),
    ]


def _interval(c: Mapping) -> str:
    return f"{c['mean']:+.4g} (95% CI {c['ci_low']:+.4g} to {c['ci_high']:+.4g})"


def excluded_text(excluded: list[dict]) -> str:
    """``2 excluded: SL (Table 3) not below the mean predictor in 1, SSL (pretrained)
    predictions nearly constant in 1``: how many cells left a count, and why."""
    if not excluded:
        return "0 excluded"
    reasons: dict[str, int] = {}
    for cell in excluded:
        for family, flag in cell["why"].items():
            why = f"{label(Model(family))} {flag.split(' (')[0]}"
            reasons[why] = reasons.get(why, 0) + 1
    return f"{len(excluded)} excluded, a model did not learn: " + ", ".join(f"{w} in {n}" for w, n in reasons.items())


def _noise(sd: float | None) -> str:
    """A boosting baseline's procedure noise, as the verdict quotes it beside its MAE."""
    if sd is None or not np.isfinite(sd):
        return ""
    return f", its own procedure noise {sd:.2g} per run (refits on inputs perturbed at the rounding step)"


def summary_lines(summary: dict) -> list[str]:
    """The summary in words: what a log or a README quotes."""
    models = [Model(**m) for m in summary["models"]]
    axes = varying_axes(models)
    flagged = ", ".join(f"{label(Model(**f['model']), axes)} {f['n']}" for f in summary["cells_flagged"])
    lines = [
        f"{summary['cells']} cells; did not learn (not below the mean predictor, or nearly constant): {flagged}",
        "intervals: 95% percentile bootstrap resampling pretraining seeds, then cells, then fine-tuning seeds",
    ]
    for comp in summary["comparisons"]:
        c = comp["cell_means"]
        name = f"{label(Model(**comp['model']), axes)} vs {label(Model(**comp['other']), axes)}"
        line = (
            f"{name}: mean difference {_interval(c)} over {c['n']} cells, Wilcoxon on cell means p = {c['p_value']:.3g}"
        )
        if "ssl_wins" in comp:
            p = comp["pairs"]
            line += (
                f"; SSL lower in {comp['ssl_wins']} of {comp['cells_counted']} counted cells "
                f"({excluded_text(comp['excluded'])}); Wilcoxon over their {p['n_pairs']} seed pairs p = "
                f"{p['p_value']:.3g}; paper-style count, models that did not learn included: "
                f"{comp['paper_count']['ssl_wins']} of {comp['paper_count']['cells']}"
            )
        lines.append(line)
    for v in summary["verdict"]:
        ssl = label(Model(**v["model"]), axes)
        for dataset, d in v["per_dataset"].items():
            lines.append(
                f"verdict {dataset}: the strongest answer without pretraining is {d['strongest_without_pretraining']} "
                f"(mean test MAE {d['its_mean_test_mae']:.4g}{_noise(d.get('its_procedure_sd'))}; {ssl} "
                f"{d['ssl_mean_test_mae']:.4g}); {ssl} minus it "
                f"{_interval(d['ssl_minus_strongest'])}, {ssl} lower in "
                f"{d['ssl_wins']} of {d['cells_counted']} counted cells ({d['cells']} in all)"
            )
            b = d.get("strongest_baseline")
            if b and b["name"] != d["strongest_without_pretraining"]:
                lines.append(
                    f"verdict {dataset}, a foundation model's features included: the strongest baseline is "
                    f"{b['name']} (mean test MAE {b['its_mean_test_mae']:.4g}{_noise(b.get('its_procedure_sd'))}); "
                    f"{ssl} minus it "
                    f"{_interval(b['ssl_minus_it'])}, {ssl} lower in {b['ssl_wins']} of "
                    f"{b['cells_counted']} counted cells"
                )
    for h in summary.get("hybrid", []):
        name = label(Model(**h["model"]), axes)
        for dataset, d in h["per_dataset"].items():
            parts = [f"what pretraining adds, {dataset}: {name} (mean test MAE {d['hybrid_mean_test_mae']:.4g})"]
            s = d.get("hybrid_minus_strongest")
            if s:
                parts.append(
                    f"minus the strongest answer without pretraining ({s['name']}) {_interval(s)}, lower in "
                    f"{s['lower_in']} of {s['cells_counted']} counted cells"
                )
            if "hybrid_minus_random_init" in d:
                r = d["hybrid_minus_random_init"]
                parts.append(
                    f"minus its random-init control {_interval(r)} (lower in {r['lower_in']} of {r['cells_counted']})"
                )
            if "ssl_minus_hybrid" in d:
                c = d["ssl_minus_hybrid"]
                diff = _interval(c) if c["cells_counted"] else "not counted (a model did not learn)"
                parts.append(f"the fine-tuned SSL network minus it {diff}")
            lines.append("; ".join(parts))
    lines += choice_lines(summary.get("choice") or {})
    return lines


def choice_lines(choice: dict) -> list[str]:
    """What a user should take, per dataset (cdssl.verdicts.choice), in words."""
    lines = []
    for dataset, d in choice.get("per_dataset", {}).items():
        uses = [
            f"fraction {f['fraction']:g}: {_model_words(f['use'], f['use_family'])} (chosen in {f['seeds_chosen']} of "
            f"{f['seeds']} seeds; the best's mean test MAE {f['best_mean_test_mae']:.4g}, the blend's "
            f"{f['blend_mean_test_mae']:.4g})"
            for f in d["per_fraction"]
        ]
        lines.append(f"the model to use, {dataset}, chosen on validation: " + "; ".join(uses))
        weights = d.get("weights") or []
        if weights:
            lines.append(
                f"the blend's weights, {dataset} (mean over {weights[0]['splits']} splits; splits weighting it): "
                + ", ".join(f"{w['label']} {w['mean']:.2f} ({w['weighted_in']})" for w in weights)
                + "; every other model 0"
            )
        for family in ("best", "blend"):
            s = d.get(f"{family}_minus_strongest")
            if s:
                lines.append(
                    f"{label(Model(family))}, {dataset}: minus the strongest answer without pretraining "
                    f"({s['name']}) {_interval(s)}, lower in {s['lower_in']} of {s['cells_counted']} counted cells"
                )
    return lines


def _model_words(chosen: str, family: str) -> str:
    """A chosen model in words: its family's, and the run it came from (``ssl/seed_0/sigma_0.5/pool_size_all``)."""
    words = label(Model(family))
    return words if chosen == family else f"{words} [{chosen}]"


def flag_text(cells: pd.DataFrame, axes: Sequence[str]) -> pd.Series:
    """Per cell, why each network that did not learn is flagged ("-" when none)."""
    networks = cells[cells["family"].isin(("ssl", "sl", "sl_large")) & (cells["flag"].fillna("") != "")]
    text = {}
    for row in networks.to_dict("records"):
        key = (row["dataset"], row["fraction"])
        text.setdefault(key, []).append(f"{label(Model.of(row), axes)} {row['flag']}")
    return pd.Series({k: "; ".join(v) for k, v in text.items()}, dtype=object)


def results_markdown(cells: pd.DataFrame, summary: dict) -> str:
    """The fine-tuning results as the README and the report quote them: per dataset the
    cell table (mean ± standard error over seeds, the lowest mean of a row in bold; the
    mean predictor never bold) and the summary's sentences."""
    models = models_of(cells)
    axes = varying_axes(models)
    flags = flag_text(cells, axes)
    out = []
    for dataset, sub in cells.groupby("dataset"):
        here = models_of(sub)
        means, sems = per_cell(sub, here), per_cell(sub, here, "sem")
        units = sub["units"].iloc[0] if "units" in sub else ""
        rows = []
        for key in means.index:
            best = min((means.loc[key, m] for m in here if m.family != "mean_predictor"), default=np.nan)
            texts = [mean_sem(means.loc[key, m], sems.loc[key, m]) for m in here]
            texts = [f"**{t}**" if means.loc[key, m] == best else t for t, m in zip(texts, here, strict=True)]
            rows.append([f"{key[1]:g}", *texts, flags.get(key, "-")])
        out += [f"### {dataset}" + (f" (test MAE, {units})" if units else ""), ""]
        out.append(table(["fraction", *(label(m, axes) for m in here), "flagged"], rows))
    out += [f"- {line}" for line in summary_lines(summary)]
    return "\n".join(out) + "\n"


def verdict_line(summary: dict) -> str:
    """Per dataset and ssl model, SSL minus the strongest answer without pretraining, in
    one line (the console's)."""
    axes = varying_axes([Model(**m) for m in summary["models"]])
    parts = []
    for v in summary["verdict"]:
        for dataset, d in v["per_dataset"].items():
            mean = d["ssl_minus_strongest"]["mean"]
            diff = f"{mean:+.4g}" if np.isfinite(mean) else "not counted (a model did not learn)"
            ssl = label(Model(**v["model"]), axes)
            parts.append(f"{dataset}: {ssl} minus {d['strongest_without_pretraining']} {diff}")
    return "; ".join(parts)
