"""The validation-chosen model of a cell and the blend of its models (cdssl.blend)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cdssl.blend import choose, convex_weights, cross_fitted_mae, run_blend


def test_the_weights_are_non_negative_sum_to_one_and_recover_a_convex_mix():
    rng = np.random.default_rng(0)
    a, b, c = rng.normal(size=(3, 200))
    y = 0.3 * a + 0.7 * b
    w = convex_weights(np.column_stack([a, b, -y]), y)  # -y: anti-correlated, no weight
    assert w == pytest.approx([0.3, 0.7, 0.0], abs=1e-6) and w.sum() == pytest.approx(1.0)
    assert (convex_weights(np.column_stack([a, c]), y) >= 0).all()


def _cell(rng, n_val=60, n_test=60) -> pd.DataFrame:
    """Validation and test rows of a cell: two unbiased models with independent noise
    (their mean is better than either), a constant one and one worse than the mean."""
    n = n_val + n_test
    y = rng.normal(size=n)
    return pd.DataFrame(
        {
            "id": [f"c{i:03d}" for i in range(n)],
            "split": ["val"] * n_val + ["test"] * n_test,
            "target": y,
            "a": y + 0.5 * rng.normal(size=n),
            "b": y + 0.5 * rng.normal(size=n),
            "flat": np.full(n, 1e-4) + 1e-6 * rng.normal(size=n),
            "wild": -3 * y,
        }
    )


def test_a_model_that_did_not_learn_on_validation_gets_no_weight_and_says_why():
    table = _cell(np.random.default_rng(1))
    floor = np.zeros(len(table))  # the training mean
    result = choose(table, ["a", "b", "flat", "wild"], floor, 0.1, seed=0)
    reasons = {r["label"]: r["reason"] for r in result["candidates"]}
    assert reasons["a"] is None and reasons["b"] is None
    assert reasons["wild"].startswith("validation MAE") and "not below the training mean's" in reasons["wild"]
    assert reasons["flat"].startswith("validation predictions nearly constant")
    assert set(result["weights"]) == {"a", "b"}
    # two independent errors: their blend beats each on held-out validation rows
    assert result["chosen"] == "blend" and result["blend_val_mae"] < min(
        r["val_mae"] for r in result["candidates"] if r["label"] in "ab"
    )


def test_one_model_far_ahead_is_chosen_alone():
    table = _cell(np.random.default_rng(2))
    table["c"] = table["target"] + 0.01 * np.random.default_rng(3).normal(size=len(table))
    result = choose(table, ["a", "c"], None, 0.1, seed=0)
    assert result["chosen"] == "c"


def test_the_blend_s_validation_mae_is_cross_fitted():
    """Weights fitted on every validation row score those rows too well; held out, a
    blend of noise models cannot beat its parts."""
    rng = np.random.default_rng(4)
    y = rng.normal(size=40)
    p = rng.normal(size=(40, 30))
    in_sample = float(np.abs(p @ convex_weights(p, y) - y).mean())
    assert cross_fitted_mae(p, y, seed=0) > in_sample


def _write(table: pd.DataFrame, tmp_path) -> list[dict]:
    candidates = []
    for label in ("a", "b", "wild"):
        path = tmp_path / f"{label}.csv"
        table[["id", "split", "target", label]].rename(columns={label: "prediction"}).to_csv(path, index=False)
        keys = {"family": "sl", "sigma": None, "budget": None, "pretrain_seed": None}
        candidates.append(
            {"seed": 0, "label": label, "kind": "network", "predictions": str(path), "column": "prediction"}
            | {"model": str(tmp_path / label / "model"), **keys}
        )
    return candidates


def test_the_test_rows_never_choose_and_the_rows_order_does_not_matter(tmp_path):
    table = _cell(np.random.default_rng(5))
    out = [tmp_path / "blend/metrics.json"]
    kwargs = dict(dataset="d", fraction=0.5, seeds=[0], min_prediction_spread=0.1, units="eV")
    run_blend(_write(table, tmp_path), **kwargs, metrics_jsons=out, predictions_csvs=[tmp_path / "blend/p.csv"])
    first = json.loads(out[0].read_text())
    assert [r["mode"] for r in first["runs"]] == ["blend", "best"]
    assert first["candidates"][0]["model"] == "../a/model"  # relative to the blend's folder
    # other test predictions, the rows shuffled: the same weights and choice
    changed = table.sample(frac=1.0, random_state=0)
    test = changed["split"] == "test"
    changed.loc[test, ["a", "b"]] = changed.loc[test, ["a", "b"]].to_numpy()[::-1]
    run_blend(_write(changed, tmp_path), **kwargs, metrics_jsons=out, predictions_csvs=[tmp_path / "blend/p.csv"])
    second = json.loads(out[0].read_text())
    assert second["weights"] == first["weights"] and second["chosen"] == first["chosen"]
    assert second["runs"][0]["val_mae"] == first["runs"][0]["val_mae"]
    assert second["runs"][0]["test_mae"] != first["runs"][0]["test_mae"]


def test_a_network_file_without_validation_rows_names_the_command_that_adds_them(tmp_path):
    table = _cell(np.random.default_rng(6))
    candidates = _write(table, tmp_path)
    old = table[table["split"] == "test"][["id", "target", "a"]].rename(columns={"a": "prediction"})
    old.to_csv(candidates[0]["predictions"], index=False)
    with pytest.raises(ValueError, match="tools/migrate_results.py"):
        run_blend(
            candidates,
            dataset="d",
            fraction=0.5,
            seeds=[0],
            min_prediction_spread=0.1,
            units="eV",
            metrics_jsons=[tmp_path / "m.json"],
            predictions_csvs=[tmp_path / "p.csv"],
        )


def test_the_summary_gives_each_model_s_mean_weight_over_the_splits():
    from cdssl.verdicts import mean_weights

    blends = pd.DataFrame({"settings": [{"weights": {"a": 0.75, "b": 0.25}}, {"weights": {"a": 1.0}}, float("nan")]})
    rows = mean_weights(blends)
    assert rows == [
        {"label": "a", "mean": 0.875, "splits": 2, "weighted_in": 2},
        {"label": "b", "mean": 0.125, "splits": 2, "weighted_in": 1},
    ]
