"""M3GNet's narrow rows: index sums by index dtype, and 9-input layers' backward products.

    .venv/bin/python benchmarks/bench_narrow.py --threads 1
Two primitives of the M3GNet step at its shapes (batch 128 of the step benchmarks:
24,448 edges, 965 atoms, 186,284 triplets; 9 three-body values per row):
``index_add_`` of triplet rows into atoms and into edges, and ``index_select`` of atom
rows onto edges, with int32 and int64 indices (the graph cache's batches carry int32; the
M3GNet path converts to int64); and a Linear 9 -> 64 on the edges, forward and backward,
as autograd runs it and as ``cdssl.models._NarrowLinear`` does (the backward's products
turned wide). Milliseconds per call, the median of repeats.
"""

from __future__ import annotations

import statistics
import time

from _common import parser, report


def per_call(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--edges", type=int, default=24448)
    p.add_argument("--atoms", type=int, default=965)
    p.add_argument("--triplets", type=int, default=186284)
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
    import torch

    from cdssl.models import _narrow_linear

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtypes = (torch.int32, torch.int64)
    print(f"# torch {torch.__version__}, {args.threads} thread(s); ms per call, median of {args.repeats}")
    rows = torch.randn(args.triplets, 9)

    def index_add(size: int, index):
        return lambda: torch.zeros(size, 9).index_add_(0, index, rows)

    for name, size in (("triplet rows into atoms", args.atoms), ("triplet rows into edges", args.edges)):
        index = torch.randint(0, size, (args.triplets,))
        timed = [(f"index_add_ {d}", per_call(index_add(size, index.to(d)), args.repeats)) for d in dtypes]
        print(f"## {name} ({args.triplets} x 9 into {size})")
        report([(k, 1e3 / v) for k, v in timed], "index_add_ torch.int32", "calls/s")
    table = torch.randn(args.atoms, 64)
    index = torch.randint(0, args.atoms, (args.edges,))

    def index_select(index):
        return lambda: torch.index_select(table, 0, index)

    timed = [(f"index_select {d}", per_call(index_select(index.to(d)), args.repeats)) for d in dtypes]
    print(f"## atom rows onto edges ({args.atoms} x 64 by {args.edges})")
    report([(k, 1e3 / v) for k, v in timed], "index_select torch.int32", "calls/s")

    layer = torch.nn.Linear(9, 64, bias=False)
    x = torch.randn(args.edges, 9, requires_grad=True)
    grad = torch.randn(args.edges, 64)

    def autograd_linear():
        torch.autograd.grad(layer(x), (x, layer.weight), grad)

    def narrow_linear():
        torch.autograd.grad(_narrow_linear(x, layer.weight, None), (x, layer.weight), grad)

    print(f"## Linear 9 -> 64 on {args.edges} rows, forward and backward")
    timed = [("autograd's Linear", per_call(autograd_linear, args.repeats))]
    timed.append(("cdssl _NarrowLinear", per_call(narrow_linear, args.repeats)))
    report([(k, 1e3 / v) for k, v in timed], "autograd's Linear", "calls/s")


if __name__ == "__main__":
    main()
