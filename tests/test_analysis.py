"""Aggregation maths on hand-made inputs, probes on a known linear relation, figures."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cdssl.analysis import cell_table, figure3, figure4, paired_test, ridge_probe, summarise, write_aggregates


def _jobs():
    rows = []
    # dataset A: SSL better at both fractions; dataset B: SSL worse at 0.1, equal means at 0.2
    values = {
        ("A", 0.1, "ssl"): [1.0, 2.0, 3.0], ("A", 0.1, "sl"): [2.0, 3.0, 4.0],
        ("A", 0.2, "ssl"): [0.5, 0.5, 0.8], ("A", 0.2, "sl"): [1.0, 1.5, 2.0],
        ("B", 0.1, "ssl"): [5.0, 6.0, 7.0], ("B", 0.1, "sl"): [4.0, 4.5, 5.0],
        ("B", 0.2, "ssl"): [3.0, 3.0, 3.0], ("B", 0.2, "sl"): [2.0, 3.0, 4.0],
    }
    for (dataset, fraction, mode), maes in values.items():
        for seed, mae in enumerate(maes):
            rows.append({"dataset": dataset, "fraction": fraction, "seed": seed, "mode": mode,
                         "test_mae": mae, "units": "eV"})
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
    assert comp["ssl_wins"] == 2 and comp["cells"] == 4
    assert comp["wins_per_dataset"] == {"A": 2, "B": 0}
    # dataset A: SSL lower in all 6 pairs -> exact two-sided p = 2 / 2**6
    assert comp["per_dataset"]["A"]["p_value"] == pytest.approx(2 / 64)


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
    for i, (dataset, fraction, mode) in enumerate([("A", 0.1, "ssl"), ("A", 0.1, "sl"), ("A", 0.2, "ssl"), ("A", 0.2, "sl")]):
        for seed in range(2):
            path = tmp_path / f"m{i}{seed}.json"
            path.write_text(json.dumps({"dataset": dataset, "fraction": fraction, "seed": seed, "mode": mode,
                                        "test_mae": 1.0 + i + seed, "units": "eV"}))
            files.append(path)
    summary = write_aggregates(files, tmp_path / "jobs.csv", tmp_path / "cells.csv", tmp_path / "s.json")
    assert summary["n_jobs"] == 8
    out = figure4(tmp_path / "cells.csv", ["ssl", "sl"], tmp_path / "fig4.png", tmp_path / "fig4")
    assert [p.name for p in out] == ["A.png"]
    pd.DataFrame({"epoch": [0, 1, 2], "train_loss": [1, 0.8, 0.7], "val_loss": [1, 0.9, 0.95],
                  "train_mae": [1, 0.8, 0.7], "val_mae": [1, 0.9, 0.95], "grad_norm": [1, 1, 1]}).to_csv(tmp_path / "h.csv")
    (tmp_path / "sel.json").write_text(json.dumps({"epoch": 1}))
    (tmp_path / "ref.json").write_text(json.dumps({"val_loss_noisy_distances": 0.97}))
    figure3(tmp_path / "h.csv", tmp_path / "sel.json", tmp_path / "ref.json", tmp_path / "fig3.png")
    for png in (tmp_path / "fig4.png", tmp_path / "fig4" / "A.png", tmp_path / "fig3.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
