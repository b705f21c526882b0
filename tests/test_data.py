"""Data and graph stages on real structures plus broken inputs written here."""

import hashlib
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifWriter

from cdssl.data import DataError, build_table, clean_targets, load_matminer, read_table, take_pool, write_table
from cdssl.graphs import GraphCache, UnknownElementError, build_cache


def test_embedded_data_loads_through_matminer(dielectric):
    assert len(dielectric) == 4764
    assert list(dielectric.columns) == ["structure", "n"]
    assert isinstance(dielectric["structure"].iloc[0], Structure)


def test_missing_dataset_offline_names_file_and_directory(tmp_path, monkeypatch):
    # a closed local proxy makes the real matminer download fail fast, network or not
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    with pytest.raises(DataError) as err:
        load_matminer("matbench_phonons", str(tmp_path / "mm"))
    msg = str(err.value)
    assert "matbench_phonons.json.gz" in msg and str(tmp_path / "mm") in msg and "place it" in msg
    assert not (tmp_path / "mm" / "matbench_phonons.json.gz").exists()


def test_clean_targets_counts_every_dropped_row():
    values, counts, reasons = clean_targets(pd.Series([1.0, np.nan, -2.0, 0.0, np.inf, "x", 100.0]), "log10")
    assert counts == {"missing": 1, "non_numeric": 1, "non_finite": 1, "out_of_range": 0, "non_positive_for_log10": 2}
    assert values.iloc[0] == 0.0 and values.iloc[6] == 2.0
    assert values.notna().sum() == 2
    assert reasons.tolist() == [
        None,
        "target missing",
        "target not positive (transform log10)",
        "target not positive (transform log10)",
        "target not finite",
        "target not a number",
        None,
    ]


def _cif(structure: Structure) -> str:
    return str(CifWriter(structure))


@pytest.fixture(scope="module")
def broken_csv(tmp_path_factory, dielectric):
    good = dielectric["structure"].iloc[1]
    nacl = Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    disordered = Structure(Lattice.cubic(3.6), [{"Fe": 0.5, "Ni": 0.5}], [[0, 0, 0]])
    lonely = Structure(Lattice.cubic(12.0), ["Na", "Cl", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0.6]])
    # a site listed twice: pymatgen's exception says only "Invalid CIF file with no
    # structures!", its warnings say why
    lines = _cif(nacl).splitlines()
    na = max(i for i, line in enumerate(lines) if line.strip().startswith("Na"))
    doubled = "\n".join([*lines[: na + 1], lines[na], *lines[na + 1 :]])
    rows = [
        ("good-1", _cif(good), 2.0),
        ("good-2", _cif(nacl), 1.5),
        ("garbage", "data_broken\n_cell_length_a what\nthis is not a CIF", 1.2),
        ("partial", _cif(disordered), 1.3),
        ("isolated", _cif(lonely), 1.4),
        ("doubled-site", doubled, 1.6),
        ("nan-label", _cif(nacl), float("nan")),
        ("negative", _cif(nacl), -3.0),
    ]
    path = tmp_path_factory.mktemp("user") / "mine.csv"
    pd.DataFrame(rows, columns=["name", "cif", "y"]).to_csv(path, index=False)
    return path


def test_user_csv_drops_bad_labels_with_counts(broken_csv, caplog):
    entry = {
        "file": str(broken_csv),
        "structure_column": "cif",
        "id_column": "name",
        "target": "y",
        "transform": "log10",
    }
    with caplog.at_level(logging.WARNING, logger="cdssl"):
        logging.getLogger("cdssl").propagate = True
        table, _ = build_table("mine", entry)
    assert list(table["id"]) == ["good-1", "good-2", "garbage", "partial", "isolated", "doubled-site"]
    assert "dropped 1 row(s) with missing target" in caplog.text
    assert "dropped 1 row(s) with non positive for log10 target" in caplog.text
    assert math.isclose(table["target"].iloc[0], math.log10(2.0))


