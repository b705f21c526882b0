"""The map (cdssl.pretraining_map): one row per task and encoder from a run's verdicts and
pretraining files, its words, and the trend of the gap with the pool's size."""

import json

import numpy as np
import pandas as pd
import pytest

from cdssl.pretraining_map import map_table, trend, write_map


def _interval(mean: float, half: float) -> dict:
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half, "p_value": 0.5, "n": 3}


def _model(family: str, pool_size) -> dict:
    return dict(family=family, backbone="megnet", sigma=0.5, budget=None, pool="pool", pool_size=pool_size)


def _verdict(pool_size, gaps: dict) -> dict:
    return {
        "model": _model("ssl", pool_size),
        "per_dataset": {
            dataset: {
                "strongest_without_pretraining": "magpie_boosting",
                "its_mean_test_mae": 0.5,
                "ssl_mean_test_mae": 0.5 + gap,
                "ssl_minus_strongest": _interval(gap, 0.01),
                "ssl_wins": 0,
                "cells_counted": 3,
                "cells": 3,
            }
            for dataset, gap in gaps.items()
        },
    }


def _hybrid(pool_size, diff: float) -> dict:
    return {
        "model": _model("hybrid", pool_size),
        "per_dataset": {"band_gap": {"hybrid_minus_random_init": _interval(diff, 0.002)}},
    }


def _pretraining_files(tmp_path, pool_size, seed, crystals: int, val_loss: float) -> dict:
    folder = tmp_path / f"{pool_size}_{seed}"
    folder.mkdir()
    (folder / "selected.json").write_text(json.dumps({"val_loss": val_loss}))
    lookups = {"val_loss_lookup_noisy_length": 0.36, "val_loss_lookup_element_pair": 0.35}
    (folder / "reference.json").write_text(json.dumps(lookups))
    kinds = ["train"] * (crystals - crystals // 10) + ["val"] * (crystals // 10) + ["unused"] * 7
    pd.DataFrame({"id": range(len(kinds)), "split": kinds}).to_csv(folder / "split.csv", index=False)
    keys = {"sigma": 0.5, "budget": None, "pool_size": pool_size, "pretrain_seed": seed}
    return {
        "selected": folder / "selected.json",
        "reference": folder / "reference.json",
        "split": folder / "split.csv",
        "keys": keys,
    }


def test_each_task_and_pool_size_is_one_row_with_its_own_interval_pretext_loss_and_hybrid(tmp_path):
    summary = {
        "verdict": [
            _verdict(100, {"band_gap": 0.05, "dielectric": 0.002}),
            _verdict(None, {"band_gap": -0.03, "dielectric": 0.002}),
        ],
        "hybrid": [_hybrid(100, 0.01), _hybrid(None, -0.02)],
    }
    runs = [
        _pretraining_files(tmp_path, 100, 0, 100, 0.30),
        _pretraining_files(tmp_path, 100, 1, 100, 0.32),
        _pretraining_files(tmp_path, None, 0, 400, 0.20),
    ]
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    table = write_map(
        tmp_path / "summary.json",
        *([r[k] for r in runs] for k in ("selected", "reference", "split", "keys")),
        tmp_path / "map.csv",
        tmp_path / "trend.csv",
    )
    assert len(table) == 4
    rows = table.set_index(["dataset", "pool_crystals"])
    # each pool size's own pretraining runs: crystals in train and val only, the loss
    # averaged over that size's pretraining seeds, never another size's
    assert rows.loc[("band_gap", 100), "pretext_val_loss"] == pytest.approx(0.31)
    assert rows.loc[("band_gap", 100), "pretrain_seeds"] == 2
    assert rows.loc[("band_gap", 400), "pretext_val_loss"] == pytest.approx(0.20)
    assert rows.loc[("band_gap", 400), "lookup_val_loss"] == pytest.approx(0.35)
    assert rows.loc[("band_gap", 100), "ssl_minus_strongest"] == pytest.approx(0.05)
    assert rows.loc[("band_gap", 400), "ssl_minus_strongest_high"] == pytest.approx(-0.02)
    # the hybrid of the same encoder (pool size), where the task has one
    assert rows.loc[("band_gap", 100), "hybrid_minus_random_init"] == pytest.approx(0.01)
    assert rows.loc[("band_gap", 400), "hybrid_minus_random_init"] == pytest.approx(-0.02)
    assert np.isnan(rows.loc[("dielectric", 400), "hybrid_minus_random_init"])
    # the word follows the interval: excludes zero above (loses), below (wins), or not (ties)
    assert list(rows["verdict"]) == ["loses", "wins", "ties", "ties"]
    nan = {"mean": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")}
    summary["verdict"][0]["per_dataset"]["band_gap"]["ssl_minus_strongest"] = nan
    pretext = pd.DataFrame(
        [r["keys"] | {"pool_crystals": 1, "pretext_val_loss": 0.3, "lookup_val_loss": 0.35} for r in runs]
    )
    assert map_table(summary, pretext)["verdict"].iloc[0] == "not counted"
    assert pd.read_csv(tmp_path / "map.csv").shape == table.shape


def _gaps(points, half=0.004) -> pd.DataFrame:
    rows = []
    for crystals, gap in points:
        rows.append(
            {
                "dataset": "band_gap",
                "backbone": "megnet",
                "sigma": 0.5,
                "budget": np.nan,
                "pool_crystals": crystals,
                "ssl_minus_strongest": gap,
                "ssl_minus_strongest_low": gap - half,
                "ssl_minus_strongest_high": gap + half,
            }
        )
    return pd.DataFrame(rows)


def test_a_gap_shrinking_with_the_pool_gets_its_slope_and_where_it_would_cross_zero():
    # gap = 0.04 - 0.01 log10(n): zero at n = 10^4
    lines = trend(_gaps([(100, 0.02), (1000, 0.01), (3000, 0.04 - 0.01 * np.log10(3000))]))
    (row,) = lines.to_dict("records")
    assert row["slope_per_decade"] == pytest.approx(-0.01, abs=1e-9)
    assert row["crosses_at"] == pytest.approx(1e4, rel=1e-6)
    assert row["crosses_low"] < 1e4 < row["crosses_high"]
    assert row["slope_low"] < -0.01 < row["slope_high"] < 0


def test_no_crossing_where_the_gap_grows_or_the_slope_is_unresolved():
    growing = trend(_gaps([(100, 0.01), (1000, 0.02), (10000, 0.03)])).iloc[0]
    assert growing["slope_per_decade"] > 0 and np.isnan(growing["crosses_at"])
    flat = trend(_gaps([(100, 0.02), (1000, 0.021), (10000, 0.02)], half=0.01)).iloc[0]
    assert flat["slope_low"] < 0 < flat["slope_high"] and np.isnan(flat["crosses_at"])
    assert trend(_gaps([(100, 0.02)])).empty


def test_an_empty_verdict_list_gives_an_empty_map():
    assert map_table({"verdict": []}, pd.DataFrame(columns=["sigma", "budget", "pool_size"])).empty
