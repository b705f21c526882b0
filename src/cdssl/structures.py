"""Crystal structures from what datasets hold: pymatgen dicts, CIF text, POSCAR text.

One parser for every stage that reads crystals (the data stage counting sites and
matching duplicates, the graph stage, prediction for new crystals), so a structure that
one stage reads the others read the same way, and an unreadable one fails with the same
reason everywhere.
"""

from __future__ import annotations

from typing import Any


def _is_cif(text: str) -> bool:
    """CIF text names a data block and cell lengths; anything else is tried as POSCAR."""
    head = text.lstrip()
    return head.startswith("data_") or "_cell_length_a" in text or "\ndata_" in text


def _ordered_from_dict(payload: dict):
    """Structure(lattice, species, coords) straight from an ordered pymatgen dict.

    Four times faster than Structure.from_dict, which builds every site, species and
    property object; anything partially occupied or unusual returns None and takes the
    full parser, so disorder is still detected there.
    """
    from pymatgen.core import Lattice, Structure

    try:
        sites = payload["sites"]
        species = []
        for site in sites:
            (sp,) = site["species"]
            if sp.get("occu", 1) != 1:
                return None
            species.append(sp["element"])
        return Structure(Lattice(payload["lattice"]["matrix"]), species, [site["abc"] for site in sites])
    except (KeyError, TypeError, ValueError):
        return None


def parse_structure(payload: Any):
    """A pymatgen Structure from a dict, CIF text or POSCAR text; raises ValueError with
    the reason."""
    from pymatgen.core import Structure

    if isinstance(payload, dict):
        return _ordered_from_dict(payload) or Structure.from_dict(payload)
    if isinstance(payload, str) and not _is_cif(payload):
        try:
            return Structure.from_str(payload, fmt="poscar")
        except Exception as exc:  # pymatgen raises many types for bad POSCAR text
            raise ValueError(f"neither CIF nor readable POSCAR text ({type(exc).__name__}: {exc})") from exc
    if isinstance(payload, str):
        import warnings

        # pymatgen's CIF warnings would flood the log, but when parsing fails they hold the
        # cause ("Occupancy 2.0 exceeded tolerance": a site listed twice) and its exception
        # only "Invalid CIF file with no structures!": keep them for the skip reason
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                return Structure.from_str(payload, fmt="cif")
            except Exception as exc:
                lines = [line for w in caught for line in str(w.message).splitlines()]
                lines = [line for line in lines if not line.startswith("Issues encountered while parsing CIF")]
                causes = list(dict.fromkeys(reversed(lines)))  # pymatgen warns the most specific last
                causes = missing_coordinates(payload) + causes
                if not causes:
                    raise
                raise ValueError(f"{'; '.join(causes)} ({exc})") from exc
    raise ValueError(f"structure of type {type(payload).__name__} is neither a pymatgen dict nor CIF or POSCAR text")


COORDINATES = ("_atom_site_fract_x", "_atom_site_fract_y", "_atom_site_fract_z")


def missing_coordinates(cif: str) -> list[str]:
    """Sites of a CIF whose fractional coordinates are absent or unknown (``?``, ``.``),
    by label, as one reason ("sites Cl1, Cl2 have no fractional coordinates (x, y, z: ?)"),
    or [] when every site has its three (or the CIF cannot be read as blocks)."""
    from pymatgen.io.cif import CifFile

    try:
        blocks = CifFile.from_str(cif).data.values()
    except Exception:  # pymatgen raises many types for bad text; the parser's own reason stands
        return []
    reasons = []
    for block in blocks:
        data = block.data
        labels = data.get("_atom_site_label") or data.get("_atom_site_type_symbol") or []
        columns = [data.get(key) for key in COORDINATES]
        if not labels or not isinstance(labels, list):
            continue
        missing = []
        for i, label in enumerate(labels):
            values = [c[i] if isinstance(c, list) and i < len(c) else None for c in columns]
            bad = [
                f"{axis}: {v if v is not None else 'absent'}"
                for axis, v in zip("xyz", values, strict=True)
                if v is None or v.strip() in ("?", ".")
            ]
            if bad:
                missing.append(f"{label} ({', '.join(bad)})")
        if missing:
            reasons.append(f"site(s) without fractional coordinates: {', '.join(missing)}")
    return reasons


def n_sites(structure: Any) -> int | None:
    """Sites of a pymatgen dict, or of CIF or POSCAR text once parsed; None when it cannot
    be parsed (the graph stage then reports why)."""
    if isinstance(structure, dict):
        return len(structure.get("sites", []))
    try:
        return len(parse_structure(structure))
    except Exception:  # pymatgen raises many types for bad text
        return None


def parsed_or_none(payload: Any) -> Any:
    """The parsed structure, or None: for a stage that leaves the reporting of an
    unreadable structure to the graph stage of the dataset that owns it."""
    try:
        return parse_structure(payload)
    except Exception:  # pymatgen raises many types for bad text
        return None
