"""Prediction (`cdssl-predict`, `cdssl.predict`): fine-tuned models on new crystals, in the dataset's own units.

    cdssl-predict --run results/megnet/finetune/dielectric_constant/0.7 --structures new.csv --out predictions.csv

A run is any folder holding fine-tuned models (``model/`` folders written by the
workflow's fine-tuning jobs or by ``cdssl-finetune``), searched recursively: a cell's
folder gives every seed and mode trained on that fraction. New crystals go through the
data stage's reading and site cap and the graph stage's parsing, so a crystal is skipped
for the same reasons, written beside the predictions. Each model's output is brought back
to the dataset's units (a log10 transform is undone); with several models, each crystal
gets their mean and standard deviation, and every model's own column.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .data import DataError, build_table
from .graphs import GraphCache, NoGraphsError, build_cache, save_cache
from .model_files import load_network
from .utils import LOG, atomic_path, set_threads, setup_logging

# what the models of one prediction must agree on: the same quantity, read the same way
SHARED = ("dataset", "target", "transform", "units", "max_sites")


def find_models(runs: list[str | Path]) -> list[Path]:
    """Every fine-tuned model folder under ``runs`` (a model folder itself counts)."""
    found = []
    for run in map(Path, runs):
        if not run.exists():
            raise FileNotFoundError(f"run folder {run} does not exist")
        candidates = [run / "model.json"] if (run / "model.json").exists() else sorted(run.rglob("model/model.json"))
        found += [c.parent for c in candidates if "cdssl" in (_metadata(c) or {})]
    if not found:
        raise FileNotFoundError(
            f"no fine-tuned model under {', '.join(map(str, runs))}: give a folder written by the "
            "workflow's fine-tuning (results/<backbone>/finetune/<dataset>/<fraction>) or by cdssl-finetune --out"
        )
    return found


def _metadata(model_json: Path) -> dict[str, Any] | None:
    return json.loads(model_json.read_text()).get("metadata")


def model_info(model_dir: Path) -> dict[str, Any]:
    return _metadata(model_dir / "model.json")["cdssl"]


def inverse_transform(values: np.ndarray, transform: str) -> np.ndarray:
    """The dataset's units from the model's (the data stage's transform undone)."""
    if transform == "log10":
        return 10.0**values
    if transform == "none":
        return values
    raise ValueError(f"unknown target transform {transform!r}")


# files that hold one crystal each (read on their own), beside table files (CSV, JSON, extxyz)
STRUCTURE_SUFFIXES = (".cif", ".vasp", ".poscar")
STRUCTURE_NAMES = ("POSCAR", "CONTCAR")


def is_structure_file(path: Path) -> bool:
    """CIF, VASP (.vasp, POSCAR, CONTCAR and their numbered copies) files: one crystal each."""
    return path.suffix.lower() in STRUCTURE_SUFFIXES or path.name.upper().startswith(STRUCTURE_NAMES)


def input_files(paths: list[str | Path]) -> list[tuple[Path, str]]:
    """The files given, each with its crystal's id: a file by its name (without a
    structure suffix), a folder's structure files by their path below it (``a/POSCAR``,
    ``x`` for ``x.vasp``); where two ids clash, the path as given."""
    found: list[tuple[Path, str]] = []
    for path in map(Path, paths):
        if not path.exists():
            raise DataError(f"{path}: no such file or folder")
        if path.is_dir():
            files = sorted(f for f in path.rglob("*") if f.is_file() and is_structure_file(f))
            if not files:
                raise DataError(f"{path}: a folder without structure files (.cif, .vasp, POSCAR, CONTCAR)")
            found += [(f, _crystal_name(f.relative_to(path))) for f in files]
        else:
            found.append((path, _crystal_name(Path(path.name))))
    names = [name for _, name in found]
    if len(set(names)) < len(names):
        found = [(f, str(f)) for f, _ in found]
    return found


def _crystal_name(relative: Path) -> str:
    return str(relative.with_suffix("")) if relative.suffix.lower() in STRUCTURE_SUFFIXES else str(relative)


def read_structure_files(files: list[tuple[Path, str]]) -> tuple[pd.DataFrame, list[dict]]:
    """Each structure file on its own: its text, or a skip with the reason (a file that is
    not UTF-8 text stops no other)."""
    rows, skipped = [], []
    for path, crystal in files:
        try:
            rows.append({"id": crystal, "structure": path.read_text(encoding="utf-8")})
        except (UnicodeDecodeError, OSError) as exc:
            skipped.append({"id": crystal, "reason": f"{path}: not readable as UTF-8 text ({type(exc).__name__})"})
    return pd.DataFrame(rows, columns=["id", "structure"]), skipped


def read_structures(
    paths: list[str | Path], structure_column: str, id_column: str | None, max_sites: int | None, workdir: Path
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The data stage on new crystals: one CSV/JSON/extxyz file, or structure files (CIF,
    POSCAR, CONTCAR, .vasp; one crystal each, named by the file) and folders of them.
    Returns the table and the skipped rows with reasons."""
    files = input_files(paths)
    if not all(is_structure_file(f) for f, _ in files):
        if len(files) > 1:
            raise DataError(
                "give one CSV, JSON or extxyz file, or structure files (CIF, POSCAR, CONTCAR, .vasp) "
                "and folders of them"
            )
        entry = {"file": str(files[0][0]), "structure_column": structure_column, "id_column": id_column}
        return build_table("new", entry | {"target": None, "max_sites": max_sites})
    table, unread = read_structure_files(files)
    if table.empty:
        raise DataError(f"no structure file could be read: {unread[0]['reason']}" + (" ..." if len(unread) > 1 else ""))
    # through a CSV, so the files take exactly the path of every other local file
    source = workdir / "structure_files.csv"
    table.to_csv(source, index=False)
    entry = {"file": str(source), "structure_column": "structure", "id_column": "id", "target": None}
    try:
        table, skipped = build_table("new", entry | {"max_sites": max_sites})
    except DataError as exc:  # about the crystals, not about the temporary file
        raise DataError(str(exc).replace(str(source), f"the {len(files)} structure file(s) given")) from None
    return table, pd.concat([pd.DataFrame(unread, columns=["id", "reason"]), skipped], ignore_index=True)


def output_units(units: str, transform: str) -> str:
    """The units of a prediction, whose transform is undone: ``log10(eV)`` -> ``eV``; the
    dataset's units as they are without a transform; empty when the dataset states none."""
    if transform == "log10" and units.startswith("log10(") and units.endswith(")"):
        return units[len("log10(") : -1]
    if transform == "log10" and units:
        return f"10^({units})"
    return units


def shared_info(networks: list[Path], runs: list[str | Path]) -> dict[str, Any]:
    """What the networks under ``runs`` say of their target (:data:`SHARED`), checked equal."""
    infos = [model_info(m) for m in networks]
    for key in SHARED:
        values = {json.dumps(i.get(key)) for i in infos}
        if len(values) > 1:
            raise ValueError(f"the models under {', '.join(map(str, runs))} differ in {key}: {sorted(values)}")
    return infos[0]


def predict(
    runs: list[str | Path],
    structures: list[str | Path],
    *,
    structure_column: str = "structure",
    id_column: str | None = None,
    batch_size: int = 64,
    model: str = "best",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Predict for the crystals in ``structures`` with the models under ``runs``.

    ``model``: ``best`` (default), in each seed's cell the model its validation split
    chose (cdssl.blend), or every fine-tuned network where the runs hold no blend (a
    cdssl-finetune folder, a run made before blends); ``blend``, each seed's blend;
    ``networks``, every fine-tuned network under the runs; or a model's label in the
    blend files (``sl``, ``ssl/seed_0/sigma_0.5/pool_size_all``, ``magpie_structure_boosting``,
    ``hybrid/seed_0/sigma_0.5/pool_size_all``), that model of each seed.

    Returns (predictions, skipped). predictions has one row per crystal: ``id``,
    ``prediction`` (the mean over the models or seeds, in the dataset's units), ``std``
    (their standard deviation, 0 for one), ``n_models``, ``units``, ``model`` (which model
    each column is), then one column per model or seed (its folder relative to the run).
    skipped has ``id`` and ``reason``.
    """
    from .predictors import Component, NewCrystals, load_component, plan_models, predict_component

    networks = find_models(runs)
    info = shared_info(networks, runs)
    plan = plan_models(runs, networks, _labels(networks, runs), model)
    # every file of every model read and checked before any crystal is
    loaded = {c: load_component(c) for _, mix in plan.values() for c in mix}
    # no file of a model folder chooses what code runs (cdssl.model_files); the cutoff
    # of the graphs is the networks' (the features' models read the same crystals)
    cutoffs = {float(load_network(m).cutoff) for m in networks}
    if len(cutoffs) > 1:
        raise ValueError(f"the models use different cutoffs: {sorted(cutoffs)}")
    cutoff = cutoffs.pop()
    with tempfile.TemporaryDirectory() as tmp:
        table, skipped = read_structures(structures, structure_column, id_column, info["max_sites"], Path(tmp))
        try:
            cache_dict, unparsed = build_cache(table.assign(target=0.0), cutoff)
        except NoGraphsError as exc:
            first = exc.skipped.iloc[0] if len(exc.skipped) else {"id": "-", "reason": "no rows"}
            inputs = ", ".join(map(str, structures))
            raise DataError(f"no crystal of {inputs} could be read: {first['id']}: {first['reason']}") from None
        save_cache(cache_dict, Path(tmp) / "graphs.pt")
        cache = GraphCache.load(Path(tmp) / "graphs.pt", cutoff)
    skipped = pd.concat([skipped, unparsed], ignore_index=True)
    crystals = NewCrystals(cache, batch_size)
    done: dict[Component, np.ndarray] = {}
    columns = {}
    for name, (_, mix) in plan.items():
        for component in mix:
            if component not in done:
                done[component] = predict_component(loaded[component], crystals)
        value = sum(done[c] * w for c, w in mix.items())
        columns[name] = inverse_transform(value, info["transform"])
    values = np.column_stack(list(columns.values()))
    units = output_units(info.get("units") or "", info["transform"])
    used = "; ".join(f"{name}: {which}" for name, (which, _) in plan.items())
    predictions = pd.DataFrame(
        {
            "id": cache.ids,
            "prediction": values.mean(axis=1),
            "std": values.std(axis=1),
            "n_models": values.shape[1],
            "units": units,
            "model": used,
            **columns,
        }
    )
    LOG.info(
        "%d crystal(s) predicted by %s of %s (%s); %d skipped",
        len(predictions),
        f"{len(plan)} model(s)",
        info["dataset"],
        used,
        len(skipped),
    )
    return predictions, skipped


def _labels(models: list[Path], runs: list[str | Path]) -> list[str]:
    """Each model's column name: its run folder relative to the folder all given runs
    share (``0/sl`` for a fraction's folder), or that folder's name for one model."""
    import os

    folders = [m.parent.resolve() for m in models]
    base = Path(os.path.commonpath([Path(r).resolve() for r in runs]))
    if len(folders) == 1 or any(f == base for f in folders):
        base = Path(os.path.commonpath(folders)).parent if len(folders) > 1 else folders[0].parent
    labels = [str(f.relative_to(base)) for f in folders]
    if len(set(labels)) < len(labels):
        raise ValueError(f"two models under {', '.join(map(str, runs))} have the same folder name")
    return labels


def predict_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="cdssl-predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--run", nargs="+", required=True, help="folder(s) holding fine-tuned model/ folders")
    ap.add_argument(
        "--structures",
        nargs="+",
        required=True,
        help="one CSV/JSON/extxyz file, or structure files (CIF, POSCAR, CONTCAR, .vasp) and folders of them",
    )
    ap.add_argument("--structure-column", default="structure", help="CSV/JSON column with CIF text or pymatgen dicts")
    ap.add_argument("--id-column", help="column naming each crystal (default: its row)")
    ap.add_argument("--out", required=True, help="predictions CSV; skipped crystals go to <out stem>.skipped.csv")
    ap.add_argument(
        "--model",
        default="best",
        help="best (default: each seed's validation choice, a model or a blend; every network where the run "
        "has no blend), blend, networks, or a model's label in the run's blend/metrics.json "
        "(sl, ssl/seed_0/sigma_0.5/pool_size_all, magpie_structure_boosting, ...)",
    )
    ap.add_argument("--threads", type=int, default=1)
    return ap


def predict_main(argv: list[str] | None = None) -> None:
    """The console script: one line on stderr and status 1 for bad input; None otherwise
    (a console script's return value becomes its exit status)."""
    ap = predict_parser()
    args = ap.parse_args(argv)
    out = Path(args.out)
    setup_logging(out.with_suffix(".log"))
    set_threads(args.threads)
    try:
        predictions, skipped = predict(
            args.run,
            args.structures,
            structure_column=args.structure_column,
            id_column=args.id_column,
            model=args.model,
        )
    except (DataError, FileNotFoundError, ValueError) as exc:
        ap.exit(1, f"cdssl-predict: error: {exc}\n")
    with atomic_path(out) as tmp:
        predictions.to_csv(tmp, index=False)
    skipped_csv = out.with_name(out.stem + ".skipped.csv")
    with atomic_path(skipped_csv) as tmp:
        skipped.to_csv(tmp, index=False)
    spread = ", the spread over them in 'std'" if predictions["n_models"].iloc[0] > 1 else ""
    print(f"model(s) used: {predictions['model'].iloc[0]}{spread}")
    print(f"{len(predictions)} predicted -> {out}; {len(skipped)} skipped -> {skipped_csv}")