def test_graph_stage_skips_bad_structures_with_reasons(broken_csv):
    table, _ = build_table(
        "mine", {"file": str(broken_csv), "structure_column": "cif", "id_column": "name", "target": "y"}
    )
    cache, skipped = build_cache(table, 5.0, processes=2)
    # nan-label never reaches the graph stage; without log10 the negative target is valid
    assert cache["ids"] == ["good-1", "good-2", "negative"]
    reasons = dict(zip(skipped["id"], skipped["reason"], strict=True))
    assert reasons["garbage"].startswith("unparsable")
    assert reasons["partial"].startswith("disordered: site 0")
    assert reasons["isolated"].startswith("isolated atom: site 0 (Na)")
    assert reasons["doubled-site"].startswith("unparsable structure: ValueError: Occupancy 2.0 exceeded tolerance.")
    assert set(reasons) == {"garbage", "partial", "isolated", "doubled-site"}


def test_unknown_elements_are_skipped_with_every_element_named_or_stop_on_request(small_table):
    porn = Structure(Lattice.cubic(4.4), ["Po", "Rn", "Na"], [[0, 0, 0], [0.5, 0.5, 0.5], [0, 0.5, 0.5]])
    extra = pd.DataFrame([{"id": "porn", "structure": porn.as_dict(), "target": 0.1}])
    table = pd.concat([small_table.head(2), extra, small_table.iloc[2:4]], ignore_index=True)
    cache, skipped = build_cache(table, 5.0)
    assert cache["ids"] == [table["id"][i] for i in (0, 1, 3, 4)]
    assert skipped["id"].tolist() == ["porn"] and skipped["reason"][0].startswith("unknown element(s) Po, Rn:")
    with pytest.raises(UnknownElementError, match="structure porn: unknown element.s. Po, Rn"):
        build_cache(table, 5.0, unknown_elements="error")


def test_table_round_trip_and_pools_are_disjoint(tmp_path, small_table):
    write_table(small_table, tmp_path / "t.json.gz")
    back = read_table(tmp_path / "t.json.gz")
    assert back["id"].tolist() == small_table["id"].tolist()
    assert np.allclose(back["target"], small_table["target"])
    spec = {"seed": 3, "sizes": {"a": 15, "b": 20}}
    a = take_pool(small_table, {**spec, "take": "a"})
    b = take_pool(small_table, {**spec, "take": "b"})
    assert len(a) == 15 and len(b) == 20 and not set(a["id"]) & set(b["id"])
    with pytest.raises(DataError, match="need 41 rows"):
        take_pool(small_table, {"seed": 0, "sizes": {"a": 41}, "take": "a"})


@pytest.mark.slow
def test_demo_pools_come_from_the_real_loader(root):
    base = {"matminer": "matbench_dielectric", "target": "n", "transform": "log10", "max_sites": 6}
    sizes = {"pretrain": 30, "labelled": 20}
    pre, _ = build_table(
        "u",
        {**base, "target": None, "pool": {"seed": 0, "sizes": sizes, "take": "pretrain"}},
        str(root / "data/matminer"),
    )
    lab, _ = build_table(
        "l", {**base, "pool": {"seed": 0, "sizes": sizes, "take": "labelled"}}, str(root / "data/matminer")
    )
    assert len(pre) == 30 and len(lab) == 20 and not set(pre["id"]) & set(lab["id"])
    assert pre["target"].isna().all() and lab["target"].notna().all()
    assert all(len(s["sites"]) <= 6 for s in lab["structure"])


def test_cache_batches_reproduce_matgl_own_prediction(small_table, small_cache_path, test_config):
    """Precomputed geometry must give MEGNet exactly what MatGL's own path gives it."""
    import torch

    from cdssl.models import build_model, predict

    torch.manual_seed(0)
    model = build_model(test_config, "sl").eval()
    cache = GraphCache.load(small_cache_path, 5.0)
    ours = predict(model, cache.collate([0, 3, 7])).detach()
    theirs = torch.stack(
        [model.predict_structure(Structure.from_dict(small_table["structure"].iloc[i])) for i in (0, 3, 7)]
    )
    assert torch.allclose(ours, theirs.reshape(-1), atol=1e-5)


