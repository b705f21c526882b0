"""Aggregation maths on hand-made inputs, probes on a known linear relation, figures."""

import json
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from cdssl.aggregate import write_aggregates
from cdssl.figures import figure3, figure4
from cdssl.intervals import bootstrap_mean, paired_test
from cdssl.markdown import results_markdown, summary_lines
from cdssl.probes import repeated_probe, ridge_probe
from cdssl.runs import Model, read_table, runs_table
from cdssl.statistics import cell_table, per_cell
from cdssl.verdicts import summarise

SSL, SL, SL_LARGE = Model("ssl"), Model("sl"), Model("sl_large")


def _runs(jobs: pd.DataFrame) -> pd.DataFrame:
    """The long runs table of metrics rows as runs write them."""
    return runs_table(jobs.to_dict("records"))


def _comparison(summary: dict, model: Model, other: Model) -> dict:
    """The summary's comparison of ``model`` with ``other``, found by their keys."""
    return next(c for c in summary["comparisons"] if Model(**c["model"]) == model and Model(**c["other"]) == other)


def _verdict(summary: dict, model: Model = SSL) -> dict:
    return next(v for v in summary["verdict"] if Model(**v["model"]) == model)


def _jobs():
    rows = []
    # dataset A: SSL better at both fractions; dataset B: SSL worse at 0.1, equal means at 0.2
    values = {
        ("A", 0.1, "ssl"): [1.0, 2.0, 3.0],
        ("A", 0.1, "sl"): [2.0, 3.0, 4.0],
        ("A", 0.2, "ssl"): [0.5, 0.5, 0.8],
        ("A", 0.2, "sl"): [1.0, 1.5, 2.0],
        ("B", 0.1, "ssl"): [5.0, 6.0, 7.0],
        ("B", 0.1, "sl"): [4.0, 4.5, 5.0],
        ("B", 0.2, "ssl"): [3.0, 3.0, 3.0],
        ("B", 0.2, "sl"): [2.0, 3.0, 4.0],
    }
    for (dataset, fraction, mode), maes in values.items():
        for seed, mae in enumerate(maes):
            rows.append(
                {
                    "dataset": dataset,
                    "fraction": fraction,
                    "seed": seed,
                    "mode": mode,
                    "test_mae": mae,
                    "units": "eV",
                    "test_mae_mean_predictor": 10.0 + seed,
                    "test_mae_composition": 8.0,
                }
            )
    return pd.DataFrame(rows)


def test_cells_means_standard_errors_and_wins():
    cells = cell_table(_runs(_jobs()))
    # one row per cell and model, keyed by columns: the networks and the two baselines
    assert len(cells) == 4 * 4 and set(cells["family"]) == {"ssl", "sl", "mean_predictor", "composition"}
    means, sems = per_cell(cells, [SSL, SL]), per_cell(cells, [SSL, SL], "sem")
    assert means.loc[("A", 0.1), SSL] == pytest.approx(2.0) and means.loc[("A", 0.1), SL] == pytest.approx(3.0)
    assert sems.loc[("A", 0.1), SSL] == pytest.approx(1.0 / np.sqrt(3))  # std (ddof=1) of 1,2,3 is 1
    summary = summarise(_runs(_jobs()), cells)
    comp = _comparison(summary, SSL, SL)
    assert comp["wins_per_dataset"] == {"A": 2, "B": 0}  # B 0.2: a tie is not a win
    assert not [c for c in summary["comparisons"] if c["other"]["family"] == "sl_large"]


def test_paired_wilcoxon_matches_scipy_and_summary_counts():
    jobs = _jobs()
    runs = _runs(jobs)
    result = paired_test(runs, SSL, SL)
    ssl = jobs[jobs["mode"] == "ssl"]["test_mae"].to_numpy()
    sl = jobs[jobs["mode"] == "sl"]["test_mae"].to_numpy()
    ref = stats.wilcoxon(ssl, sl)
    assert result["n_pairs"] == 12 and result["p_value"] == pytest.approx(ref.pvalue)
    assert result["lower_pairs"] == int((ssl < sl).sum())
    summary = summarise(runs, cell_table(runs))
    comp = _comparison(summary, SSL, SL)
    assert comp["ssl_wins"] == 2 and comp["cells_counted"] == 4 and comp["cells_excluded"] == 0
    assert comp["wins_per_dataset"] == {"A": 2, "B": 0}
    # dataset A: SSL lower in all 6 pairs -> exact two-sided p = 2 / 2**6
    assert comp["pairs"]["p_value"] == pytest.approx(ref.pvalue)
    # on cell means: differences -1, -0.9, +1.5, 0 -> the zero is dropped (wilcox)
    cell = comp["cell_means"]
    assert cell["n"] == 4 and cell["mean"] == pytest.approx((-1 - 0.9 + 1.5 + 0) / 4)
    assert cell["p_value"] == pytest.approx(stats.wilcoxon([-1, -0.9, 1.5]).pvalue)
    assert _comparison(summary, SSL, Model("mean_predictor"))["cell_means"]["mean"] < 0
    assert any(line.startswith("SSL (pretrained) vs SL (Table 3):") for line in summary_lines(summary))


