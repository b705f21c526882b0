"""Features of a crystal that no model of this pipeline learned: what the field's
baselines regress on.

* ``magpie``: matminer's Magpie preset (``ElementProperty.from_preset("magpie")``, 132
  statistics of tabulated element properties, shipped inside matminer). Composition only.
* ``magpie_structure``: Magpie and, beside it, the structure numbers the field adds for
  small property sets, all from matminer or pymatgen and cheap at tens of thousands of
  crystals (about 6 ms per crystal, most of it the symmetry search): density, volume
  per atom and its log, packing fraction (matminer ``DensityFeatures``; empty for a
  crystal with an element pymatgen gives no atomic radius, e.g. the noble gases), the
  atom count and its log, and the space group number, crystal system, centrosymmetry
  and count of symmetry operations (matminer ``GlobalSymmetryFeatures``, spglib at
  pymatgen's default tolerance). The strongest answer here that uses no pretraining.
* ``chgnet``: the 64-number crystal feature of CHGNet 0.3.0 (Deng et al. 2023; the
  ``chgnet`` wheel ships its weights), the pooled atom features before its energy
  readout, read with the model frozen. CHGNet was trained on MPtrj: energies, forces,
  stresses and magnetic moments along Materials Project relaxations of about 146,000
  materials. It never saw the property a fine-tuning set is labelled with, but it has
  seen most Materials Project crystals, those of the embedded sets included, and far
  more structures than this pipeline pretrains on: it is the strongest "pretrained
  elsewhere" answer, not a like-for-like rival of an encoder pretrained on the pool.

Each depends only on a dataset's structures, so each is computed once per dataset, row
for row with its graph cache.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from .graphs import GraphCache, element_types
from .utils import LOG, atomic_path

FEATURIZERS = ("magpie", "magpie_structure", "chgnet")
CHGNET_VERSION = "0.3.0"


def compositions(cache: GraphCache) -> list:
    """Each graph's composition, from the cache's node types."""
    from pymatgen.core import Composition

    elements = element_types()
    types = cache.data["node_type"].long()
    out = []
    for i in range(len(cache)):
        counts = torch.bincount(types[int(cache.node_ptr[i]) : int(cache.node_ptr[i + 1])], minlength=len(elements))
        out.append(Composition({elements[t]: int(c) for t, c in enumerate(counts.tolist()) if c}))
    return out


def structures(cache: GraphCache, start: int = 0, stop: int | None = None) -> list:
    """Graphs ``start:stop``'s crystals, rebuilt from the cache (lattice, species, Cartesian
    positions); all of them by default."""
    from pymatgen.core import Lattice, Structure

    elements = element_types()
    types, pos = cache.data["node_type"].long(), cache.data["pos"].double()
    out = []
    for i in range(start, len(cache) if stop is None else min(stop, len(cache))):
        first, last = int(cache.node_ptr[i]), int(cache.node_ptr[i + 1])
        out.append(
            Structure(
                Lattice(cache.data["lattice"][i].double().numpy()),
                [elements[t] for t in types[first:last].tolist()],
                pos[first:last].numpy(),
                coords_are_cartesian=True,
            )
        )
    return out


def magpie_features(cache: GraphCache) -> tuple[np.ndarray, list[str]]:
    """Magpie statistics of each graph's composition; missing element data imputed by
    matminer. Featurised once per distinct reduced formula."""
    from matminer.featurizers.composition import ElementProperty

    featurizer = ElementProperty.from_preset("magpie", impute_nan=True)
    comps = compositions(cache)
    rows: dict[str, list[float]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # matminer warns once per imputed element
        for comp in comps:
            key = comp.reduced_formula
            if key not in rows:
                rows[key] = featurizer.featurize(comp)
    x = np.array([rows[c.reduced_formula] for c in comps], dtype=np.float64)
    return x, list(featurizer.feature_labels())


STRUCTURE_LABELS = (
    "density",
    "volume_per_atom",
    "log10_volume_per_atom",
    "packing_fraction",
    "n_sites",
    "log10_n_sites",
    "spacegroup_number",
    "crystal_system_int",
    "is_centrosymmetric",
    "n_symmetry_ops",
)


def structure_row(structure) -> list[float]:
    """One crystal's structure numbers, in :data:`STRUCTURE_LABELS` order. A number that
    cannot be computed (an element with no tabulated radius; a symmetry search that
    fails) is NaN: gradient boosting routes it, ridge imputes it on the training split."""
    from matminer.featurizers.structure import DensityFeatures, GlobalSymmetryFeatures

    n = len(structure)
    volume_per_atom = structure.volume / n
    try:
        packing = float(DensityFeatures(desired_features=["packing fraction"]).featurize(structure)[0])
    except (TypeError, ValueError, AttributeError):  # atomic_radius is None for the element
        packing = np.nan
    try:
        number, _, system, centro, ops = GlobalSymmetryFeatures().featurize(structure)
        symmetry = [float(number), float(system), float(centro), float(ops)]
    except Exception:  # spglib gives up on a few distorted cells; say so by a NaN, not a crash
        symmetry = [np.nan] * 4
    return [
        float(structure.density),
        volume_per_atom,
        float(np.log10(volume_per_atom)),
        packing,
        float(n),
        float(np.log10(n)),
        *symmetry,
    ]


def magpie_structure_features(cache: GraphCache) -> tuple[np.ndarray, list[str]]:
    """Magpie beside each crystal's structure numbers (:func:`structure_row`)."""
    magpie, labels = magpie_features(cache)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # spglib and pymatgen warn on near-degenerate cells
        rows = np.array([structure_row(s) for s in structures(cache)], dtype=np.float64)
    return np.hstack([magpie, rows.reshape(len(magpie), len(STRUCTURE_LABELS))]), [*labels, *STRUCTURE_LABELS]


