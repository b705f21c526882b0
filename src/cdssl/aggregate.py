"""Rule aggregate: the runs' metrics in, the runs table, the cells table and the summary out."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .markdown import summary_lines
from .runs import collect_runs
from .statistics import MIN_PREDICTION_SPREAD, cell_table
from .utils import LOG, atomic_path, write_json
from .verdicts import summarise


def write_aggregates(
    metric_files: Sequence[str | Path],
    jobs_csv: str | Path,
    cells_csv: str | Path,
    summary_json: str | Path,
    baseline_files: Sequence[str | Path] = (),
    min_prediction_spread: float = MIN_PREDICTION_SPREAD,
    *,
    backbone: str | None = None,
    pool: str | None = None,
    run_keys: dict | None = None,
) -> dict:
    """jobs.csv (one row per run: :func:`cdssl.runs.collect_runs`), cells.csv (one row
    per cell and model: :func:`cdssl.statistics.cell_table`) and summary.json (the
    comparisons and verdicts: :func:`cdssl.verdicts.summarise`)."""
    runs = collect_runs(metric_files, baseline_files, backbone=backbone, pool=pool, run_keys=run_keys)
    cells = cell_table(runs, min_prediction_spread)
    for frame, path in ((runs, jobs_csv), (cells, cells_csv)):
        with atomic_path(path) as tmp:
            frame.to_csv(tmp, index=False)
    summary = summarise(runs, cells)
    write_json(summary, summary_json)
    for line in summary_lines(summary):
        LOG.info("%s", line)
    return summary