def test_a_cell_whose_model_predicts_a_constant_is_flagged_and_not_counted():
    jobs = _jobs()
    # at (B, 0.1) SL scores what the mean predictor scores (a constant answer), and SSL
    # is worse still: the cell is flagged for both and leaves the SSL-vs-SL count
    at = (jobs["dataset"] == "B") & (jobs["fraction"] == 0.1)
    jobs.loc[at, "test_mae_mean_predictor"] = jobs.loc[at & (jobs["mode"] == "sl"), "test_mae"].to_numpy().repeat(2)
    # at (A, 0.2) SSL wins but SL equals the mean predictor: a "win" over a constant
    at = (jobs["dataset"] == "A") & (jobs["fraction"] == 0.2)
    jobs.loc[at, "test_mae_mean_predictor"] = 1.5
    runs = _runs(jobs)
    cells = cell_table(runs)
    beats = per_cell(cells, [SSL, SL], "beats_mean")
    assert not beats.loc[("B", 0.1), SL] and not beats.loc[("B", 0.1), SSL]
    assert beats.loc[("A", 0.2), SSL] and not beats.loc[("A", 0.2), SL]
    assert per_cell(cells, [SL], "flag").loc[("A", 0.2), SL] == "not below the mean predictor"
    assert "| 0.2 |" in results_markdown(cells, summarise(runs, cells))
    assert "SL (Table 3) not below the mean predictor |" in results_markdown(cells, summarise(runs, cells))
    comp = _comparison(summarise(runs, cells), SSL, SL)
    assert comp["paper_count"] == {"ssl_wins": 2, "cells": 4, "includes_models_that_did_not_learn": True}
    assert comp["ssl_wins"] == 1 and comp["cells_counted"] == 2 and comp["cells_excluded"] == 2
    # each excluded cell says which model did not learn, and how
    assert [(c["dataset"], c["fraction"], c["why"]) for c in comp["excluded"]] == [
        ("A", 0.2, {"sl": "not below the mean predictor"}),
        ("B", 0.1, {"ssl": "not below the mean predictor", "sl": "not below the mean predictor"}),
    ]
    # the paired test over the counted cells' seeds only
    assert comp["pairs"]["n_pairs"] == 2 * 3


def test_the_bootstrap_interval_covers_a_known_difference():
    rng = np.random.default_rng(1)
    covered = 0
    for trial in range(200):
        diffs = -0.3 + rng.normal(size=25)
        ci = bootstrap_mean(diffs, n_boot=2000, seed=trial)
        covered += ci["ci_low"] <= -0.3 <= ci["ci_high"]
        assert ci["ci_low"] < ci["mean"] < ci["ci_high"]
    # a 95% interval covers the true mean in about 95% of samples (binomial sd ~1.5%)
    assert 0.89 <= covered / 200 <= 0.99
    assert bootstrap_mean(np.full(10, 0.5))["ci_low"] == bootstrap_mean(np.full(10, 0.5))["ci_high"] == 0.5


def test_identical_modes_give_no_p_value():
    jobs = _jobs()
    same = jobs[jobs["mode"] == "ssl"].assign(mode="sl")
    result = paired_test(_runs(pd.concat([jobs[jobs["mode"] == "ssl"], same])), SSL, SL)
    assert np.isnan(result["p_value"]) and result["n_pairs"] == 12


def test_probe_recovers_a_linear_relation_and_not_noise():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(400, 20))
    y = z @ rng.normal(size=20) + 0.01 * rng.normal(size=400)
    assert ridge_probe(z, y)["r2"] > 0.99
    assert ridge_probe(z, rng.normal(size=400))["r2"] < 0.1


