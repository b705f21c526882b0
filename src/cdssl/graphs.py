"""Graph stage: structures -> MatGL ``Structure2Graph`` graphs, cached as one packed file.

The cache stores every graph's tensors concatenated (CSR style, with ``node_ptr`` and
``edge_ptr``), plus the geometry MEGNet needs precomputed: Cartesian positions and the
periodic image shift of each edge (``images @ lattice``). Pretraining moves positions
only, so the shifts stay valid under perturbation, and batching becomes a few index
operations instead of one PyG ``Data`` object per structure.
"""

from __future__ import annotations

import multiprocessing as mp
from dataclasses import dataclass, fields
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .structures import parse_structure
from .utils import LOG, atomic_path, record_digest

CACHE_FORMAT = 1


def element_types() -> tuple[str, ...]:
    """One element list for every graph and model: node types index into it."""
    from matgl.config import DEFAULT_ELEMENTS

    return tuple(DEFAULT_ELEMENTS)


class UnknownElementError(ValueError):
    """A structure holds an element outside the model's element list (``unknown_elements: error``)."""


class CacheError(ValueError):
    """A graph cache that cannot be used; the message names the file and how to rebuild it."""


# --forcerun, not `rm`: Snakemake does not rerun jobs whose outputs exist because an
# intermediate file is missing, so a deleted cache would leave the outputs of a job that
# failed on it missing. Forcing the cache's job reruns it and everything downstream; the
# rebuilt cache has the same bytes, so finished training resumes instead of restarting.
REBUILD_HINT = (
    "rebuild it and everything that reads it with your snakemake command plus `--forcerun {path}` "
    "(finished training is kept: a cache rebuilt from the same table has the same content digest)"
)


AMU_PER_A3_IN_G_PER_CM3 = 1.66053906660


@lru_cache(maxsize=1)
def atomic_masses() -> np.ndarray:
    """Atomic masses (amu) in element-list order, for densities without pymatgen's unit objects."""
    from pymatgen.core import Element

    return np.array([float(Element(el).atomic_mass) for el in element_types()])


def structure_to_arrays(
    sid: str, payload: Any, cutoff: float, elements: tuple[str, ...], unknown_elements: str = "skip"
) -> tuple[dict | None, str | None]:
    """Convert one structure; return (arrays, None) or (None, reason to skip).

    An element outside ``elements`` is a reason to skip, naming every such element, or,
    with ``unknown_elements="error"``, an UnknownElementError.
    """
    from matgl.ext.pymatgen import Structure2Graph

    try:
        structure = parse_structure(payload)
    except Exception as exc:  # pymatgen raises many types for bad CIF
        # the whole reason: skipped.csv is where a user learns what to fix
        return None, f"unparsable structure: {exc.__class__.__name__}: {exc}"
    if len(structure) == 0:
        return None, "unparsable structure: no sites"
    if not structure.is_ordered:
        site = next(i for i, s in enumerate(structure) if not s.is_ordered)
        return None, f"disordered: site {site} has partial occupancy ({structure[site].species})"
    known = set(elements)
    unknown = sorted({el.symbol for el in structure.composition.elements} - known)
    if unknown:
        reason = (
            f"unknown element(s) {', '.join(unknown)}: not in the model's element list (matgl.config.DEFAULT_ELEMENTS)"
        )
        if unknown_elements == "error":
            raise UnknownElementError(f"structure {sid}: {reason}; set graph.unknown_elements: skip to skip it")
        return None, reason
    g, lat, _ = Structure2Graph(element_types=elements, cutoff=cutoff).get_graph(structure)
    lattice = lat[0].numpy().astype(np.float32)
    edge_index = g.edge_index.numpy().astype(np.int64)
    degree = np.bincount(edge_index[0], minlength=len(structure))
    if (degree == 0).any():
        i = int(np.flatnonzero(degree == 0)[0])
        return None, f"isolated atom: site {i} ({structure[i].specie}) has no neighbour within {cutoff} A"
    pos = structure.cart_coords.astype(np.float32)
    node_type = g.node_type.numpy().astype(np.int64)
    volume = float(abs(np.linalg.det(lattice.astype(np.float64))))
    return {
        "node_type": node_type,
        "pos": pos,
        "lattice": lattice,
        "edge_index": edge_index,
        "pbc_offshift": (g.pbc_offset.numpy() @ lattice).astype(np.float32),
        "density": float(atomic_masses()[node_type].sum() / volume * AMU_PER_A3_IN_G_PER_CM3),
        "volume": volume,
    }, None