def test_cached_density_and_volume_match_pymatgen(small_table, small_cache_path):
    cache = GraphCache.load(small_cache_path, 5.0)
    for i in (0, 5, 17):
        s = Structure.from_dict(small_table["structure"].iloc[i])
        assert math.isclose(cache.data["density"][i].item(), s.density, rel_tol=1e-5)
        assert math.isclose(cache.data["volume"][i].item(), s.volume, rel_tol=1e-5)


def test_fast_parser_agrees_with_pymatgen_and_defers_disorder(small_table):
    from cdssl.structures import _ordered_from_dict, parse_structure

    d = small_table["structure"].iloc[3]
    assert parse_structure(d) == Structure.from_dict(d)
    disordered = Structure(Lattice.cubic(3.6), [{"Fe": 0.5, "Ni": 0.5}], [[0, 0, 0]]).as_dict()
    assert _ordered_from_dict(disordered) is None
    assert not parse_structure(disordered).is_ordered


def test_one_parser_reads_cif_and_poscar_text_alike_and_says_why_text_is_unreadable(small_table):
    from pymatgen.io.cif import CifWriter
    from pymatgen.io.vasp import Poscar

    from cdssl.structures import n_sites, parse_structure

    crystal = Structure.from_dict(small_table["structure"].iloc[3])
    from_cif = parse_structure(str(CifWriter(crystal)))
    from_poscar = parse_structure(Poscar(crystal).get_str())
    for parsed in (from_cif, from_poscar):
        assert parsed.composition == crystal.composition and len(parsed) == len(crystal)
        assert parsed.lattice.volume == pytest.approx(crystal.volume, rel=1e-5)
    assert n_sites(Poscar(crystal).get_str()) == len(crystal)
    with pytest.raises(ValueError, match="neither CIF nor readable POSCAR"):
        parse_structure("not a crystal\n1.0\n")
    assert n_sites("not a crystal") is None


def _labelled_csv(tmp_path, dielectric) -> Path:
    """40 real crystals whose label is missing or non-positive in every fourth row."""
    small = dielectric[dielectric["structure"].map(len) <= 6].head(40)
    y = small["n"].to_numpy().copy()
    y[::4] = -1.0
    path = tmp_path / "mixed.csv"
    pd.DataFrame({"cif": [_cif(s) for s in small["structure"]], "y": y, "name": [f"r{i}" for i in range(40)]}).to_csv(
        path, index=False
    )
    return path


def test_pools_stay_disjoint_when_the_labelled_entry_drops_rows(tmp_path, dielectric):
    path = _labelled_csv(tmp_path, dielectric)
    pool = {"seed": 0, "sizes": {"pretrain": 20, "labelled": 20}}
    common = {"file": str(path), "structure_column": "cif", "id_column": "name"}
    pre, _ = build_table("pre", {**common, "target": None, "pool": {**pool, "take": "pretrain"}})
    lab, dropped = build_table(
        "lab", {**common, "target": "y", "transform": "log10", "pool": {**pool, "take": "labelled"}}
    )
    assert len(pre) == 20 and 0 < len(lab) < 20
    assert not set(pre["id"]) & set(lab["id"]) and not set(pre["id"]) & set(dropped["id"])
    assert set(dropped["reason"]) == {"target not positive (transform log10)"}


def test_max_sites_applies_to_cif_text(tmp_path, dielectric):
    path = _labelled_csv(tmp_path, dielectric)
    table, dropped = build_table(
        "cif", {"file": str(path), "structure_column": "cif", "id_column": "name", "target": None, "max_sites": 3}
    )
    n = {f"r{i}": len(s) for i, s in enumerate(dielectric[dielectric["structure"].map(len) <= 6].head(40)["structure"])}
    assert set(table["id"]) == {k for k, v in n.items() if v <= 3}
    assert dict(zip(dropped["id"], dropped["reason"], strict=True)) == {
        k: f"{v} sites, more than max_sites 3" for k, v in n.items() if v > 3
    }