# one task, and five: Figure 4's grid of 3 columns then has an empty sixth panel
@pytest.mark.parametrize("datasets", [["A"], ["A", "B", "C", "D", "E"]])
def test_figures_are_written(tmp_path, datasets):
    files = []
    for i, (dataset, fraction, mode) in enumerate(
        (d, f, m) for d in datasets for f in (0.1, 0.2) for m in ("ssl", "sl")
    ):
        for seed in range(2):
            path = tmp_path / f"m{i}{seed}.json"
            path.write_text(
                json.dumps(
                    {
                        "dataset": dataset,
                        "fraction": fraction,
                        "seed": seed,
                        "mode": mode,
                        "test_mae": 1.0 + i + seed,
                        "units": "eV",
                    }
                )
            )
            files.append(path)
    summary = write_aggregates(files, tmp_path / "jobs.csv", tmp_path / "cells.csv", tmp_path / "s.json")
    assert summary["n_jobs"] == 8 * len(datasets)
    out = figure4(
        tmp_path / "jobs.csv", tmp_path / "cells.csv", ["ssl", "sl"], tmp_path / "fig4.png", tmp_path / "fig4"
    )
    assert [p.name for p in out] == [f"{d}.png" for d in datasets]
    pd.DataFrame(
        {
            "epoch": [0, 1, 2],
            "train_loss": [1, 0.8, 0.7],
            "val_loss": [1, 0.9, 0.95],
            "train_mae": [1, 0.8, 0.7],
            "val_mae": [1, 0.9, 0.95],
            "grad_norm": [1, 1, 1],
        }
    ).to_csv(tmp_path / "h.csv")
    (tmp_path / "sel.json").write_text(json.dumps({"epoch": 1}))
    (tmp_path / "ref.json").write_text(json.dumps({"val_loss_noisy_distances": 0.97}))
    figure3(tmp_path / "h.csv", tmp_path / "sel.json", tmp_path / "ref.json", tmp_path / "fig3.png")
    for png in (tmp_path / "fig4.png", tmp_path / "fig4" / "A.png", tmp_path / "fig3.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_repeated_probe_reports_the_spread_over_splits():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(150, 5))
    y = z[:, 0] + rng.normal(size=150)
    out = repeated_probe(z, y, 20)
    single = [ridge_probe(z, y, seed)["r2"] for seed in range(20)]
    assert out["r2_mean"] == pytest.approx(np.mean(single)) and out["r2_sd"] == pytest.approx(np.std(single, ddof=1))
    assert out["r2_min"] < out["r2_mean"] < out["r2_max"] and out["r2_sd"] > 0.01 and out["repeats"] == 20


def test_probes_use_unseen_crystals_and_put_composition_beside_the_encoders(tmp_path, small_cache_path, test_config):
    import torch

    from cdssl.graphs import GraphCache
    from cdssl.models import build_model
    from cdssl.probes import probe_structures, run_probes

    cache = GraphCache.load(small_cache_path)
    split = pd.DataFrame({"id": cache.ids, "split": ["train"] * 30 + ["val"] * 10})
    split.to_csv(tmp_path / "split.csv", index=False)
    # the validation split, then every crystal of the other caches, capped with seed 0
    parts = probe_structures(small_cache_path, tmp_path / "split.csv", [small_cache_path], 5.0, 10_000)
    assert [(len(idx), k) for _, idx, k in parts] == [(10, 0), (40, 1)] and parts[0][1].tolist() == list(range(30, 40))
    assert (
        sum(
            len(idx)
            for _, idx, _ in probe_structures(small_cache_path, tmp_path / "split.csv", [small_cache_path], 5.0, 25)
        )
        == 25
    )
    torch.manual_seed(0)
    build_model(test_config, "ssl").save(tmp_path / "enc")
    # a feature file per source (the pool, then each other set), row for row its cache
    rows = np.arange(len(cache), dtype=float)[:, None]
    np.savez(tmp_path / "rows.npz", ids=np.array(cache.ids), x=rows, labels=np.array(["row"]))
    table = run_probes(
        tmp_path / "enc",
        small_cache_path,
        tmp_path / "split.csv",
        [small_cache_path],
        feature_files=[{"rownumber": tmp_path / "rows.npz"}] * 2,
        sizes=test_config["models"]["large"],
        cutoff=5.0,
        max_structures=10_000,
        repeats=3,
        probe_csv=tmp_path / "probe.csv",
        embeddings_npz=tmp_path / "z.npz",
    )
    assert set(table["features"]) == {
        "pretrained",
        "random_init",
        "element_fractions",
        "element_fractions+atoms",
        "log_atoms",
        "rownumber",
    }
    assert set(table["target"]) == {"log_density", "log_volume", "log_volume_per_atom"}
    assert (table["n_structures"] == 50).all() and (table["repeats"] == 3).all()
    # volume grows with the atom count: the composition + atoms row must see it
    vol = table.set_index(["features", "target"])["r2_mean"]
    assert vol[("element_fractions+atoms", "log_volume")] > vol[("element_fractions", "log_volume")]
    # the atom count alone says more about the volume than about the volume per atom
    assert vol[("log_atoms", "log_volume")] > max(0.05, vol[("log_atoms", "log_volume_per_atom")])
    z = np.load(tmp_path / "z.npz")
    assert z["z"].shape[0] == 50
    # Figure 5's second map: the random-init encoder on the same crystals, not the pretrained one
    assert z["z_random"].shape == z["z"].shape and not np.allclose(z["z_random"], z["z"])
    from cdssl.figures import figure5

    figure5(tmp_path / "z.npz", tmp_path / "fig5.png")
    assert (tmp_path / "fig5.png").stat().st_size > 0
    # the feature rows follow the probe's crystals: the validation rows, then every row
    assert z["ids"].tolist() == [cache.ids[i] for i in [*range(30, 40), *range(40)]]


def test_a_random_encoders_probe_is_stable_under_a_tiny_perturbation(small_cache_path, test_config):
    """Near-constant embedding columns are dropped before scaling: moving every input by
    1e-6 moves the random-init R^2 by less than 0.005. The random encoder's own state
    columns vary by about 1e-4 of their size; the probe must not read columns that vary
    by far less, as float round-off does, and whose pattern standardising would blow up
    (here such columns are appended, carrying the target at 1e-9)."""
    import torch

    from cdssl import probes
    from cdssl.graphs import GraphCache
    from cdssl.models import build_network

    cache = GraphCache.load(small_cache_path)
    torch.manual_seed(0)
    encoder = build_network(test_config["models"]["large"], 5.0)
    idx = np.arange(len(cache))
    z = probes.embeddings(encoder, cache, idx).astype(np.float64)
    y = np.log(cache.data["volume"].numpy()[idx] / (cache.node_ptr[1:] - cache.node_ptr[:-1]).numpy())
    rng = np.random.default_rng(1)
    tiny = 1.0 + 1e-9 * (y[:, None] + 0.1 * rng.standard_normal((len(y), 8)))
    z = np.column_stack([z, tiny])
    assert (~probes.informative_columns(z)).sum() >= 8
    before = probes.repeated_probe(z, y, 5)["r2_mean"]
    after = probes.repeated_probe(z + 1e-6 * rng.standard_normal(z.shape), y, 5)["r2_mean"]
    assert abs(after - before) < 0.005


def test_a_near_constant_predictor_is_flagged_and_not_counted():
    # the scenario of a small labelled set: every network predicts nearly one value
    # (spread 0.0067 against a target spread of 0.72), and SSL's constant happens to sit
    # nearer the test mean than SL's: not a win, not a learned model
    runs = _runs(_jobs().assign(target_std=0.72, prediction_std=0.0067))
    cells = cell_table(runs)
    learned = per_cell(cells, [SSL, SL], "learned")
    assert not learned[SSL].any() and not learned[SL].any()
    assert per_cell(cells, [SSL], "beats_mean")[SSL].all()  # the old rule would have counted them
    assert per_cell(cells, [SSL], "flag")[SSL].str.startswith("predictions nearly constant").all()
    summary = summarise(runs, cells)
    assert _comparison(summary, SSL, SL)["ssl_wins"] == 0
    assert _comparison(summary, SSL, SL)["cells_counted"] == 0
    assert _verdict(summary)["overall"]["cells_counted"] == 0
    # no test over models that did not learn: no pairs, no p-value; the reason in words
    pairs = _comparison(summary, SSL, SL)["pairs"]
    assert pairs["n_pairs"] == 0 and np.isnan(pairs["p_value"])
    line = next(x for x in summary_lines(summary) if x.startswith("SSL (pretrained) vs SL (Table 3)"))
    assert "4 excluded, a model did not learn: SSL (pretrained) predictions nearly constant in 4" in line
    assert "not below the mean predictor" not in line and "models that did not learn included: 2 of 4" in line
    # predictions that vary count again
    varied = _runs(_jobs().assign(target_std=0.72, prediction_std=0.5))
    assert per_cell(cell_table(varied), [SSL], "learned")[SSL].all()
    assert per_cell(cell_table(varied, min_prediction_spread=0.8), [SSL], "learned")[SSL].sum() == 0


def test_the_verdict_names_the_strongest_answer_without_pretraining_and_counts_against_it(tmp_path):
    jobs = _jobs()
    # dataset A: Magpie boosting below every network; dataset B: SL is the strongest
    jobs["test_mae_magpie_boosting"] = np.where(jobs["dataset"] == "A", 0.2, 9.0)
    jobs["test_mae_magpie_ridge"] = 9.5
    runs = _runs(jobs)
    cells = cell_table(runs)
    summary = summarise(runs, cells)
    v = _verdict(summary)["per_dataset"]
    assert v["A"]["strongest_without_pretraining"] == "magpie_boosting"
    assert v["A"]["ssl_wins"] == 0 and v["A"]["cells_counted"] == 2
    assert v["A"]["ssl_minus_strongest"]["mean"] > 0
    assert v["B"]["strongest_without_pretraining"] == "sl"
    assert v["A"]["ranking"][0]["family"] == "magpie_boosting"
    assert _verdict(summary)["overall"]["cells_counted"] == 4
    assert any(
        line.startswith("verdict A: the strongest answer without pretraining is magpie_boosting")
        for line in summary_lines(summary)
    )
    # the comparisons carry SSL minus each composition model too
    assert _comparison(summary, SSL, Model("magpie_boosting"))["cell_means"]["n"] == 4
    # the results document: a table per dataset, the lowest mean of a row in bold, the verdict
    text = results_markdown(cells, summary)
    assert "### A (test MAE, eV)" in text and "| fraction | SSL (pretrained) | SL (Table 3) |" in text
    row = "| 0.1 | 2.0000 ± 0.5774 | 3.0000 ± 0.5774 | 11.0000 ± 0.5774 | 8.0000 ± 0.0000 | 9.5000 ± 0.0000 |"
    assert row + " **0.2000 ± 0.0000** | - |" in text
    # as the results rule reads it: from cells.csv, where an empty flag comes back as NaN
    cells.to_csv(tmp_path / "cells.csv", index=False)
    assert row + " **0.2000 ± 0.0000** | - |" in results_markdown(read_table(tmp_path / "cells.csv"), summary)
    assert "- verdict A: the strongest answer without pretraining is magpie_boosting" in text
    assert v["A"]["strongest_baseline"]["name"] == "magpie_boosting"
    # a foundation model's features, pretrained elsewhere: never the answer "without
    # pretraining", but the strongest baseline of all when lower, and said so
    jobs["test_mae_chgnet_boosting"] = np.where(jobs["dataset"] == "B", 0.1, 9.9)
    runs = _runs(jobs)
    cells = cell_table(runs)
    summary = summarise(runs, cells)
    v = _verdict(summary)["per_dataset"]
    assert v["B"]["strongest_without_pretraining"] == "sl"
    assert v["B"]["strongest_baseline"]["name"] == "chgnet_boosting"
    assert v["B"]["strongest_baseline"]["ssl_wins"] == 0 and v["B"]["strongest_baseline"]["ssl_minus_it"]["mean"] > 0
    assert v["A"]["strongest_baseline"]["name"] == "magpie_boosting"
    assert _verdict(summary)["overall_any"]["cells_counted"] == 4
    assert any(
        line.startswith("verdict B, a foundation model's features included: the strongest baseline is chgnet_boosting")
        for line in summary_lines(summary)
    )
    assert "CHGNet boosting" in results_markdown(cells, summary)


def test_magpie_models_recover_a_target_that_is_a_function_of_composition(dielectric, tmp_path):
    from cdssl.baselines import run_baselines
    from cdssl.features import magpie_features
    from cdssl.graphs import GraphCache, build_cache, save_cache

    small = dielectric[dielectric["structure"].map(len) <= 6].head(300)
    table = pd.DataFrame(
        {"id": [str(i) for i in small.index], "structure": [s.as_dict() for s in small["structure"]], "target": 0.0}
    )
    cache, _ = build_cache(table, 5.0)
    x, labels = magpie_features(GraphCache(cache))
    assert x.shape == (len(cache["ids"]), 132) and np.isfinite(x).all()
    # the target: mean electronegativity, a linear function of one Magpie feature
    cache["target"] = torch.tensor(x[:, labels.index("MagpieData mean Electronegativity")] * 2 + 1.0)
    save_cache(cache, tmp_path / "graphs.pt")
    np.savez(tmp_path / "magpie.npz", ids=np.array(cache["ids"]), x=x, labels=np.array(labels))
    outs = [tmp_path / f"{seed}.json" for seed in (0, 1)]
    grid = {"learning_rates": [0.1], "min_samples_leaf": [2, 5], "max_iter": 100}
    run_baselines(
        tmp_path / "graphs.pt",
        {"magpie": tmp_path / "magpie.npz"},
        dataset="toy",
        fraction=0.5,
        seeds=[0, 1],
        test_fraction=0.2,
        val_fraction=0.2,
        boosting=grid,
        metrics_jsons=outs,
    )
    y = cache["target"].numpy()
    for seed, out in zip((0, 1), outs, strict=True):
        result = json.loads(out.read_text())
        from cdssl.splits import finetune_split

        train, _, test = finetune_split(len(y), seed, 0.5, 0.2, 0.2)
        mean_mae = np.abs(y[test] - y[train].mean()).mean()
        assert result["test_mae_magpie_ridge"] < 0.05 * mean_mae
        assert result["test_mae_magpie_boosting"] < 0.3 * mean_mae
        assert result["magpie_boosting_params"]["min_samples_leaf"] in (2, 5)
    # features of other crystals are refused
    np.savez(tmp_path / "other.npz", ids=np.array(cache["ids"][::-1]), x=x, labels=np.array(labels))
    with pytest.raises(ValueError, match="does not belong to"):
        run_baselines(
            tmp_path / "graphs.pt",
            {"magpie": tmp_path / "other.npz"},
            dataset="toy",
            fraction=0.5,
            seeds=[0],
            test_fraction=0.2,
            val_fraction=0.2,
            boosting=grid,
            metrics_jsons=outs[:1],
        )


def test_boosting_chooses_its_tree_count_on_validation_and_scores_that_model_on_test():
    from sklearn.ensemble import HistGradientBoostingRegressor

    from cdssl.baselines import boosting_on_validation

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 5))
    y = x[:, 0] + 0.5 * rng.normal(size=300)  # noisy: many trees overfit
    train, val, test = np.arange(150), np.arange(150, 225), np.arange(225, 300)
    grid = {"learning_rates": [0.3], "min_samples_leaf": [2], "max_iter": 200}
    mae, params = boosting_on_validation(x, y, train, val, test, grid, seed=0)
    n = params["n_trees"]
    assert 1 <= n < 200  # stopped before the cap, where validation MAE was lowest
    # the same model refitted with exactly that many trees gives the reported numbers
    refit = HistGradientBoostingRegressor(learning_rate=0.3, min_samples_leaf=2, max_iter=n, random_state=0)
    refit.fit(x[train], y[train])
    assert mae == pytest.approx(np.abs(refit.predict(x[test]) - y[test]).mean(), rel=1e-12)
    assert params["val_mae"] == pytest.approx(np.abs(refit.predict(x[val]) - y[val]).mean(), rel=1e-12)
    every = [
        np.abs(p - y[val]).mean()
        for p in HistGradientBoostingRegressor(learning_rate=0.3, min_samples_leaf=2, max_iter=200, random_state=0)
        .fit(x[train], y[train])
        .staged_predict(x[val])
    ]
    assert params["val_mae"] == pytest.approx(min(every), rel=1e-12)


