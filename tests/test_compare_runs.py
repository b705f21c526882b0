"""tools/compare_runs.py: two runs' numbers compared file by file."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import compare_runs  # noqa: E402


def _run(folder: Path, mae: float = 0.1234, seconds: float = 1.0) -> Path:
    cell = folder / "megnet/finetune/d/0.5/0/sl"
    cell.mkdir(parents=True)
    (cell / "metrics.json").write_text(json.dumps({"test_mae": mae, "wall_seconds": seconds, "pretrain_seed": None}))
    (cell / "history.csv").write_text(f"epoch,val_mae,epoch_seconds\n0,0.5,{seconds}\n1,0.4,{seconds}\n")
    analysis = folder / "megnet/analysis"
    analysis.mkdir(parents=True)
    (analysis / "results.md").write_text(
        f"Machine: x; commit {seconds}\n\n| fraction | SSL (pretrained; sigma 0.5 A) | SL (Table 3) |\n"
        f"|---|---|---|\n| 0.5 | {mae:.4f} | 0.2000 |\n- seed_0/sigma_0.5: 100 epochs\n"
    )
    return folder


def test_equal_runs_differ_in_nothing_but_their_clocks(tmp_path):
    old, new = _run(tmp_path / "old"), _run(tmp_path / "new", seconds=7.5)
    files, numbers, diffs = compare_runs.compare(old, new)
    assert (files, diffs) == (3, []) and numbers == 1 + 4 + 3  # test_mae; epoch, val_mae x 2; three in the table


def test_a_changed_number_is_a_difference_naming_its_file(tmp_path):
    old, new = _run(tmp_path / "old"), _run(tmp_path / "new", mae=0.1235)
    _, _, diffs = compare_runs.compare(old, new)
    assert len(diffs) == 2 and diffs[0].startswith("megnet/analysis/results.md")
    assert "megnet/finetune/d/0.5/0/sl/metrics.json: only in old [0.1234], only in new [0.1235]" in diffs
    assert compare_runs.main([str(old), str(new)]) == 1 and compare_runs.main([str(old), str(old)]) == 0


def test_a_reshaped_file_needs_only_its_numbers_among_the_old_ones(tmp_path):
    old, new = _run(tmp_path / "old"), tmp_path / "new"
    shutil.copytree(old, new)
    (old / "megnet/analysis/cells.csv").write_text("mean_ssl,diff_ssl_sl\n0.1234,-0.08\n")
    (new / "megnet/analysis/cells.csv").write_text("family,mean\nssl,0.1234\n")
    assert compare_runs.compare(old, new)[2] == []
    (new / "megnet/analysis/cells.csv").write_text("family,mean\nssl,0.1233\n")
    assert compare_runs.compare(old, new)[2] == ["megnet/analysis/cells.csv: 0.1233 is not in the old file"]
