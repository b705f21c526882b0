"""The hybrid family (cdssl.hybrid): descriptors beside a frozen encoder's principal
components, its random-init control, and what the summary says they add."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cdssl.runs import Model, runs_table


def test_components_are_fitted_on_the_training_rows_alone():
    from cdssl.hybrid import components

    rng = np.random.default_rng(0)
    z = rng.normal(size=(60, 12))
    train = np.arange(40)
    a = components(z, train, 4)
    changed = z.copy()
    changed[40:] = rng.normal(size=(20, 12)) * 100  # the test rows: wild values
    b = components(changed, train, 4)
    assert a.shape == (60, 4)
    assert np.allclose(a[train], b[train])  # scaling and axes saw the training rows only
    assert not np.allclose(a[40:], b[40:])
    # a column that never varies is dropped before scaling, not blown up
    z[:, 0] = 3.0
    assert np.isfinite(components(z, train, 4)).all()


def test_the_hybrid_chooses_its_components_on_validation_and_scores_that_model_on_test():
    from sklearn.ensemble import HistGradientBoostingRegressor

    from cdssl.baselines import rounded
    from cdssl.hybrid import COMPONENTS, components, hybrid_on_validation

    rng = np.random.default_rng(1)
    n = 240
    x = rng.normal(size=(n, 3))
    z = rng.normal(size=(n, 16))
    # the target needs the embedding's leading direction: the descriptors alone miss it
    y = x[:, 0] + 2 * z[:, 0] * 3 + 0.1 * rng.normal(size=n)
    z[:, 0] *= 3  # the direction with the most variance: the first component
    train, val, test = np.arange(160), np.arange(160, 200), np.arange(200, n)
    setting = {"learning_rate": 0.1, "min_samples_leaf": 5}
    pred, chosen = hybrid_on_validation(x, z, y, train, val, test, setting, 200, 0)
    assert chosen["components"] in COMPONENTS and 1 <= chosen["n_trees"] <= 200
    # the reported prediction is that of the chosen k and tree count, refitted
    features = rounded(np.hstack([x, components(z, train, chosen["components"])]))
    refit = HistGradientBoostingRegressor(
        learning_rate=0.1, min_samples_leaf=5, max_iter=chosen["n_trees"], early_stopping=False, random_state=0
    ).fit(features[train], y[train])
    assert np.allclose(pred, refit.predict(features[test]))
    # the components carry what the descriptors lack
    alone = HistGradientBoostingRegressor(learning_rate=0.1, min_samples_leaf=5, max_iter=200, random_state=0)
    alone.fit(x[train], y[train])
    assert np.abs(pred - y[test]).mean() < 0.7 * np.abs(alone.predict(x[test]) - y[test]).mean()


def test_embeddings_come_from_the_encoder_and_its_untrained_twin(tmp_path, small_cache_path, test_config):
    import torch

    from cdssl.graphs import GraphCache
    from cdssl.hybrid import encoder_embeddings
    from cdssl.models import build_model

    torch.manual_seed(0)
    build_model(test_config, "ssl").save(tmp_path / "enc")
    encoder_embeddings(tmp_path / "enc", small_cache_path, 3, tmp_path / "a.npz")
    encoder_embeddings(tmp_path / "enc", small_cache_path, 3, tmp_path / "b.npz")
    encoder_embeddings(tmp_path / "enc", small_cache_path, 4, tmp_path / "c.npz")
    a, b, c = (np.load(tmp_path / f"{k}.npz") for k in "abc")
    assert list(a["ids"]) == GraphCache.load(small_cache_path).ids
    assert a["z"].shape == a["z_random"].shape and not np.allclose(a["z"], a["z_random"])
    assert np.array_equal(a["z_random"], b["z_random"])  # the twin is drawn with its seed
    assert not np.allclose(a["z_random"], c["z_random"]) and np.array_equal(a["z"], c["z"])


def _hybrid_runs() -> pd.DataFrame:
    """Networks and baselines of two cells, and a hybrid whose pretrained encoder helps
    by 0.1 against its control, which itself ties the descriptor baseline."""
    metrics, baselines, hybrids = [], [], []
    for fraction in (0.1, 0.2):
        for seed in range(3):
            common = {"dataset": "A", "fraction": fraction, "seed": seed, "units": "eV"}
            for mode, mae in (("sl", 1.5), ("ssl", 1.2)):
                metrics.append(
                    {
                        **common,
                        "mode": mode,
                        "test_mae": mae + 0.01 * seed,
                        "test_mae_mean_predictor": 3.0,
                        "test_mae_composition": 2.0,
                        **({"sigma": 0.5, "pretrain_seed": 0} if mode == "ssl" else {}),
                    }
                )
            baselines.append({**common, "test_mae_magpie_structure_boosting": 1.0 + 0.01 * seed})
            hybrids.append(
                {
                    "runs": [
                        {**common, "mode": "hybrid", "sigma": 0.5, "pretrain_seed": 0, "test_mae": 0.9 + 0.01 * seed},
                        {
                            **common,
                            "mode": "hybrid_random",
                            "sigma": 0.5,
                            "pretrain_seed": 0,
                            "test_mae": 1.0 + 0.01 * seed,
                        },
                    ]
                }
            )
    flat = [r for h in hybrids for r in h["runs"]]
    return runs_table([*metrics, *flat], baselines, backbone="megnet", pool="pool")


def test_hybrid_runs_keep_their_encoders_keys_and_the_floor_comes_from_the_networks():
    runs = _hybrid_runs()
    hybrid = runs[runs["family"] == "hybrid"]
    assert len(hybrid) == 6 and set(hybrid["sigma"]) == {0.5} and set(hybrid["pool"]) == {"pool"}
    assert set(hybrid["pretrain_seed"]) == {0}
    floor = runs[runs["family"] == "mean_predictor"]
    assert len(floor) == 6 and set(floor["test_mae"]) == {3.0}


def test_the_summary_says_what_the_pretrained_encoder_adds_beyond_the_descriptors():
    from cdssl.markdown import summary_lines
    from cdssl.statistics import cell_table
    from cdssl.verdicts import summarise

    runs = _hybrid_runs()
    summary = summarise(runs, cell_table(runs))
    (h,) = summary["hybrid"]
    assert Model(**h["model"]) == Model("hybrid", "megnet", 0.5, None, "pool")
    d = h["per_dataset"]["A"]
    assert d["hybrid_minus_strongest"]["name"] == "magpie_structure_boosting"
    assert d["hybrid_minus_strongest"]["mean"] == pytest.approx(-0.1)
    assert d["hybrid_minus_strongest"]["lower_in"] == 2
    assert d["hybrid_minus_random_init"]["mean"] == pytest.approx(-0.1)
    assert d["ssl_minus_hybrid"]["mean"] == pytest.approx(0.3)
    # the ssl model is compared with the hybrid of its own encoder
    others = {(c["other"]["family"], c["other"]["sigma"]) for c in summary["comparisons"]}
    assert ("hybrid", 0.5) in others and ("hybrid_random", 0.5) in others
    text = "\n".join(summary_lines(summary))
    assert "what pretraining adds, A: Hybrid (Magpie+structure + pretrained PCs)" in text
    assert "minus its random-init control -0.1" in text
    json.dumps(summary)  # summary.json is plain JSON


def test_with_two_pool_sizes_each_hybrid_meets_its_own_control_and_ssl():
    """The encoder's keys include its pool size: a hybrid is set against the random-init
    control and the ssl network of its own pool, never another size's."""
    from cdssl.statistics import cell_table
    from cdssl.verdicts import summarise

    runs = _hybrid_runs()
    encoded = runs[runs["family"].isin(["ssl", "hybrid", "hybrid_random"])].copy()
    encoded["pool_size"] = 100
    encoded["test_mae"] += encoded["family"].map({"ssl": 0.5, "hybrid": 0.0, "hybrid_random": 0.3})
    runs = pd.concat([runs, encoded], ignore_index=True)
    summary = summarise(runs, cell_table(runs))
    found = {h["model"]["pool_size"]: h["per_dataset"]["A"] for h in summary["hybrid"]}
    assert set(found) == {None, 100}
    assert found[None]["hybrid_minus_random_init"]["mean"] == pytest.approx(-0.1)
    assert found[100]["hybrid_minus_random_init"]["mean"] == pytest.approx(-0.4)
    assert found[None]["ssl_minus_hybrid"]["mean"] == pytest.approx(0.3)
    assert found[100]["ssl_minus_hybrid"]["mean"] == pytest.approx(0.8)
    pairs = {
        (c["model"]["pool_size"], c["other"]["pool_size"])
        for c in summary["comparisons"]
        if c["other"]["family"] in ("hybrid", "hybrid_random")
    }
    assert pairs == {(None, None), (100, 100)}