def test_boosting_uses_the_jobs_threads_not_the_machines(monkeypatch):
    import threadpoolctl

    from cdssl import baselines

    seen = []
    real_fit = __import__("sklearn.ensemble", fromlist=["x"]).HistGradientBoostingRegressor.fit

    def fit(self, *args, **kwargs):
        seen.append({p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "openmp"})
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr("sklearn.ensemble.HistGradientBoostingRegressor.fit", fit)
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 3)), rng.normal(size=60)
    idx = np.arange(60)
    baselines.boosting_on_validation(
        x, y, idx[:30], idx[30:45], idx[45:], {"learning_rates": [0.1], "min_samples_leaf": [5], "max_iter": 5}, 0
    )
    assert seen and all(s == {1} for s in seen)


def test_chgnet_features_load_offline_and_carry_what_chgnet_knows(dielectric, tmp_path, monkeypatch):
    """The frozen foundation model's features: read from the weights inside the wheel with
    every socket refused; the same crystals give the same features, in one call or in chunks;
    rebuilt crystals are the cache's; and a target that is a function of the 64 features is recovered from them,
    row for row, far better than by the mean or by composition alone."""
    import socket

    from cdssl.baselines import run_baselines
    from cdssl.features import chgnet_features, magpie_features, structures
    from cdssl.graphs import GraphCache, build_cache, save_cache
    from cdssl.splits import finetune_split

    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    small = dielectric[dielectric["structure"].map(len) <= 6].head(160)
    table = pd.DataFrame(
        {"id": [str(i) for i in small.index], "structure": [s.as_dict() for s in small["structure"]], "target": 0.0}
    )
    cache, _ = build_cache(table, 5.0)
    graphs = GraphCache(cache)
    rebuilt = structures(graphs)
    for original, crystal in zip(small["structure"], rebuilt[:5], strict=False):
        assert crystal.composition == original.composition
        assert np.allclose(crystal.lattice.matrix, original.lattice.matrix, atol=1e-5)
    x, labels = chgnet_features(graphs)
    assert x.shape == (len(graphs), 64) and len(labels) == 64 and np.isfinite(x).all()
    again, _ = chgnet_features(GraphCache({**cache}))
    assert np.array_equal(x, again)
    # fed to CHGNet in chunks of whole batches (memory of one chunk), row for row the same
    chunked, _ = chgnet_features(graphs, chunk_size=64)
    assert len(graphs) % 64 and np.array_equal(x, chunked)
    with pytest.raises(ValueError, match="multiple of batch_size"):
        chgnet_features(graphs, chunk_size=48)
    # the target: a fixed linear read-out of CHGNet's features, which composition alone
    # cannot give (polymorphs share a composition, not a CHGNet feature)
    weights = np.random.default_rng(0).normal(size=64)
    cache["target"] = torch.tensor(x @ weights, dtype=torch.float64)
    save_cache(cache, tmp_path / "graphs.pt")
    for name, (matrix, names) in {"chgnet": (x, labels), "magpie": magpie_features(graphs)}.items():
        np.savez(tmp_path / f"{name}.npz", ids=np.array(cache["ids"]), x=matrix, labels=np.array(names))
    run_baselines(
        tmp_path / "graphs.pt",
        {"chgnet": tmp_path / "chgnet.npz", "magpie": tmp_path / "magpie.npz"},
        dataset="toy",
        fraction=0.6,
        seeds=[0],
        test_fraction=0.2,
        val_fraction=0.2,
        boosting={"learning_rates": [0.1], "min_samples_leaf": [5], "max_iter": 200},
        metrics_jsons=[tmp_path / "0.json"],
    )
    result = json.loads((tmp_path / "0.json").read_text())
    y = cache["target"].numpy()
    train, _, test = finetune_split(len(y), 0, 0.6, 0.2, 0.2)
    mean_mae = np.abs(y[test] - y[train].mean()).mean()
    assert result["test_mae_chgnet_ridge"] < 0.05 * mean_mae
    assert result["test_mae_chgnet_ridge"] < 0.2 * result["test_mae_magpie_ridge"]
    assert result["test_mae_chgnet_boosting"] < mean_mae  # trees on 96 crystals: learned, not exact


