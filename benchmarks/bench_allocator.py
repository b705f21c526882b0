"""glibc's allocator and edge-sized tensors: one elementwise pass into a new tensor.

    .venv/bin/python benchmarks/bench_allocator.py [--edges 24448 --units 64]
glibc serves a block above its mmap threshold (at most 32 MiB) from a new mapping and
unmaps it when freed, so every new tensor that large is page-faulted in again, 4 KiB at a
time. This times a product of two (edges, units, 9) float32 tensors into a new tensor
(what an eager training step does at every elementwise op) and into one tensor allocated
once, each in a fresh process: with glibc's defaults, and with the environment that
makes glibc keep freed memory (``KEEP`` below, which a user can set for any command).
Minor page faults per pass from ``getrusage``; resident memory after the passes. The
default shape is MatGL TensorNet's per-edge messages at batch 128 of the step
benchmarks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from _common import parser

# glibc: no mmap for large blocks; give memory back only above 1 GiB free at the heap's top
KEEP = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}

CHILD = r"""
import json, resource, sys, time
import torch
torch.set_num_threads(1)
edges, units, repeats = (int(v) for v in sys.argv[1:4])
a = torch.randn(edges, units, 9)
out = torch.empty_like(a)

def per_pass(fn):
    for _ in range(10):  # warm-up: the heap grows to what the passes need
        fn()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    ms = (time.perf_counter() - start) / repeats * 1e3
    return ms, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / repeats

new = per_pass(lambda: torch.mul(a, a))
into = per_pass(lambda: torch.mul(a, a, out=out))
rss = int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() / 2**20
print(json.dumps({"new": new, "into": into, "rss": rss}))
"""


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--edges", type=int, default=24448)
    p.add_argument("--units", type=int, default=64)
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
    mib = args.edges * args.units * 9 * 4 / 2**20
    print(f"# one thread; ({args.edges}, {args.units}, 9) float32, {mib:.1f} MiB; {args.repeats} passes after 10")
    print(f"# kept: {' '.join(f'{k}={v}' for k, v in KEEP.items())}")
    print(f"{'allocator':<18} {'new tensor: ms':>15} {'faults':>8} {'into one: ms':>13} {'faults':>8} {'RSS MiB':>8}")
    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    for label, env in (("glibc's default", base), ("freed memory kept", {**base, **KEEP})):
        shape = [str(args.edges), str(args.units), str(args.repeats)]
        run = subprocess.run([sys.executable, "-c", CHILD, *shape], env=env, check=True, capture_output=True, text=True)
        r = json.loads(run.stdout.splitlines()[-1])
        (new_ms, new_faults), (into_ms, into_faults) = r["new"], r["into"]
        print(f"{label:<18} {new_ms:>15.1f} {new_faults:>8.0f} {into_ms:>13.1f} {into_faults:>8.0f} {r['rss']:>8.0f}")


if __name__ == "__main__":
    main()
