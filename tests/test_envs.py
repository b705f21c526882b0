"""envs/*.yaml (for --use-conda) must pin exactly what requirements.txt pins."""

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# tools that only the test/dev side needs; conda users running the workflow do not
DEV_ONLY = {"pytest", "pytest-xdist", "execnet", "snakefmt", "ruff", "snakemake", "snakemake-executor-plugin-slurm"}


def pins(lines) -> dict[str, str]:
    out = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)==([^\s;]+)", line)
        assert m, f"not an exact pin: {line!r}"
        out[m.group(1).lower()] = m.group(2)
    return out


def test_every_env_matches_requirements():
    required = pins((ROOT / "requirements.txt").read_text().splitlines())
    envs = sorted((ROOT / "envs").glob("*.yaml"))
    assert envs
    for env in envs:
        spec = yaml.safe_load(env.read_text())
        pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict) and "pip" in d)
        env_pins = pins(pip)
        assert "python=3.11" in spec["dependencies"], env
        for name, version in env_pins.items():
            assert required.get(name) == version, (
                f"{env.name}: {name}=={version}, requirements.txt has {required.get(name)}"
            )
        missing = set(required) - set(env_pins) - DEV_ONLY
        assert not missing, f"{env.name} lacks {sorted(missing)}"


def test_every_rule_has_conda_log_and_benchmark():
    for smk in (ROOT / "workflow/rules").glob("*.smk"):
        for block in re.split(r"\n(?=rule )", smk.read_text()):
            if not block.startswith("rule "):
                continue
            name = block.split(":")[0]
            for directive in ("conda:", "log:", "benchmark:"):
                assert directive in block, f"{smk.name}: {name} lacks {directive}"


@pytest.mark.slow
def test_a_plain_pip_install_validates_configs_and_runs_the_cli(tmp_path):
    """Non-editable install: the schema and the paper's config come from the wheel, not the checkout."""
    import os
    import shutil
    import subprocess
    import sys

    src = tmp_path / "src"  # a copy, so the build never writes into the checkout
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", "results", ".snakemake", "data", "tests"))
    target = tmp_path / "site"
    pip = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(src),
        ],
        capture_output=True,
        text=True,
    )
    assert pip.returncode == 0, pip.stderr
    shutil.rmtree(src)  # nothing may be read from a checkout any more
    probe = (
        "from cdssl.config import PAPER_CONFIG, SCHEMA_PATH, load_config; "
        "c = load_config(PAPER_CONFIG); print(PAPER_CONFIG); print(SCHEMA_PATH); print(c['pretrain']['epochs'])"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    config_path, schema_path, epochs = out.stdout.split()
    assert config_path.startswith(str(target)) and schema_path.startswith(str(target)) and epochs == "4096"
    cli = subprocess.run(
        [sys.executable, "-m", "cdssl.cli", "--help"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert cli.returncode == 0 and "--encoder" in cli.stdout, cli.stderr
