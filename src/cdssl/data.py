"""Data stage: load a dataset (matminer or a local file), clean its target, write one table.

The table is a gzip JSON in pandas "split" layout, the same layout matminer caches in,
with exactly three columns: ``id`` (str), ``structure`` (pymatgen dict, or CIF text as
given by a local file) and ``target`` (float, after the transform; NaN when the dataset
is unlabelled). Structures are not parsed here: the graph stage owns that, so a bad
structure is reported once, in its ``skipped.csv``.
"""

from __future__ import annotations

import gzip
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .structures import n_sites, parsed_or_none
from .utils import LOG, atomic_path

COLUMNS = ["id", "structure", "target"]


class DataError(RuntimeError):
    """A dataset that cannot be loaded; the message says what and where."""


def matminer_data_home(data_dir: str | None) -> Path:
    """The directory matminer reads and caches in: config, then $MATMINER_DATA, then matminer's own."""
    from matminer.datasets.utils import _get_data_home

    return Path(_get_data_home(data_dir))


def load_matminer(name: str, data_dir: str | None) -> pd.DataFrame:
    """Load ``name`` through matminer's real loader, downloading if it is not staged."""
    from matminer.datasets import load_dataset
    from matminer.datasets.dataset_retrieval import _load_dataset_dict

    meta = _load_dataset_dict().get(name)
    if meta is None:
        raise DataError(f"dataset {name!r} is not a matminer dataset (see matminer.datasets.get_available_datasets())")
    home = matminer_data_home(data_dir)
    home.mkdir(parents=True, exist_ok=True)
    filename = f"{name}.{meta['file_type']}"
    staged = (home / filename).exists()
    try:
        return load_dataset(name, data_home=str(home))
    except Exception as exc:  # matminer raises requests/OSError/ValueError variously
        if not staged and (home / filename).exists():
            # matminer checks hashes only right after a download: a broken partial file
            # left here would be read as valid by every later run
            (home / filename).unlink()
        hint = (
            f"the staged file {home / filename} could not be read"
            if staged
            else f"download it from {meta['url']} and place it as {home / filename} "
            f"(or set data_dir in the config / $MATMINER_DATA to the directory holding {filename})"
        )
        raise DataError(f"could not load matminer dataset {name!r}: {exc.__class__.__name__}: {exc}; {hint}") from exc


def load_named(name: str, data_dir: str | None) -> pd.DataFrame:
    """A dataset by name: one this project builds from a pinned package
    (:data:`cdssl.sources.SOURCES`: ``mp_2018``, ``oqmd_icsd``), else matminer's."""
    from .sources import SOURCES, SourceError, load_source

    if name not in SOURCES:
        return load_matminer(name, data_dir)
    home = matminer_data_home(data_dir)
    try:
        return load_source(name, home)
    except SourceError as exc:
        raise DataError(f"dataset {name!r}: {exc}") from exc


def id_column_of(name: str) -> str | None:
    """The id column of a named dataset (matminer's ``material_id`` where a set has one)."""
    from .sources import SOURCES

    return SOURCES[name].id_column if name in SOURCES else "material_id"


def _structure_payload(obj: Any) -> Any:
    """A JSON-able structure: pymatgen objects become dicts, text (CIF) stays text."""
    if hasattr(obj, "as_dict"):
        return obj.as_dict()
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def _json_frame(raw: Any, structure_column: str, path: Path) -> pd.DataFrame:
    """A DataFrame from any of the JSON layouts pandas writes, or an id-keyed mapping.

    records ``[{col: v}, ...]``; split ``{"columns", "index", "data"}``; columns
    ``{col: {row: v}}`` or ``{col: [v, ...]}``; id-keyed ``{id: {col: v}}`` (the layout of
    many Materials Project exports), whose keys become the ``id`` column.
    """
    if isinstance(raw, list):
        return pd.DataFrame(raw)
    if not isinstance(raw, dict) or not raw:
        raise DataError(
            f"local dataset file {path}: expected a JSON list of records or an object, got {type(raw).__name__}"
        )
    if {"columns", "data"} <= set(raw) and set(raw) <= {"columns", "index", "data"}:
        return pd.DataFrame(**raw)
    if structure_column in raw:
        return pd.DataFrame(raw)
    first = next(iter(raw.values()))
    if isinstance(first, dict) and structure_column in first:
        df = pd.DataFrame.from_dict(raw, orient="index")
        df.insert(0, "id", [str(k) for k in raw])
        df.attrs["id_column"] = "id"
        return df.reset_index(drop=True)
    raise DataError(
        f"local dataset file {path}: no structure column {structure_column!r} in any JSON layout "
        f"(records, split, columns or id-keyed); top-level keys start with {list(raw)[:5]}"
    )