def test_the_hierarchical_interval_covers_an_effect_that_varies_between_pretraining_runs():
    """Each pretraining run shifts every SSL cell alike (a_p), the largest variance; an
    interval over cells alone treats that shift as fixed and misses the true mean, the
    hierarchical one resamples it and covers it at about its level."""
    from cdssl.intervals import hierarchical_bootstrap

    true, n_p, n_c, n_s = 0.01, 5, 7, 3
    covered = {"hierarchical": 0, "cells only": 0}
    trials = 200
    for trial in range(trials):
        rng = np.random.default_rng(trial)
        a_p = rng.normal(0, 0.01, size=(n_p, 1, 1))  # pretraining runs
        b_c = rng.normal(0, 0.003, size=(1, n_c, 1))  # cells
        ssl = 0.2 + true + a_p + b_c + rng.normal(0, 0.003, size=(n_p, n_c, n_s))
        other = 0.2 + b_c + rng.normal(0, 0.003, size=(1, n_c, n_s))
        h = hierarchical_bootstrap(ssl, other, n_boot=1000, seed=trial)
        covered["hierarchical"] += h["ci_low"] <= true <= h["ci_high"]
        cells = bootstrap_mean((ssl - other).mean(axis=(0, 2)), n_boot=1000, seed=trial)
        covered["cells only"] += cells["ci_low"] <= true <= cells["ci_high"]
        assert h["mean"] == pytest.approx((ssl - other).mean()) and h["pretrain_seeds"] == n_p
    assert covered["hierarchical"] / trials >= 0.85
    assert covered["cells only"] / trials <= 0.6


