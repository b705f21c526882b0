"""The baselines' own procedure: structure features, rounding that makes boosting the same
on any CPU, and the one boosting grid of every config."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest


@pytest.fixture(scope="module")
def real_cell(dielectric):
    """Magpie+structure features of 160 real crystals, a target that depends on both
    composition and structure (log volume per atom plus mean electronegativity)."""
    from cdssl.features import magpie_structure_features
    from cdssl.graphs import GraphCache, build_cache

    small = dielectric[dielectric["structure"].map(len) <= 8].head(160)
    table = pd.DataFrame(
        {"id": [str(i) for i in small.index], "structure": [s.as_dict() for s in small["structure"]], "target": 0.0}
    )
    cache, _ = build_cache(table, 5.0)
    x, labels = magpie_structure_features(GraphCache(cache))
    y = x[:, labels.index("log10_volume_per_atom")] + 0.3 * x[:, labels.index("MagpieData mean Electronegativity")]
    return x, labels, y, [s for s in small["structure"]]


def test_structure_features_are_magpie_beside_what_pymatgen_says_of_each_crystal(real_cell):
    from cdssl.features import STRUCTURE_LABELS

    x, labels, _, crystals = real_cell
    assert labels[:132] == [lab for lab in labels if lab.startswith("MagpieData")]
    assert labels[132:] == list(STRUCTURE_LABELS)
    col = {name: x[:, labels.index(name)] for name in STRUCTURE_LABELS}
    # the cache holds float32 positions: density and volume agree to that precision
    assert col["density"] == pytest.approx([float(c.density) for c in crystals], rel=1e-5)
    assert col["volume_per_atom"] == pytest.approx([c.volume / len(c) for c in crystals], rel=1e-5)
    assert col["n_sites"].tolist() == [float(len(c)) for c in crystals]
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    first = SpacegroupAnalyzer(crystals[0]).get_space_group_number()
    assert col["spacegroup_number"][0] == first
    assert np.isfinite(x).all()


def test_an_element_without_a_radius_leaves_packing_fraction_empty_not_a_crash():
    from pymatgen.core import Lattice, Structure

    from cdssl.features import STRUCTURE_LABELS, structure_row

    xenon = Structure(Lattice.cubic(6.2), ["Xe"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    row = dict(zip(STRUCTURE_LABELS, structure_row(xenon), strict=True))
    assert np.isnan(row["packing_fraction"])
    assert row["spacegroup_number"] == 225 and row["n_sites"] == 4


def test_rounding_hides_differences_below_the_kept_bit():
    from cdssl.baselines import MANTISSA_BITS, rounded

    x = np.array([[1.234567891, -0.000123456789, 0.0, np.nan, 98765.4321, np.inf, 229.0, 2.5]])
    out = rounded(x)
    finite = np.isfinite(x[0]) & (x[0] != 0)
    assert np.all(np.abs(out[0, finite] / x[0, finite] - 1) <= 2.0**-MANTISSA_BITS)
    # small integers and short binary fractions (atom counts, space groups) stay exact
    assert out[0, 2] == 0.0 and out[0, 6] == 229.0 and out[0, 7] == 2.5
    assert np.isnan(out[0, 3]) and out[0, 5] == np.inf
    jitter = x * (1 + 1e-12 * np.random.default_rng(0).normal(size=x.shape))
    assert np.array_equal(rounded(jitter), out, equal_nan=True)
    assert np.array_equal(rounded(out), out, equal_nan=True)


def test_a_last_bit_jitter_of_the_inputs_gives_the_same_baseline(real_cell):
    """Boosting bins features at the midpoints of their distinct values: without the
    rounding a 1e-12 jitter makes equal Magpie values distinct and grows other trees."""
    from cdssl.baselines import feature_baselines
    from cdssl.splits import finetune_split

    x, _, y, _ = real_cell
    train, val, test = finetune_split(len(y), 0, 0.7, 0.2, 0.1)
    grid = {"learning_rates": [0.1], "min_samples_leaf": [5], "max_iter": 60}
    jittered = x * (1 + 1e-12 * np.random.default_rng(1).normal(size=x.shape))
    a = feature_baselines("s", x, y, train, val, test, grid, 0)
    b = feature_baselines("s", jittered, y, train, val, test, grid, 0)
    assert a == b  # every MAE and setting, bit for bit
    # the procedure's own noise is measured and small beside the error
    sd = a["s_boosting_params"]["procedure_sd"]
    assert 0 <= sd < 0.2 * a["test_mae_s_boosting"]


def test_the_boosting_grid_is_one_for_every_config(test_config, tmp_path, root):
    import yaml

    from cdssl.config import ConfigError, load_config

    grid = load_config(root / "config" / "demo.yaml")["analysis"]["boosting"]
    assert (
        grid
        == test_config["analysis"]["boosting"]
        == {
            "learning_rates": [0.03, 0.1],
            "min_samples_leaf": [5, 20],
            "max_iter": 500,
        }
    )
    for name in ("config.yaml", "demo.yaml", "study.yaml", "converged.yaml", "budget.yaml", "backbones.yaml"):
        assert load_config(root / "config" / name)["analysis"]["boosting"] == grid, name
    raw = yaml.safe_load((root / "config" / "test.yaml").read_text())
    other = copy.deepcopy(raw)
    other.setdefault("analysis", {})["boosting"] = {"learning_rates": [0.1], "min_samples_leaf": [10], "max_iter": 200}
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump(other))
    with pytest.raises(ConfigError, match="boosting"):
        load_config(path)