def load_local(path: str | Path, structure_column: str, target: str | None) -> pd.DataFrame:
    """Read a user file: CSV/JSON with a structure column (CIF text or pymatgen dict), or extxyz."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"local dataset file {path} does not exist")
    name = path.name.lower()
    if name.endswith((".xyz", ".extxyz")):
        from ase.io import read
        from pymatgen.io.ase import AseAtomsAdaptor

        rows = []
        for atoms in read(path, index=":", format="extxyz"):
            rows.append(
                {
                    structure_column: AseAtomsAdaptor.get_structure(atoms).as_dict(),
                    **({target: atoms.info.get(target, np.nan)} if target else {}),
                }
            )
        return pd.DataFrame(rows)
    if name.endswith((".csv", ".csv.gz")):
        df = pd.read_csv(path)
    elif name.endswith((".json", ".json.gz")):
        opener = gzip.open if name.endswith(".gz") else open
        try:
            with opener(path, "rt") as fh:
                raw = json.load(fh)
        except (ValueError, OSError) as exc:
            raise DataError(f"local dataset file {path} is not valid JSON: {exc}") from exc
        df = _json_frame(raw, structure_column, path)
    else:
        raise DataError(f"local dataset file {path}: unsupported format (use .csv, .json, .json.gz or .extxyz)")
    if structure_column not in df.columns:
        raise DataError(
            f"local dataset file {path}: no structure column {structure_column!r}; columns are {list(df.columns)}"
        )
    return df


def check_columns(name: str, entry: dict) -> None:
    """What can be checked of a user's CSV before any job runs: its header names the
    structure, target and id columns the entry asks for. Reading the header costs one
    line, so a dry run stops on a misspelt column instead of the data job, much later.
    A missing file is left to Snakemake (a missing input); JSON and extxyz files have no
    header to read cheaply and are checked by the data job."""
    path = Path(entry.get("file") or "")
    if not path.name.lower().endswith((".csv", ".csv.gz")) or not path.is_file():
        return
    columns = list(pd.read_csv(path, nrows=0).columns)
    wanted = {
        "structure column": entry.get("structure_column", "structure"),
        "target column": entry.get("target"),
        "id column": entry.get("id_column"),
    }
    for what, column in wanted.items():
        if column and column not in columns:
            raise DataError(f"dataset {name}: no {what} {column!r} in {path}; its columns are {columns}")


REASONS = {
    "missing": "target missing",
    "non_numeric": "target not a number",
    "non_finite": "target not finite",
    "non_positive_for_log10": "target not positive (transform log10)",
    "out_of_range": "target outside the entry's target_range",
}


def clean_targets(
    target: pd.Series, transform: str, valid: tuple[float, float] | None = None
) -> tuple[pd.Series, dict[str, int], pd.Series]:
    """Apply the transform; return the values, counts of dropped rows, and each row's reason.

    Rows are dropped (NaN returned, reason set) when the target is missing or non-finite,
    outside ``valid`` (the entry's ``target_range``, before the transform: a source's
    stated outlier rule) or, for log10, not positive. Counts are returned so the caller
    logs them: never silent.
    """
    values = pd.to_numeric(target, errors="coerce").astype(float)
    reason = pd.Series([None] * len(target), index=target.index, dtype=object)
    masks = {"missing": target.isna(), "non_numeric": values.isna() & target.notna()}
    masks["non_finite"] = ~np.isfinite(values) & values.notna()
    values = values.where(np.isfinite(values))
    masks["out_of_range"] = pd.Series(False, index=target.index)
    if valid is not None:
        outside = values.notna() & ((values < valid[0]) | (values > valid[1]))
        masks["out_of_range"] = outside
        values = values.where(~outside)
    masks["non_positive_for_log10"] = pd.Series(False, index=target.index)
    if transform == "log10":
        bad = values.notna() & (values <= 0)
        masks["non_positive_for_log10"] = bad
        values = np.log10(values.where(~bad))
    for key, mask in masks.items():
        reason[mask & reason.isna()] = REASONS[key]
    return values, {k: int(m.sum()) for k, m in masks.items()}, reason


def take_pool(df: pd.DataFrame, pool: dict) -> pd.DataFrame:
    """Split ``df`` once with ``pool.seed`` into disjoint pools of ``pool.sizes``; return ``pool.take``.

    Every entry naming the same source and pool spec gets the same permutation of the
    same rows (the data stage draws before any target-dependent cleaning), so the pools
    are disjoint by construction.
    """
    sizes: dict[str, int] = pool["sizes"]
    need = sum(sizes.values())
    if need > len(df):
        raise DataError(f"pool sizes {sizes} need {need} rows but only {len(df)} structures are usable")
    order = np.random.default_rng(pool["seed"]).permutation(len(df))
    start = 0
    for name in sorted(sizes):  # sorted: the layout must not depend on YAML key order
        stop = start + sizes[name]
        if name == pool["take"]:
            return df.iloc[np.sort(order[start:stop])].reset_index(drop=True)
        start = stop
    raise DataError(f"pool {pool['take']!r} not in {sorted(sizes)}")


def load_union(sources: list[str], data_dir: str | None) -> pd.DataFrame:
    """The rows of several matminer datasets, in the order given, ids ``<dataset>:<id>``
    (matminer's ``material_id`` where the set has one, else the row number)."""
    frames = []
    for source in sources:
        raw = load_named(source, data_dir).reset_index(drop=True)
        column = id_column_of(source)
        local = raw[column].astype(str) if column in raw.columns else pd.Series(raw.index.astype(str))
        frames.append(pd.DataFrame({"id": [f"{source}:{i}" for i in local], "structure": raw["structure"].values}))
        LOG.info("union: %d rows from %s", len(raw), source)
    return pd.concat(frames, ignore_index=True)


class Rows:
    """A table that loses rows only with a reason: ``drop`` records (id, reason) per row."""

    def __init__(self, table: pd.DataFrame, dropped: list[pd.DataFrame] | None = None) -> None:
        self.table = table
        self.dropped = dropped if dropped is not None else []

    def drop(self, mask: pd.Series, reasons: pd.Series | str) -> None:
        if mask.any():
            why = reasons[mask] if isinstance(reasons, pd.Series) else reasons
            self.dropped.append(pd.DataFrame({"id": self.table.loc[mask, "id"], "reason": why}))
            self.table = self.table[~mask].reset_index(drop=True)


def _read_source(name: str, entry: dict, data_dir: str | None) -> tuple[pd.DataFrame, pd.Series, str]:
    """One entry's raw rows, their ids and where they came from, after checking that the
    columns the entry names exist and that the ids are unique."""
    target_col = entry.get("target")
    scol = entry.get("structure_column", "structure")
    if entry.get("union"):
        source = "union of " + ", ".join(entry["union"])
        raw = load_union(entry["union"], data_dir)
    elif entry.get("matminer"):
        source = entry["matminer"]
        raw = load_matminer(source, data_dir)
    elif entry.get("source"):
        source = entry["source"]
        raw = load_named(source, data_dir)
    else:
        source = str(entry["file"])
        raw = load_local(source, scol, target_col)
    LOG.info("dataset %s: %d rows read from %s", name, len(raw), source)
    if scol not in raw.columns:
        raise DataError(f"dataset {name}: no structure column {scol!r} in {source}; columns: {list(raw.columns)}")
    if target_col and target_col not in raw.columns:
        raise DataError(f"dataset {name}: no target column {target_col!r} in {source}; columns: {list(raw.columns)}")
    id_col = "id" if entry.get("union") else entry.get("id_column") or raw.attrs.get("id_column")
    if id_col and id_col not in raw.columns:
        raise DataError(f"dataset {name}: no id column {id_col!r} in {source}; columns: {list(raw.columns)}")
    raw = raw.reset_index(drop=True)
    ids = raw[id_col].astype(str) if id_col else pd.Series([f"{source}:{i}" for i in raw.index])
    duplicated = ids[ids.duplicated()].unique()
    if len(duplicated):
        raise DataError(f"dataset {name}: id column {id_col!r} of {source} repeats ids, e.g. {list(duplicated[:5])}")
    return raw, ids, source


def build_table(
    name: str, entry: dict, data_dir: str | None = None, exclude: dict[str, pd.DataFrame] | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Load and clean one configured dataset; return (id, structure, target) table and dropped (id, reason).

    Order matters for disjoint pools: everything that does not depend on the target
    (missing structure, ``max_sites``, for a union the removal of duplicates and of the
    ``exclude`` tables' crystals) is applied first, then the pool is drawn, then the
    target is cleaned. Two entries on one source with different targets or transforms
    thus draw their pools from the very same rows.
    """
    target_col = entry.get("target")
    scol = entry.get("structure_column", "structure")
    raw, ids, source = _read_source(name, entry, data_dir)
    table = pd.DataFrame({"id": ids.values, "structure": [_structure_payload(s) for s in raw[scol]]})
    if entry.get("union"):
        table["crystal"] = [s if hasattr(s, "lattice") else parsed_or_none(s) for s in raw[scol]]
    table["target"] = raw[target_col].values if target_col else np.nan
    rows = Rows(table)
    drop = rows.drop
    no_structure = rows.table["structure"].isna()
    if no_structure.any():
        LOG.warning("dataset %s: dropped %d row(s) with no structure", name, int(no_structure.sum()))
    drop(no_structure, "no structure")
    if entry.get("max_sites"):
        cap = entry["max_sites"]
        # None for a structure that does not parse: the graph stage says why
        sites = pd.to_numeric(rows.table["structure"].map(n_sites), errors="coerce")
        big = sites.notna() & (sites > cap)
        LOG.info(
            "dataset %s: left out %d structure(s) with more than %d sites (config max_sites)", name, int(big.sum()), cap
        )
        drop(big, sites.map(lambda n: f"{n:.0f} sites, more than max_sites {cap}"))
    if entry.get("union"):
        _match_union(name, rows, exclude or {})
    table = rows.table.drop(columns="crystal", errors="ignore")
    if entry.get("pool"):
        table = take_pool(table, entry["pool"])
        LOG.info(
            "dataset %s: pool %r of %s (seed %d) holds %d rows",
            name,
            entry["pool"]["take"],
            entry["pool"]["sizes"],
            entry["pool"]["seed"],
            len(table),
        )
    if target_col:
        valid = entry.get("target_range")
        values, counts, reasons = clean_targets(
            table["target"], entry.get("transform", "none"), tuple(valid) if valid else None
        )
        for reason, count in counts.items():
            if count:
                LOG.warning(
                    "dataset %s: dropped %d row(s) with %s target (column %r)",
                    name,
                    count,
                    reason.replace("_", " "),
                    target_col,
                )
        table["target"] = values.values
        rows = Rows(table, rows.dropped)
        rows.drop(reasons.notna(), reasons)
        table = rows.table
    if table.empty:
        raise DataError(f"dataset {name}: no usable rows left in {source}")
    LOG.info("dataset %s: %d rows written", name, len(table))
    skipped = pd.concat(rows.dropped, ignore_index=True) if rows.dropped else pd.DataFrame(columns=["id", "reason"])
    return table[COLUMNS], skipped


def _match_union(name: str, rows: Rows, exclude: dict[str, pd.DataFrame]) -> None:
    """Drop a union's unparsable rows, its repeated crystals (first kept) and, for each
    ``exclude`` table (the run's fine-tuning sets), every crystal that table holds."""
    from .matching import duplicates, found_in

    rows.drop(rows.table["crystal"].isna(), "structure could not be parsed")
    table = rows.table
    twins = pd.Series(duplicates(list(table["crystal"]), list(table["id"])), index=table.index, dtype=object)
    LOG.info(
        "dataset %s: %d structure(s) repeat an earlier one (StructureMatcher), kept once",
        name,
        int(twins.notna().sum()),
    )
    rows.drop(twins.notna(), twins.map(lambda t: f"same structure as {t}"))
    for other, ref in sorted(exclude.items()):
        table = rows.table
        crystals = [parsed_or_none(s) for s in ref["structure"]]
        keep = [i for i, c in enumerate(crystals) if c is not None]
        hits = found_in(list(table["crystal"]), [crystals[i] for i in keep], [str(ref["id"].iloc[i]) for i in keep])
        hits = pd.Series(hits, index=table.index, dtype=object)
        LOG.info(
            "dataset %s: %d structure(s) are in fine-tuning dataset %s, left out", name, int(hits.notna().sum()), other
        )
        rows.drop(hits.notna(), hits.map(lambda t, o=other: f"same structure as {t} of fine-tuning dataset {o}"))
    LOG.info("dataset %s: %d distinct structures after matching", name, len(rows.table))


def write_table(table: pd.DataFrame, path: str | Path) -> None:
    payload = {"columns": COLUMNS, "index": list(range(len(table))), "data": table[COLUMNS].values.tolist()}
    # mtime 0: gzip would stamp the time of writing into the header, and the same table
    # written twice must give the same bytes (the graph stage's cache is keyed on content)
    with atomic_path(path) as tmp, gzip.GzipFile(tmp, "wb", mtime=0) as raw, io.TextIOWrapper(raw) as fh:
        json.dump(payload, fh, allow_nan=True)


def read_table(path: str | Path) -> pd.DataFrame:
    with gzip.open(path, "rt") as fh:
        return pd.DataFrame(**json.load(fh))


def run_data(
    dataset: str,
    *,
    entry: dict,
    data_dir: str | None,
    exclude: list[str],
    exclude_tables: list[str | Path],
    table_out: str | Path,
    skipped_csv: str | Path,
) -> tuple[int, int]:
    """The data stage: one dataset entry (:func:`cdssl.config.data_settings`) -> its
    table and the rows it dropped with their reasons; ``exclude_tables`` are the tables of
    the fine-tuning sets ``exclude`` names, in that order. Returns (rows kept, dropped)."""
    tables = dict(zip(exclude, map(read_table, exclude_tables), strict=True))
    table, dropped = build_table(dataset, entry, data_dir, tables)
    write_table(table, table_out)
    with atomic_path(skipped_csv) as tmp:
        dropped.to_csv(tmp, index=False)
    return len(table), len(dropped)