def _convert(item: tuple[str, Any, float], cutoff: float, elements: tuple[str, ...], unknown_elements: str):
    sid, payload, target = item
    arrays, reason = structure_to_arrays(sid, payload, cutoff, elements, unknown_elements)
    return sid, target, arrays, reason


class NoGraphsError(ValueError):
    """Not one structure of a table became a graph: ``skipped`` says why for each."""

    def __init__(self, skipped: pd.DataFrame):
        self.skipped = skipped
        first = f"; the first, {skipped['id'].iloc[0]}: {skipped['reason'].iloc[0]}" if len(skipped) else ""
        super().__init__(f"no structure could be converted to a graph (see skipped.csv){first}")


def build_cache(
    table: pd.DataFrame, cutoff: float, processes: int = 1, unknown_elements: str = "skip"
) -> tuple[dict, pd.DataFrame]:
    """Convert a data table; return (packed cache, skipped table with id and reason)."""
    elements = element_types()
    items = list(zip(table["id"], table["structure"], table["target"], strict=True))
    work = partial(_convert, cutoff=cutoff, elements=elements, unknown_elements=unknown_elements)
    if processes > 1 and len(items) > 1:
        # fork keeps pymatgen/matgl imports from being paid again per worker
        with mp.get_context("fork").Pool(processes) as pool:
            results = pool.map(work, items, chunksize=max(1, len(items) // (processes * 8)))
    else:
        results = [work(it) for it in items]
    kept = [(sid, t, a) for sid, t, a, r in results if a is not None]
    skipped = pd.DataFrame([(sid, r) for sid, _, a, r in results if a is None], columns=["id", "reason"])
    if not kept:
        raise NoGraphsError(skipped)
    n_nodes = np.array([len(a["node_type"]) for _, _, a in kept])
    n_edges = np.array([a["edge_index"].shape[1] for _, _, a in kept])

    def cat(key: str, axis: int = 0) -> torch.Tensor:
        return torch.from_numpy(np.concatenate([a[key] for _, _, a in kept], axis=axis))

    cache = {
        "meta": {"format": CACHE_FORMAT, "cutoff": float(cutoff), "element_types": list(elements)},
        "ids": [sid for sid, _, _ in kept],
        "target": torch.tensor([t for _, t, _ in kept], dtype=torch.float64),
        "node_ptr": torch.from_numpy(np.concatenate([[0], np.cumsum(n_nodes)])),
        "edge_ptr": torch.from_numpy(np.concatenate([[0], np.cumsum(n_edges)])),
        "node_type": cat("node_type"),
        "pos": cat("pos"),
        "lattice": torch.from_numpy(np.stack([a["lattice"] for _, _, a in kept])),
        "edge_index": cat("edge_index", axis=1),
        "pbc_offshift": cat("pbc_offshift"),
        "density": torch.tensor([a["density"] for _, _, a in kept], dtype=torch.float64),
        "volume": torch.tensor([a["volume"] for _, _, a in kept], dtype=torch.float64),
    }
    return cache, skipped


def save_cache(cache: dict, path: str | Path) -> None:
    """Write the cache and its content digest. The same table gives the same bytes (the
    archive is named after the final file, not a temporary one), so jobs downstream whose
    identity is the cache's digest keep their checkpoints when it is rebuilt."""
    with atomic_path(path) as tmp:
        torch.save(cache, tmp)
    record_digest(path)


def run_graphs(
    table: str | Path | pd.DataFrame,
    graphs_pt: str | Path,
    skipped_csv: str | Path,
    *,
    cutoff: float,
    unknown_elements: str = "skip",
    dropped: str | Path | pd.DataFrame | None = None,
    processes: int = 1,
) -> tuple[int, int]:
    """The graph stage: a data table (or its file) -> the packed cache and one list of
    every row that left the dataset, the data stage's ``dropped`` rows first, each with
    its reason. Returns (graphs cached, rows skipped in all)."""
    from .data import read_table

    table = table if isinstance(table, pd.DataFrame) else read_table(table)
    cache, skipped = build_cache(table, cutoff, processes=processes, unknown_elements=unknown_elements)
    for reason, count in skipped["reason"].str.split(":").str[0].value_counts().items():
        LOG.warning("skipped %d structure(s): %s", count, reason)
    if dropped is not None:
        earlier = dropped if isinstance(dropped, pd.DataFrame) else pd.read_csv(dropped, dtype=str)
        skipped = pd.concat([earlier, skipped], ignore_index=True)
    LOG.info("%d graphs cached, %d rows skipped in all (see %s)", len(cache["ids"]), len(skipped), skipped_csv)
    with atomic_path(skipped_csv) as tmp:
        skipped.to_csv(tmp, index=False)
    save_cache(cache, graphs_pt)
    return len(cache["ids"]), len(skipped)


@dataclass
class GraphBatch:
    """What the MatGL networks' forward passes read from a PyG batch, built straight from the packed cache."""

    node_type: torch.Tensor
    pos: torch.Tensor
    edge_index: torch.Tensor
    pbc_offshift: torch.Tensor
    batch: torch.Tensor
    target: torch.Tensor
    num_graphs: int

    def to(self, device, non_blocking: bool = False) -> GraphBatch:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return GraphBatch(
            **{
                k: v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v
                for k, v in values.items()
            }
        )

    @property
    def edge_batch(self) -> torch.Tensor:
        return self.batch[self.edge_index[0]]


class GraphCache:
    """A loaded cache; ``collate`` turns a list of graph indices into a GraphBatch."""

    def __init__(self, data: dict):
        self.data = data
        self.ids: list[str] = list(data["ids"])
        self.node_ptr = data["node_ptr"]
        self.edge_ptr = data["edge_ptr"]

    @classmethod
    def load(cls, path: str | Path, cutoff: float | None = None, mmap: bool = False) -> GraphCache:
        """Read a cache; with ``mmap`` its tensors stay in the file's pages, which every
        process on a node that maps the same file shares (DDP ranks started by srun)."""
        hint = REBUILD_HINT.format(path=path)
        try:
            data = torch.load(path, weights_only=True, mmap=mmap)
            meta = data["meta"]
        except FileNotFoundError:
            raise
        except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError... for a bad file
            raise CacheError(
                f"graph cache {path} cannot be read ({exc.__class__.__name__}: {str(exc)[:200]}); {hint}"
            ) from exc
        if meta.get("format") != CACHE_FORMAT:
            raise CacheError(f"graph cache {path} has format {meta.get('format')}, expected {CACHE_FORMAT}; {hint}")
        if cutoff is not None and abs(meta["cutoff"] - cutoff) > 1e-9:
            raise CacheError(
                f"graph cache {path} was built with cutoff {meta['cutoff']}, the job asks for {cutoff}; {hint}"
            )
        if list(meta["element_types"]) != list(element_types()):
            raise CacheError(f"graph cache {path} was built with another element list; {hint}")
        return cls(data)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def targets(self) -> torch.Tensor:
        return self.data["target"]

    def collate(self, indices: list[int] | torch.Tensor) -> GraphBatch:
        idx = torch.as_tensor(indices, dtype=torch.long)
        d = self.data
        n_nodes = self.node_ptr[idx + 1] - self.node_ptr[idx]
        n_edges = self.edge_ptr[idx + 1] - self.edge_ptr[idx]
        node_sel = _ranges(self.node_ptr[idx], n_nodes)
        edge_sel = _ranges(self.edge_ptr[idx], n_edges)
        node_offset = torch.cumsum(n_nodes, 0) - n_nodes
        edge_index = d["edge_index"][:, edge_sel] + torch.repeat_interleave(node_offset, n_edges)
        # int32, as MatGL's own collate makes them: MatGL's layers ran faster on them on
        # the CPU (docs/benchmarks.md; the M3GNet path converts to int64, which its narrow
        # three-body sums run faster on), and on one thread every output and gradient is
        # bit for bit that of int64 indices (tests/test_models.py)
        edge_index = edge_index.to(torch.int32)
        return GraphBatch(
            node_type=d["node_type"][node_sel],
            pos=d["pos"][node_sel],
            edge_index=edge_index,
            pbc_offshift=d["pbc_offshift"][edge_sel],
            batch=torch.repeat_interleave(torch.arange(len(idx)), n_nodes),
            target=d["target"][idx].float(),
            num_graphs=len(idx),
        )


def _ranges(starts: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Concatenate arange(s, s + c) for each (s, c) without a Python loop."""
    total = int(counts.sum())
    shift = torch.repeat_interleave(starts - (torch.cumsum(counts, 0) - counts), counts)
    return torch.arange(total) + shift