@pytest.mark.parametrize("layout", ["records", "split", "columns", "id-keyed"])
def test_json_layouts_load(tmp_path, small_table, layout):
    import json

    df = small_table.head(5).rename(columns={"target": "y", "id": "material_id"})
    if layout == "id-keyed":
        raw = {r.material_id: {"structure": r.structure, "y": r.y} for r in df.itertuples()}
    else:
        raw = json.loads(df.to_json(orient=layout))
    path = tmp_path / f"{layout}.json"
    path.write_text(json.dumps(raw))
    entry = {"file": str(path), "target": "y"}
    if layout != "id-keyed":
        entry["id_column"] = "material_id"
    table, _ = build_table("j", entry)
    assert table["id"].tolist() == df["material_id"].tolist()
    assert np.allclose(table["target"], df["y"])
    assert Structure.from_dict(table["structure"].iloc[0]) == Structure.from_dict(df["structure"].iloc[0])


def test_a_truncated_cache_names_its_path(tmp_path, small_cache_path):
    from cdssl.graphs import CacheError

    bad = tmp_path / "graphs.pt"
    bad.write_bytes(small_cache_path.read_bytes()[:5000])
    with pytest.raises(CacheError, match=f"graph cache {bad} cannot be read.*--forcerun {bad}"):
        GraphCache.load(bad, 5.0)


def test_the_same_table_gives_the_same_cache_bytes_and_a_stored_digest(tmp_path, small_table):
    from cdssl.graphs import save_cache
    from cdssl.utils import DIGEST_SUFFIX, file_digest

    def written(name: str) -> tuple[bytes, bytes]:
        write_table(small_table, tmp_path / name / "table.json.gz")
        cache, _ = build_cache(small_table.head(8), 5.0)
        save_cache(cache, tmp_path / name / "graphs.pt")
        return (tmp_path / name / "table.json.gz").read_bytes(), (tmp_path / name / "graphs.pt").read_bytes()

    first = written("a")
    time.sleep(1.1)  # gzip stamps seconds into its header; torch.save once named its archive after a random file
    assert written("a") == first and written("b") == first
    graphs = tmp_path / "a" / "graphs.pt"
    digest = hashlib.sha256(graphs.read_bytes()).hexdigest()
    assert json.loads((tmp_path / "a" / f"graphs.pt{DIGEST_SUFFIX}").read_text())["sha256"] == digest
    assert file_digest(graphs) == digest
    # a cache changed after its digest was stored is hashed again, not trusted
    graphs.write_bytes(graphs.read_bytes() + b"\0")
    assert file_digest(graphs) == hashlib.sha256(graphs.read_bytes()).hexdigest() != digest


def test_outputs_respect_the_umask(tmp_path):
    import os

    from cdssl.utils import write_json

    old = os.umask(0o022)
    try:
        write_json({"a": 1}, tmp_path / "a.json")
        os.umask(0o077)
        write_json({"a": 1}, tmp_path / "b.json")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o600


def test_a_cif_without_coordinates_names_its_sites_and_the_whole_reason_is_kept(small_table):
    """A CIF whose atom loop leaves coordinates unknown (as some ICSD-derived files do)
    says which sites, and skipped.csv keeps the reason whole, however long."""
    sites = "\n".join(f"Cl{i} Cl 0.{i} 0.1 ?" for i in range(1, 40))
    cif = (
        "data_AlCl3\n_cell_length_a 5.9\n_cell_length_b 10.2\n_cell_length_c 6.1\n_cell_angle_alpha 90\n"
        "_cell_angle_beta 108\n_cell_angle_gamma 90\n_symmetry_space_group_name_H-M 'P 1'\nloop_\n"
        "_atom_site_label\n_atom_site_type_symbol\n_atom_site_fract_x\n_atom_site_fract_y\n_atom_site_fract_z\n"
        f"Al1 Al 0.0 0.166 0.0\n{sites}\n"
    )
    table = pd.concat(
        [small_table.head(2), pd.DataFrame([{"id": "alcl3", "structure": cif, "target": 0.1}])], ignore_index=True
    )
    _, skipped = build_cache(table, 5.0)
    (reason,) = skipped["reason"]
    assert reason.startswith("unparsable structure: ValueError: site(s) without fractional coordinates: Cl1 (z: ?)")
    assert "Cl39 (z: ?)" in reason and len(reason) > 400
