"""Shared fixtures: small slices of the real embedded data, and tiny configs."""

from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT / "data" / "matminer"


def _shares_a_module_fixture(item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    return any(d.scope in ("module", "class") for defs in info.name2fixturedefs.values() for d in defs)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Two orderings.

    The slow tier runs with ``pytest-xdist --dist loadgroup``: a test that uses a fixture
    built once per module (a finished tiny run, a base run to change) joins its module's
    group, so one worker builds that fixture once and runs its tests; every other test goes
    to whichever worker is free. The groups hold the longest work, so they are sent first
    and then the single tests marked ``long`` (whole workflows); the short ones fill the
    gaps (longest first keeps the two workers' ends close).
    This runs before xdist's own hook, which reads the group marks.

    ``CDSSL_TEST_ORDER=reverse`` then runs the tests back to front: no test may depend on
    state (files, installed tools) that an earlier one leaves behind."""
    import os

    groups: dict[str, list] = {}
    single, long = [], []
    for item in items:
        if _shares_a_module_fixture(item):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
            groups.setdefault(item.module.__name__, []).append(item)
        else:
            (long if item.get_closest_marker("long") else single).append(item)
    # a group's test count stands in for its length; then the single tests marked long
    ordered = sorted(groups.values(), key=len, reverse=True)
    items[:] = [item for group in ordered for item in group] + long + single
    if os.environ.get("CDSSL_TEST_ORDER") == "reverse":
        items.reverse()


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def test_config() -> dict:
    from cdssl.config import load_config

    return load_config(ROOT / "config" / "test.yaml")


@pytest.fixture
def config(test_config) -> dict:
    """test.yaml with one noise scale (it sweeps two): the unit tests train one model."""
    config = copy.deepcopy(test_config)
    config["pretrain"]["sigma"] = 0.5
    return config


@pytest.fixture(scope="session")
def dielectric() -> pd.DataFrame:
    """The real embedded dataset, through matminer's own loader."""
    from cdssl.data import load_matminer

    return load_matminer("matbench_dielectric", str(DATA_DIR))


@pytest.fixture(scope="session")
def small_table(dielectric) -> pd.DataFrame:
    """40 real structures with at most 8 sites, as the data stage writes them."""
    import numpy as np

    from cdssl.data import COLUMNS

    small = dielectric[dielectric["structure"].map(len) <= 8].head(40)
    return pd.DataFrame(
        {
            "id": [f"mb-dielectric-{i + 1:04d}" for i in small.index],
            "structure": [s.as_dict() for s in small["structure"]],
            "target": np.log10(small["n"].to_numpy()),
        }
    )[COLUMNS]


@pytest.fixture(scope="session")
def small_cache_path(small_table, tmp_path_factory) -> Path:
    from cdssl.graphs import build_cache, save_cache

    cache, skipped = build_cache(small_table, 5.0)
    assert skipped.empty
    path = tmp_path_factory.mktemp("graphs") / "graphs.pt"
    save_cache(cache, path)
    return path