def test_the_summary_intervals_resample_pretraining_seeds():
    """Runs with a pretraining seed: the comparison's interval is the hierarchical one and
    says so; the point estimate is the difference of cell means."""
    jobs = _jobs()
    ssl = jobs[jobs["mode"] == "ssl"]
    other_run = ssl.assign(pretrain_seed=1, test_mae=ssl["test_mae"] + 0.5)
    runs = _runs(pd.concat([jobs.assign(pretrain_seed=np.where(jobs["mode"] == "ssl", 0, np.nan)), other_run]))
    cells = cell_table(runs)
    summary = summarise(runs, cells)
    comp = _comparison(summary, SSL, SL)["cell_means"]
    assert comp["pretrain_seeds"] == 2 and "pretraining seeds" in comp["unit"]
    means = per_cell(cells, [SSL, SL])
    assert comp["mean"] == pytest.approx((means[SSL] - means[SL]).mean())
    # the two pretraining runs differ by 0.5: the interval must be at least that wide
    assert comp["ci_high"] - comp["ci_low"] >= 0.4


def test_the_results_document_names_its_run_and_quotes_its_files(tmp_path, root):
    from cdssl.document import metadata, pretraining_markdown, probe_markdown

    line = metadata(root, ["config/demo.yaml"], None)
    commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    assert line.startswith("Machine: ") and f"commit {commit.stdout.strip()}" in line
    assert "torch 2.13.0" in line and "config config/demo.yaml" in line
    run = tmp_path / "pretrain" / "sigma_0.5" / "seed_1"
    run.mkdir(parents=True)
    (run / "selected.json").write_text(
        json.dumps(
            {
                "epoch": 153,
                "epochs_trained": 156,
                "stop": "early stop: flat",
                "val_loss": 0.23397,
                "first_val_loss": 0.3761,
            }
        )
    )
    reference = {"val_loss_lookup_noisy_length": 0.3583, "val_loss_lookup_element_pair": 0.3515}
    (run / "reference.json").write_text(json.dumps({**reference, "val_loss_noisy_distances": 0.4361}))
    text = pretraining_markdown([run / "selected.json"], [run / "reference.json"])
    assert (
        "| sigma_0.5/seed_1 | 156 | early stop: flat | 153 | 0.3761 | **0.2340** | 0.3583 | 0.3515 | 0.4361 |" in text
    )
    probe = pd.DataFrame(
        {
            "features": ["pretrained", "pretrained", "log_natoms", "log_natoms"],
            "sigma": [0.5, 0.5, np.nan, np.nan],
            "target": ["log_density", "log_volume_per_atom"] * 2,
            "r2_mean": [0.7004, 0.8157, 0.022, -0.009],
            "r2_sd": [0.0405, 0.0634, 0.036, 0.009],
            "repeats": 20,
            "n_structures": 1011,
            "paper_r2": [0.703, np.nan, 0.703, np.nan],
        }
    )
    text = probe_markdown(probe)
    assert "20 splits, 1,011 crystals" in text and "| features | log density | log volume per atom |" in text
    assert "| pretrained encoder (sigma 0.5 A) | 0.700 ± 0.041 | 0.816 ± 0.063 |" in text
    assert "| log(atom count) alone | 0.022 ± 0.036 | -0.009 ± 0.009 |" in text
    assert "| the paper (pretrained, its own data) | 0.703 |  |" in text


