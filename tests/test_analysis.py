"""Aggregation maths on hand-made inputs, probes on a known linear relation, figures."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from cdssl.figures import figure3, figure4
from cdssl.probes import repeated_probe, ridge_probe
from cdssl.statistics import (
    bootstrap_mean,
    cell_table,
    paired_test,
    results_markdown,
    summarise,
    summary_lines,
    write_aggregates,
)


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
    cells = cell_table(_jobs()).set_index(["dataset", "fraction"])
    a = cells.loc[("A", 0.1)]
    assert a["mean_ssl"] == pytest.approx(2.0) and a["mean_sl"] == pytest.approx(3.0)
    assert a["sem_ssl"] == pytest.approx(1.0 / np.sqrt(3))  # std (ddof=1) of 1,2,3 is 1
    assert a["diff_ssl_sl"] == pytest.approx(-1.0)
    assert cells["ssl_wins_sl"].tolist() == [True, True, False, False]  # a tie is not a win
    assert "ssl_wins_sl_large" not in cells


def test_paired_wilcoxon_matches_scipy_and_summary_counts():
    jobs = _jobs()
    result = paired_test(jobs, "sl")
    ssl = jobs[jobs["mode"] == "ssl"]["test_mae"].to_numpy()
    sl = jobs[jobs["mode"] == "sl"]["test_mae"].to_numpy()
    ref = stats.wilcoxon(ssl, sl)
    assert result["n_pairs"] == 12 and result["p_value"] == pytest.approx(ref.pvalue)
    assert result["ssl_lower_pairs"] == int((ssl < sl).sum())
    summary = summarise(jobs, cell_table(jobs))
    comp = summary["comparisons"]["ssl_vs_sl"]
    assert comp["ssl_wins"] == 2 and comp["cells_counted"] == 4 and comp["cells_excluded"] == 0
    assert comp["wins_per_dataset"] == {"A": 2, "B": 0}
    # dataset A: SSL lower in all 6 pairs -> exact two-sided p = 2 / 2**6
    assert comp["pairs"]["p_value"] == pytest.approx(ref.pvalue)
    # on cell means: differences -1, -0.9, +1.5, 0 -> the zero is dropped (wilcox)
    cell = comp["cell_means"]
    assert cell["n"] == 4 and cell["mean"] == pytest.approx((-1 - 0.9 + 1.5 + 0) / 4)
    assert cell["p_value"] == pytest.approx(stats.wilcoxon([-1, -0.9, 1.5]).pvalue)
    assert summary["comparisons"]["ssl_vs_mean_predictor"]["cell_means"]["mean"] < 0
    assert any("ssl_vs_sl:" in line for line in summary_lines(summary))


def test_a_cell_whose_model_predicts_a_constant_is_flagged_and_not_counted():
    jobs = _jobs()
    # at (B, 0.1) SL scores what the mean predictor scores (a constant answer), and SSL
    # is worse still: the cell is flagged for both and leaves the SSL-vs-SL count
    at = (jobs["dataset"] == "B") & (jobs["fraction"] == 0.1)
    jobs.loc[at, "test_mae_mean_predictor"] = jobs.loc[at & (jobs["mode"] == "sl"), "test_mae"].to_numpy().repeat(2)
    # at (A, 0.2) SSL wins but SL equals the mean predictor: a "win" over a constant
    at = (jobs["dataset"] == "A") & (jobs["fraction"] == 0.2)
    jobs.loc[at, "test_mae_mean_predictor"] = 1.5
    cells = cell_table(jobs).set_index(["dataset", "fraction"])
    assert not cells.loc[("B", 0.1), "beats_mean_sl"] and not cells.loc[("B", 0.1), "beats_mean_ssl"]
    assert cells.loc[("A", 0.2), "beats_mean_ssl"] and not cells.loc[("A", 0.2), "beats_mean_sl"]
    assert cells.loc[("A", 0.2), "flagged"] == "sl not below the mean predictor"
    comp = summarise(jobs, cells.reset_index())["comparisons"]["ssl_vs_sl"]
    assert comp["paper_count"] == {"ssl_wins": 2, "cells": 4}
    assert comp["ssl_wins"] == 1 and comp["cells_counted"] == 2 and comp["cells_excluded"] == 2
    assert sorted(comp["excluded"]) == ["A 0.2", "B 0.1"]


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
    result = paired_test(pd.concat([jobs[jobs["mode"] == "ssl"], same]), "sl")
    assert np.isnan(result["p_value"]) and result["n_pairs"] == 12


def test_probe_recovers_a_linear_relation_and_not_noise():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(400, 20))
    y = z @ rng.normal(size=20) + 0.01 * rng.normal(size=400)
    assert ridge_probe(z, y)["r2"] > 0.99
    assert ridge_probe(z, rng.normal(size=400))["r2"] < 0.1


def test_figures_are_written(tmp_path):
    files = []
    for i, (dataset, fraction, mode) in enumerate(
        [("A", 0.1, "ssl"), ("A", 0.1, "sl"), ("A", 0.2, "ssl"), ("A", 0.2, "sl")]
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
    assert summary["n_jobs"] == 8
    out = figure4(
        tmp_path / "jobs.csv", tmp_path / "cells.csv", ["ssl", "sl"], tmp_path / "fig4.png", tmp_path / "fig4"
    )
    assert [p.name for p in out] == ["A.png"]
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
    assert [len(idx) for _, idx in parts] == [10, 40] and parts[0][1].tolist() == list(range(30, 40))
    assert (
        sum(
            len(idx)
            for _, idx in probe_structures(small_cache_path, tmp_path / "split.csv", [small_cache_path], 5.0, 25)
        )
        == 25
    )
    torch.manual_seed(0)
    build_model(test_config, "ssl").save(tmp_path / "enc")
    table = run_probes(
        tmp_path / "enc",
        small_cache_path,
        tmp_path / "split.csv",
        [small_cache_path],
        sizes=test_config["models"]["large"],
        cutoff=5.0,
        max_structures=10_000,
        repeats=3,
        probe_csv=tmp_path / "probe.csv",
        embeddings_npz=tmp_path / "z.npz",
    )
    assert set(table["features"]) == {"pretrained", "random_init", "element_fractions", "element_fractions+atoms"}
    assert (table["n_structures"] == 50).all() and (table["repeats"] == 3).all()
    # volume grows with the atom count: the composition + atoms row must see it
    vol = table.set_index(["features", "target"])["r2_mean"]
    assert vol[("element_fractions+atoms", "log_volume")] > vol[("element_fractions", "log_volume")]
    assert np.load(tmp_path / "z.npz")["z"].shape[0] == 50


def test_a_near_constant_predictor_is_flagged_and_not_counted():
    # the scenario of a small labelled set: every network predicts nearly one value
    # (spread 0.0067 against a target spread of 0.72), and SSL's constant happens to sit
    # nearer the test mean than SL's: not a win, not a learned model
    jobs = _jobs().assign(target_std=0.72, prediction_std=0.0067)
    cells = cell_table(jobs)
    assert not cells["learned_ssl"].any() and not cells["learned_sl"].any()
    assert cells["beats_mean_ssl"].all()  # the old rule would have counted them
    assert cells["flagged"].str.contains("ssl predictions nearly constant").all()
    summary = summarise(jobs, cells)
    assert summary["comparisons"]["ssl_vs_sl"]["ssl_wins"] == 0
    assert summary["comparisons"]["ssl_vs_sl"]["cells_counted"] == 0
    assert summary["verdict"]["ssl"]["overall"]["cells_counted"] == 0
    # predictions that vary count again
    varied = _jobs().assign(target_std=0.72, prediction_std=0.5)
    assert cell_table(varied)["learned_ssl"].all()
    assert cell_table(varied, min_prediction_spread=0.8)["learned_ssl"].sum() == 0


def test_the_verdict_names_the_strongest_answer_without_pretraining_and_counts_against_it():
    jobs = _jobs()
    # dataset A: Magpie boosting below every network; dataset B: SL is the strongest
    jobs["test_mae_magpie_boosting"] = np.where(jobs["dataset"] == "A", 0.2, 9.0)
    jobs["test_mae_magpie_ridge"] = 9.5
    cells = cell_table(jobs)
    summary = summarise(jobs, cells)
    v = summary["verdict"]["ssl"]["per_dataset"]
    assert v["A"]["strongest_without_pretraining"] == "magpie_boosting"
    assert v["A"]["ssl_wins"] == 0 and v["A"]["cells_counted"] == 2
    assert v["A"]["ssl_minus_strongest"]["mean"] > 0
    assert v["B"]["strongest_without_pretraining"] == "sl"
    assert list(v["A"]["ranking"])[0] == "magpie_boosting"
    assert summary["verdict"]["ssl"]["overall"]["cells_counted"] == 4
    assert any(
        line.startswith("verdict A: the strongest answer without pretraining is magpie_boosting")
        for line in summary_lines(summary)
    )
    # the comparisons carry SSL minus each composition model too
    assert summary["comparisons"]["ssl_vs_magpie_boosting"]["cell_means"]["n"] == 4
    # the results document: a table per dataset, the lowest mean of a row in bold, the verdict
    text = results_markdown(cells, summary)
    assert "### A (test MAE, eV)" in text and "| fraction | SSL | SL (Table 3) |" in text
    row = "| 0.1 | 2.0000 ± 0.5774 | 3.0000 ± 0.5774 | 11.0000 ± 0.5774 | 8.0000 ± 0.0000 | 9.5000 ± 0.0000 |"
    assert row + " **0.2000 ± 0.0000** | - |" in text
    assert "- verdict A: the strongest answer without pretraining is magpie_boosting" in text


def test_magpie_models_recover_a_target_that_is_a_function_of_composition(dielectric, tmp_path):
    from cdssl.baselines import magpie_features, run_baselines
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
        tmp_path / "magpie.npz",
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
            tmp_path / "other.npz",
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
