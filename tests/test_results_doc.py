"""docs/results.md is generated from the runs' own results documents (tools/results_doc.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import results_doc  # noqa: E402


def test_the_committed_results_document_is_what_the_generator_writes():
    assert results_doc.OUTPUT.read_text() == results_doc.build(), (
        "docs/results.md differs from the generator's: .venv/bin/python tools/results_doc.py build"
    )
    # every run the template includes is committed, and every committed run is included
    included = {m for line in results_doc.TEMPLATE.read_text().splitlines() for m in results_doc.INCLUDE.findall(line)}
    assert included == {p.stem for p in results_doc.RUNS.glob("*.md")}


def test_collect_copies_a_run_and_build_includes_it_below_the_templates_headings(tmp_path):
    run = tmp_path / "results"
    (run / "megnet/analysis").mkdir(parents=True)
    (run / "megnet/analysis" / "results.md").write_text(
        "Machine: 2 CPUs; Python 3.11.7, torch 2.13.0, matgl 4.1; commit abc; config c.yaml; jobs' summed time 1 min.\n"
        "\n### task (test MAE, eV)\n\n| fraction | SSL |\n|---|---|\n| 0.1 | 0.5 |\n"
    )
    (run / "megnet/analysis" / "fig4_finetune.png").write_bytes(b"png")
    written = results_doc.collect("tiny", run, runs=tmp_path / "runs", images=tmp_path / "img")
    assert [p.name for p in written] == ["tiny.md", "tiny_fig4_finetune.png"]
    # or from the backbone's own folder (one backbone of a list)
    again = results_doc.collect("tiny", run / "megnet", runs=tmp_path / "again", images=tmp_path / "img2")
    assert again[0].read_text() == written[0].read_text()
    template = tmp_path / "t.md"
    template.write_text("# Results\n\n## Tiny\n\n<!-- run: tiny -->\n\nRead it so.\n")
    text = results_doc.build(template, tmp_path / "runs")
    assert "\n*Machine: 2 CPUs;" in text and "\n#### task (test MAE, eV)\n" in text and text.endswith("Read it so.\n")
    template.write_text("<!-- run: absent -->\n")
    with pytest.raises(FileNotFoundError, match="absent"):
        results_doc.build(template, tmp_path / "runs")


def test_a_backbone_list_run_is_collected_by_its_comparison_document(tmp_path):
    # a list of backbones writes no results.md at the top, only the comparison
    run = tmp_path / "results"
    (run / "analysis").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="results.md .a backbone list: analysis/backbones.md. is missing"):
        results_doc.collect("bb", run, runs=tmp_path / "runs", images=tmp_path / "img")
    (run / "analysis" / "backbones.md").write_text("Machine: x.\n\n### Backbones\n")
    written = results_doc.collect("bb", run, runs=tmp_path / "runs", images=tmp_path / "img")
    assert [p.name for p in written] == ["bb.md"] and written[0].read_text().endswith("### Backbones\n")


def test_check_fails_on_a_stale_document_with_the_command_that_fixes_it(tmp_path, monkeypatch):
    stale = tmp_path / "results.md"
    stale.write_text("typed by hand\n")
    monkeypatch.setattr(results_doc, "OUTPUT", stale)
    monkeypatch.setattr(results_doc, "ROOT", tmp_path)
    assert results_doc.main(["check"]) == 1
    stale.write_text(results_doc.build())
    assert results_doc.main(["check"]) == 0


def test_the_skeleton_ignores_numbers_and_names_but_not_a_missing_section():
    one = (
        "Machine: x; Python 3; torch 2; matgl 4; commit a; config c; jobs' summed time 1 min.\n\n"
        "### a (test MAE, u)\n\n| fraction | SSL |\n|---|---|\n| 0.1 | 1 |\n\n- 7 cells\n- ssl_vs_sl: 1\n"
    )
    two = (
        one.replace("### a", "### other_task")
        .replace("| 0.1 | 1 |", "| 0.2 | 3 |")
        .replace("ssl_vs_sl", "ssl_vs_sl_large")
    )
    assert results_doc.skeleton(one) == results_doc.skeleton(two)
    assert results_doc.skeleton(one) != results_doc.skeleton(one.replace("| fraction | SSL |\n|---|---|\n", ""))


def test_the_command_line_builds_as_documented(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "results_doc.py"), "check"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