def test_budgets_become_their_own_ssl_models_and_the_budget_table_says_where_ssl_crosses(tmp_path):
    """pretrain.export_epochs: each budget's runs are an ssl model keyed by its budget; the budget
    table sets each against SL large and the strongest baseline, and says from which
    budget SSL is lower with an interval below 0, or that it never is."""
    from cdssl.budget import budget_lines, budget_markdown, write_budget_table

    rows = []
    for fraction in (0.1, 0.2, 0.3):
        for seed in range(3):
            base = {"dataset": "A", "fraction": fraction, "seed": seed, "units": "eV", "test_mae_mean_predictor": 10.0}
            base |= {"test_mae_composition": 8.0, "test_mae_magpie_boosting": 3.0 + 0.01 * seed}
            rows.append(base | {"mode": "sl_large", "test_mae": 5.0 + 0.01 * seed})
            # SSL improves with the budget: above boosting at 10 epochs, below it at 100
            for budget, mae in ((10, 6.0), (30, 4.0), (100, 2.0)):
                rows.append(base | {"mode": "ssl", "budget": budget, "sigma": 0.5, "test_mae": mae + 0.01 * seed})
    for i, row in enumerate(rows):
        path = tmp_path / f"m{i}.json"
        path.write_text(json.dumps(row))
    out = [tmp_path / n for n in ("jobs.csv", "cells.csv", "summary.json")]
    summary = write_aggregates(sorted(tmp_path.glob("m*.json")), *out)
    assert {Model("ssl", sigma=0.5, budget=b) for b in (10, 30, 100)} <= {Model(**m) for m in summary["models"]}
    assert "SSL (pretrained; 100 epochs)" in results_markdown(read_table(out[1]), summary)
    selected = []
    for budget, loss in ((10, 0.35), (30, 0.3), (100, 0.25)):
        selected.append(tmp_path / f"sel{budget}.json")
        selected[-1].write_text(
            json.dumps({"budget": budget, "epoch": budget - 1, "val_loss": loss, "epochs_trained": budget})
        )
    table = write_budget_table(*out, selected, tmp_path / "budget.csv")
    overall = table[table["fraction"] == "all"].set_index("budget")
    assert overall["strongest_name"].unique().tolist() == ["magpie_boosting"]
    assert overall.loc[10, "diff_strongest"] == pytest.approx(3.0) and overall.loc[
        100, "diff_strongest"
    ] == pytest.approx(-1.0)
    assert overall.loc[100, "diff_sl_large_high"] < 0 and overall.loc[30, "pretrain_val_loss"] == 0.3
    lines = budget_lines(table)
    assert any(
        "minus magpie_boosting" in line and "SSL lower from budget 100 (interval below 0)" in line for line in lines
    )
    assert any("minus sl_large" in line and "SSL lower from budget 30" in line for line in lines)
    assert "| 100 | 99 | 0.2500 | 2.0100 |" in budget_markdown(table)
    # one table per fraction too, three budgets each
    assert (table[table["fraction"] == "0.2"]["budget"].tolist()) == [10, 30, 100]