def chgnet_features(cache: GraphCache, batch_size: int = 32, chunk_size: int = 1024) -> tuple[np.ndarray, list[str]]:
    """CHGNet's crystal feature of each graph's crystal, the model frozen (energy task
    only: the features need no forces).

    CHGNet's ``predict_structure`` builds the graphs (with their three-body bond graphs) of
    every crystal it is given before its first batch: about 0.3 MB a crystal, 5.5 GB for the
    map's 19,000-crystal pool. The crystals go to it ``chunk_size`` at a time, so memory stays
    at one chunk's; a chunk holds whole batches (``chunk_size`` a multiple of
    ``batch_size``), so every batch, and every number, is the one unchunked call gives."""
    from chgnet.model import CHGNet

    if chunk_size % batch_size:
        raise ValueError(f"chunk_size {chunk_size} must be a multiple of batch_size {batch_size}")
    model = CHGNet.load(model_name=CHGNET_VERSION, use_device="cpu", verbose=False)
    model.eval()
    rows = []
    for start in range(0, len(cache), chunk_size):
        crystals = structures(cache, start, start + chunk_size)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # CHGNet warns about its own tensor copies
            out = model.predict_structure(crystals, task="e", return_crystal_feas=True, batch_size=batch_size)
        if isinstance(out, dict):  # one crystal: CHGNet returns a dict, not a list
            out = [out]
        rows.extend(np.asarray(o["crystal_fea"], dtype=np.float64) for o in out)
    x = np.stack(rows)
    return x, [f"chgnet_{CHGNET_VERSION}_{i}" for i in range(x.shape[1])]


def features(cache: GraphCache, featurizer: str) -> tuple[np.ndarray, list[str]]:
    if featurizer == "magpie":
        return magpie_features(cache)
    if featurizer == "magpie_structure":
        return magpie_structure_features(cache)
    if featurizer == "chgnet":
        return chgnet_features(cache)
    raise ValueError(f"unknown featurizer {featurizer!r}; choose from {', '.join(FEATURIZERS)}")


def write_features(graphs: str | Path, out_npz: str | Path, featurizer: str) -> None:
    """Rule features: one featurizer's matrix of a dataset's graph cache, row per graph."""
    cache = GraphCache.load(graphs)
    x, labels = features(cache, featurizer)
    LOG.info("%s features: %d crystals x %d features", featurizer, *x.shape)
    with atomic_path(out_npz) as tmp:
        np.savez(tmp, ids=np.array(cache.ids), x=x, labels=np.array(labels))


def read_features(path: str | Path, cache: GraphCache) -> np.ndarray:
    """A feature matrix, checked to be row for row the cache's crystals."""
    table = np.load(path)
    if list(table["ids"]) != cache.ids:
        raise ValueError(
            f"{path} does not belong to the graph cache of {len(cache)} crystals (other crystals or order); "
            "rerun its rule"
        )
    return table["x"]
