"""Write a few textbook crystals as CIF files, to try ``cdssl-predict`` on.

    .venv/bin/python tools/example_crystals.py examples

Rock salt NaCl, MgO and LiF and diamond-cubic Si (8 sites each: conventional cells at
their room-temperature lattice constants), built with pymatgen; any other CIF works
the same way.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pymatgen.core import Lattice, Structure

ROCK_SALT = [[0, 0, 0], [0.5, 0.5, 0.5]]
# lattice constants in Angstrom
CRYSTALS = {
    "NaCl": ("Fm-3m", 5.640, ["Na", "Cl"], ROCK_SALT),
    "MgO": ("Fm-3m", 4.212, ["Mg", "O"], ROCK_SALT),
    "Si": ("Fd-3m", 5.431, ["Si"], [[0, 0, 0]]),
    "LiF": ("Fm-3m", 4.027, ["Li", "F"], ROCK_SALT),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="folder for the CIF files")
    out = Path(ap.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    for name, (group, a, species, coords) in CRYSTALS.items():
        structure = Structure.from_spacegroup(group, Lattice.cubic(a), species, coords)
        structure.to(filename=str(out / f"{name}.cif"))
        print(f"{out / name}.cif: {structure.composition.reduced_formula}, {len(structure)} sites")


if __name__ == "__main__":
    main()