def test_a_backbone_whose_pretraining_stays_above_a_lookup_is_marked_did_not_learn(tmp_path):
    """A pretext loss not below the lower lookup's (every pretraining run's own) means the
    encoder learned nothing a table holds: the results document and the backbone
    comparison say so beside the number."""
    from cdssl.comparison import backbone_lines, backbone_markdown, pretext_row
    from cdssl.document import pretraining_markdown

    reference = {"val_loss_lookup_noisy_length": 0.3583, "val_loss_lookup_element_pair": 0.3515}
    files = {}
    for name, loss in (("learned", 0.3107), ("flat", 0.3667), ("between", 0.3550), ("other_seed", 0.3000)):
        run = tmp_path / name / "sigma_0.5"
        run.mkdir(parents=True)
        (run / "selected.json").write_text(
            json.dumps({"epoch": 36, "epochs_trained": 40, "stop": None, "val_loss": loss, "first_val_loss": 0.7271})
        )
        (run / "reference.json").write_text(json.dumps({**reference, "val_loss_noisy_distances": 0.4361}))
        files[name] = (run / "selected.json", run / "reference.json")
    text = pretraining_markdown([files["learned"][0]], [files["learned"][1]])
    assert "| 0.7271 | **0.3107** | 0.3583 |" in text
    for name in ("flat", "between"):  # above both lookups; between them (above the element pairs')
        text = pretraining_markdown([files[name][0]], [files[name][1]])
        assert "(did not learn: not below a lookup)" in text and "**" not in text
    rows = {}
    for name, runs in {"megnet": ["learned"], "tensornet": ["flat"], "m3gnet": ["other_seed", "between"]}.items():
        pretext = pretext_row([files[r][0] for r in runs], [files[r][1] for r in runs])
        assert pretext["lookup_val_loss"] == pytest.approx(0.3515)
        rows[name] = pretext
    # one run of two that did not learn is enough to mark the backbone
    assert [r["pretext_learned"] for r in rows.values()] == [True, False, False]
    table = pd.DataFrame(
        [
            {
                "backbone": name,
                "model": "ssl",
                "dataset": "dielectric",
                "units": "log10(n)",
                "fraction": "all",
                "ssl_mean": 0.16,
                "sl_large_mean": 0.17,
                "strongest_name": "magpie_boosting",
                "strongest_mean": 0.13,
                **pretext,
            }
            for name, pretext in rows.items()
        ]
    )
    markdown = backbone_markdown(table)
    assert "| megnet | ssl | 0.3107 | 0.3515 |" in markdown
    assert "| tensornet | ssl | 0.3667 (did not learn) | 0.3515 |" in markdown
    lines = backbone_lines(table)
    assert "did not learn" not in lines[0]
    assert lines[1].endswith("pretraining did not learn (pretext loss 0.3667, not below the lookup's 0.3515)")
