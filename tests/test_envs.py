"""envs/*.yaml (for --use-conda) must pin exactly what requirements.txt pins."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# tools that only the test/dev side needs; conda users running the workflow do not
DEV_ONLY = {"pytest", "snakefmt", "snakemake", "snakemake-executor-plugin-slurm"}


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
            assert required.get(name) == version, f"{env.name}: {name}=={version}, requirements.txt has {required.get(name)}"
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
