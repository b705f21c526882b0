"""Structure identity across datasets: the same material found by its crystal, not its name.

Two Materials Project sets of different years hold the same material under slightly
different relaxations, and a user's file may give no id at all, so identity is decided by
pymatgen's StructureMatcher (its default tolerances, elements compared without oxidation
states), within buckets of equal reduced formula so that the pairwise fits stay few.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Hashable, Sequence

from pymatgen.analysis.structure_matcher import ElementComparator, StructureMatcher
from pymatgen.core import Structure


def _matcher() -> StructureMatcher:
    return StructureMatcher(comparator=ElementComparator())


def _reduced(structure: Structure) -> Structure:
    """Niggli cell, then primitive cell: what StructureMatcher.fit reduces to. Done once per
    structure here, because fit's own cache compares structures site by site on every
    lookup and made matching the union of the embedded sets take minutes."""
    return structure.get_reduced_structure(reduction_algo="niggli").get_primitive_structure()


def _fit(matcher: StructureMatcher, a: Structure, b: Structure) -> bool:
    return matcher.fit(a, b, skip_structure_reduction=True)


def _bucket(structure: Structure) -> str:
    return structure.composition.element_composition.reduced_formula


def duplicates(
    structures: Sequence[Structure], ids: Sequence[str], groups: Sequence[Hashable] | None = None
) -> list[str | None]:
    """For each structure, the id of the first earlier structure it matches, else None.

    The first of every group of equal crystals is kept (None), so the outcome depends on
    the order given, which the caller fixes. ``groups`` (e.g. a source's own space group
    numbers) narrows the buckets further: only structures of one reduced formula and one
    group are fitted against each other (at 30,000 OQMD crystals this cuts the candidate
    pairs from about 25,000 to 6,400; the source must give the group consistently).
    """
    matcher = _matcher()
    keys = [_bucket(s) for s in structures]
    if groups is not None:
        keys = [f"{k}|{g}" for k, g in zip(keys, groups, strict=True)]
    sizes = Counter(keys)
    # only crystals that share a reduced formula with another are ever fitted
    reduced = {i: _reduced(s) for i, s in enumerate(structures) if sizes[keys[i]] > 1}
    kept: dict[str, list[int]] = defaultdict(list)
    out: list[str | None] = []
    for i in range(len(structures)):
        bucket = kept[keys[i]]
        twin = next((j for j in bucket if _fit(matcher, reduced[j], reduced[i])), None)
        if twin is None:
            bucket.append(i)
            out.append(None)
        else:
            out.append(ids[twin])
    return out


def found_in(
    structures: Sequence[Structure], reference: Sequence[Structure], reference_ids: Sequence[str]
) -> list[str | None]:
    """For each structure, the id of a reference structure it matches, else None."""
    matcher = _matcher()
    buckets: dict[str, list[int]] = defaultdict(list)
    for j, structure in enumerate(reference):
        buckets[_bucket(structure)].append(j)
    reduced_reference: dict[int, Structure] = {}
    out: list[str | None] = []
    for structure in structures:
        candidates = buckets.get(_bucket(structure), [])
        twin = None
        if candidates:
            mine = _reduced(structure)
            for j in candidates:
                if j not in reduced_reference:
                    reduced_reference[j] = _reduced(reference[j])
                if _fit(matcher, reduced_reference[j], mine):
                    twin = j
                    break
        out.append(None if twin is None else reference_ids[twin])
    return out
