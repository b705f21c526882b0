"""Every command the README and the Makefile print works as written (dry-run where it would train)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    """The commands of the README and of every page it sends users to (docs/, config/README.md)."""
    pages = [ROOT / "README.md", ROOT / "config" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    text = "\n".join(page.read_text() for page in pages)
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#")[0].strip()
            if line:
                commands.append(" ".join(line.split()))
    # inline commands may wrap across lines
    commands += [" ".join(c.split()) for c in re.findall(r"`((?:\.venv/bin/|make )[^`]+)`", text)]
    return list(dict.fromkeys(commands))


def make_commands(target: str) -> list[str]:
    """The recipe lines ``make target`` would run (make -n), the venv setup left out."""
    out = subprocess.run(["make", "-n", "-W", ".venv/.installed", target], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return [line for line in out.stdout.splitlines() if line.startswith(".venv/bin/") and "pip" not in line]


COMMANDS = readme_commands()


def test_the_readme_shows_the_commands_it_promises():
    assert "make demo" in COMMANDS and "make test" in COMMANDS
    assert any(c.startswith(".venv/bin/snakemake figures") for c in COMMANDS)


def _snakemake_dry_run(command: str, workdir: Path) -> subprocess.CompletedProcess:
    # the README's "your own data" copies the demo config to config/mine.yaml first
    mine = workdir / "mine.yaml"
    mine.write_text((ROOT / "config" / "demo.yaml").read_text())
    args = [str(mine) if a == "config/mine.yaml" else a for a in shlex.split(command)[1:]]
    if "--report" in args:
        # a report needs finished results: check the report target is accepted by listing
        # what it would need
        args = [a for i, a in enumerate(args) if a != "--report" and args[i - 1] != "--report"]
    cmd = [sys.executable, "-m", "snakemake", "-n", "--directory", str(workdir), *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def expanded() -> list[str]:
    out = []
    for command in COMMANDS:
        if command.startswith("make "):
            target = command.split()[1]
            out += [c for c in make_commands(target) if "/snakemake" in c]
        else:
            out.append(command)
    return list(dict.fromkeys(out))


@pytest.mark.slow
@pytest.mark.parametrize("command", [c for c in expanded() if c.startswith(".venv/bin/snakemake")])
def test_snakemake_command_dry_runs_as_printed(command, tmp_path):
    proc = _snakemake_dry_run(command, tmp_path)
    assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def test_make_targets_exist():
    for command in COMMANDS:
        if command.startswith("make "):
            make_commands(command.split()[1])


def test_cli_command_in_the_readme_parses():
    from cdssl.cli import finetune_parser

    (command,) = [c for c in COMMANDS if c.startswith(".venv/bin/cdssl-finetune")]
    args = finetune_parser().parse_args(shlex.split(command)[1:])
    assert args.encoder == "results/megnet/pretrain/seed_0/sigma_0.5/pool_size_all/encoder"


def test_predict_command_in_the_readme_parses():
    from cdssl.inference import predict_parser

    (command,) = [c for c in COMMANDS if c.startswith(".venv/bin/cdssl-predict")]
    args = predict_parser().parse_args(shlex.split(command)[1:])
    assert args.run == ["results/megnet/finetune/dielectric_constant/0.7"] and args.structures == ["examples/*.cif"]


@pytest.mark.slow
def test_tool_commands_in_the_readme_run(tmp_path):
    """Commands of tools/ that write files run as printed, in a scratch folder."""
    for command in [c for c in COMMANDS if c.startswith(".venv/bin/python tools/example")]:
        script, *args = shlex.split(command)[1:]
        proc = subprocess.run([sys.executable, ROOT / script, *args], cwd=tmp_path, capture_output=True, text=True)
        assert proc.returncode == 0, (command, proc.stderr[-2000:])
    assert sorted(p.name for p in (tmp_path / "examples").iterdir()) == ["LiF.cif", "MgO.cif", "NaCl.cif", "Si.cif"]


@pytest.mark.slow
def test_benchmark_command_in_the_readme_parses():
    for command in [c for c in COMMANDS if c.startswith(".venv/bin/python benchmarks/")]:
        script, *flags = shlex.split(command)[1:]
        helptext = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True).stdout
        for flag in (f for f in flags if f.startswith("--")):
            assert flag in helptext, (command, flag)
