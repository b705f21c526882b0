"""The shipped Materials Project files, the tool that rebuilds them, and the deduplicated pool."""

from __future__ import annotations

import gzip
import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from cdssl.data import build_table, load_matminer

DATA_DIR = Path(__file__).resolve().parents[1] / "data" / "matminer"

ROWS = {
    "matbench_dielectric": 4764,
    "dielectric_constant": 1056,
    "elastic_tensor_2015": 1181,
    "piezoelectric_tensor": 941,
    "flla": 3938,
}
UNION = ["dielectric_constant", "piezoelectric_tensor", "elastic_tensor_2015", "flla"]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ROWS))
def test_each_shipped_file_loads_through_matminer_with_its_rows(name):
    df = load_matminer(name, str(DATA_DIR))
    assert len(df) == ROWS[name]
    assert df["structure"].map(lambda s: s.is_ordered and len(s) > 0).all()
    if name != "matbench_dielectric":
        assert df["material_id"].is_unique


@pytest.fixture(scope="module")
def tool():
    sys.path.insert(0, str(DATA_DIR.parents[1] / "tools"))
    import make_embedded_data

    yield make_embedded_data
    sys.path.pop(0)


@pytest.fixture(scope="module")
def sdist(tool, tmp_path_factory):
    """matminer 0.4.2's source release, from the package index (as the tool fetches it)."""
    path = tool.pip_download(tool.SDIST, tmp_path_factory.mktemp("sdist"), sdist=True)
    assert tool.sha256(path) == tool.SDIST_SHA256
    return path


@pytest.mark.network
def test_rows_with_the_extra_index_field_parse_as_matminer_read_them(tool, sdist):
    df = tool.matminer_set(sdist, "dielectric_constant")
    first = df.iloc[0]
    # the row reads "0,0,1.88,..." under a header "idx,band_gap,...": the first field is
    # the written index, so band_gap is 1.88 eV, not 0
    assert first["material_id"] == "mp-441" and first["formula"] == "Rb2Te"
    assert first["band_gap"] == 1.88 and first["poly_total"] == 6.23
    assert (df["poly_total"] > 0).all() and len(df) == 1056


@pytest.mark.network
def test_a_flla_structure_literal_parses(tool, sdist):
    from pymatgen.core import Structure

    df = tool.matminer_set(sdist, "flla")
    row = df[df["material_id"] == "mp-10"].iloc[0]
    structure = Structure.from_dict(row["structure"])
    assert structure.composition.reduced_formula == "As" and len(structure) == 2
    assert row["formation_energy_per_atom"] == pytest.approx(0.1074050600000005)


@pytest.mark.network
def test_the_tool_rebuilds_every_shipped_file_with_the_same_content(tool):
    result = subprocess.run([sys.executable, tool.__file__, "--check"], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    verdicts = [line.split(", ", 1)[1] for line in result.stdout.splitlines() if " rows, " in line]
    assert len(verdicts) == len(ROWS) + 1  # and mp_2018 (cdssl.sources)
    assert "mp_2018.skipped.csv: identical" in result.stdout
    assert all(v == "identical" or v.startswith("equal within") for v in verdicts), result.stdout


def test_the_rebuild_check_forgives_the_last_bits_of_a_float_and_nothing_else(tool, tmp_path):
    # the shipped file's first structure, as another CPU's rounding could write it
    shipped = DATA_DIR / "dielectric_constant.json.gz"
    table = json.loads(gzip.decompress(shipped.read_bytes()))
    column = table["columns"].index("structure")
    xyz = table["data"][0][column]["sites"][0]["xyz"]

    def rebuilt(change, name="rebuilt") -> Path:
        copy = json.loads(json.dumps(table))
        change(copy["data"][0][column]["sites"][0])
        path = tmp_path / name / "dielectric_constant.json.gz"  # gzip records the file's name
        path.parent.mkdir(exist_ok=True)
        tool.write_split(pd.DataFrame(copy["data"], columns=copy["columns"]), path)
        return path

    shipped = rebuilt(lambda site: None, "shipped")
    assert tool.compare(rebuilt(lambda site: None), shipped) == "identical"
    last_bit = rebuilt(lambda site: site["xyz"].__setitem__(0, math.nextafter(xyz[0], math.inf)))
    assert tool.compare(last_bit, shipped).startswith("equal within")
    moved = rebuilt(lambda site: site["xyz"].__setitem__(0, xyz[0] + 1e-6))
    assert tool.compare(moved, shipped).startswith("DIFFERS: /data/0/")
    renamed = rebuilt(lambda site: site["species"][0].__setitem__("element", "Xe"))
    assert tool.compare(renamed, shipped).startswith("DIFFERS: /data/0/")


def _crystals(table):
    from pymatgen.core import Structure

    return [Structure.from_dict(s) for s in table["structure"]]


@pytest.mark.slow
def test_a_material_in_two_sets_is_once_in_the_pool_and_fine_tuning_crystals_never(tmp_path):
    from cdssl.matching import found_in

    entry = {"union": UNION, "target": None, "max_sites": 2}
    pool, skipped = build_table("pool", entry, str(DATA_DIR))
    # mp-22925 (AgI) is in dielectric_constant and piezoelectric_tensor: kept once, under
    # the first set of the union; the piezoelectric copy is listed as its repeat
    assert "dielectric_constant:mp-22925" in set(pool["id"])
    assert "piezoelectric_tensor:mp-22925" not in set(pool["id"])
    reason = skipped.set_index("id").loc["piezoelectric_tensor:mp-22925", "reason"]
    assert reason == "same structure as dielectric_constant:mp-22925"
    # no two crystals of the pool match each other
    crystals = _crystals(pool)
    for i, c in enumerate(crystals):
        assert found_in([c], crystals[:i], list(pool["id"][:i])) == [None]
    # exclusion: nothing of the fine-tuning set stays, matched by structure, not by id
    ft_entry = {"matminer": "piezoelectric_tensor", "id_column": "material_id", "target": "eij_max", "max_sites": 2}
    ft, _ = build_table("piezo", ft_entry, str(DATA_DIR))
    excluded, why = build_table("pool", {**entry, "exclude_finetune": True}, str(DATA_DIR), exclude={"piezo": ft})
    assert len(excluded) < len(pool)
    assert found_in(_crystals(excluded), _crystals(ft), list(ft["id"])) == [None] * len(excluded)
    assert why["reason"].str.contains("of fine-tuning dataset piezo").sum() == len(pool) - len(excluded)
    assert set(pd.concat([excluded["id"], why["id"]])) >= set(pool["id"])
