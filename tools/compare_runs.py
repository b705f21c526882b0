"""Compare every number of two finished runs: the same results, file by file.

    python tools/compare_runs.py OLD NEW [--reshaped jobs.csv cells.csv ...]

Both folders are results folders of the current layout (a folder of an earlier layout
moves there with tools/migrate_results.py). Every JSON, CSV and Markdown file present in
both is read as the numbers it holds: JSON leaves, CSV cells, numbers in Markdown text
outside the first line (the metadata line) and outside names (``seed_0``). Wall times and
other clock readings are left out. A file whose format changed between the two runs
(``--reshaped``; by default the analysis tables that moved to explicit key columns) is
compared as: every number of the new file is one of the old file's. Every other file
must hold the same numbers, as many times each.

Prints the files and numbers compared and each difference; exits 1 on any difference.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from collections import Counter
from pathlib import Path

# clock readings and machine facts, not results
IGNORED = {"wall_seconds", "s", "h:m:s", "max_rss", "max_vms", "max_uss", "max_pss", "io_in", "io_out"}
IGNORED |= {"mean_load", "cpu_time", "time", "timestamp", "duration", "epoch_seconds", "mtime_ns"}
# a run's keys: they name what a number is (the file's path pairs them already), and a
# key that was empty in an earlier layout (one pretraining seed) is named now
IGNORED |= {"sigma", "budget", "pretrain_seed"}
RESHAPED = ("jobs.csv", "cells.csv", "summary.json", "budget.csv", "backbones.csv")
# a number standing alone: not part of a name such as seed_0, sigma_0.5, "Table 3" or a
# model's "sigma 0.5 A" and "100 epochs"
NUMBER = re.compile(r"(?<![\w.])(?<!Table )(?<!sigma )[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?(?![\w])(?! epochs)")
KINDS = (".json", ".csv", ".md")


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if value == value else None  # NaN is no number to compare


def json_numbers(value, key: str = "") -> list[float]:
    if key in IGNORED or isinstance(value, bool):
        return []
    if isinstance(value, dict):
        return [n for k, v in value.items() for n in json_numbers(v, str(k))]
    if isinstance(value, list):
        return [n for v in value for n in json_numbers(v, key)]
    if isinstance(value, int | float):
        return [] if value != value else [float(value)]
    return []


def csv_numbers(path: Path) -> list[float]:
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [n for row in rows for k, v in row.items() if k not in IGNORED for n in [_number(v)] if n is not None]


def md_numbers(path: Path) -> list[float]:
    lines = path.read_text().splitlines()[1:]
    return [float(m.group(0)) for line in lines for m in NUMBER.finditer(line)]


def numbers(path: Path) -> list[float]:
    if path.suffix == ".json":
        return json_numbers(json.loads(path.read_text()))
    if path.suffix == ".csv":
        return csv_numbers(path)
    return md_numbers(path)


def compare(old: Path, new: Path, reshaped: tuple[str, ...] = RESHAPED) -> tuple[int, int, list[str]]:
    """(files compared, numbers compared, differences)."""
    rel = sorted(
        p.relative_to(old)
        for p in old.rglob("*")
        if p.suffix in KINDS and p.is_file() and "logs" not in p.parts and "benchmarks" not in p.parts
    )
    files = n = 0
    diffs: list[str] = []
    for path in rel:
        if not (new / path).is_file():
            continue
        a, b = numbers(old / path), numbers(new / path)
        files += 1
        n += len(b)
        if path.name in reshaped:
            missing = sorted(set(b) - set(a))
            diffs += [f"{path}: {v!r} is not in the old file" for v in missing[:5]]
            continue
        extra_old, extra_new = Counter(a) - Counter(b), Counter(b) - Counter(a)
        if extra_old or extra_new:
            diffs.append(f"{path}: only in old {sorted(extra_old)[:5]}, only in new {sorted(extra_new)[:5]}")
    return files, n, diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--reshaped", nargs="*", default=list(RESHAPED), help="files whose format changed")
    args = parser.parse_args(argv)
    files, n, diffs = compare(args.old, args.new, tuple(args.reshaped))
    for line in diffs:
        print(line)
    print(f"{files} files, {n} numbers compared, {len(diffs)} differences")
    return 1 if diffs or not files else 0


if __name__ == "__main__":
    sys.exit(main())
