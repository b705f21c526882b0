"""MEGNet's edge-many primitives: the gathered sum's backward, and Linear layers on MKL and on oneDNN.

    .venv/bin/python benchmarks/bench_edge_ops.py --threads 1 [--vary]

At the shapes of one pretraining batch of the step benchmarks (128 crystals: 24,448
edges, 998 atoms; MEGNet's edge layers 100 -> 128 -> 64 in the encoder, 64 -> 128 ->
128 -> 64 in a block's update), each primitive as torch runs it and the alternative:
the gathered sum of the split edge update, forward and backward, as torch's
``embedding_bag`` and as ``cdssl.models._GatheredSum`` (one ``index_add_`` per column in
the backward); a Linear's forward and backward (input gradient, except for the encoder's
first layer, whose input is the distance expansion) as autograd runs it (MKL's product)
and with the forward and the input's gradient as oneDNN inner products
(``torch.ops.mkldnn._linear_pointwise``, the kernel torch's own compiler emits for a CPU
Linear); and the split edge update's per-edge block added onto the gathered sum
(``h.addmm_``, and oneDNN's ``binary`` form). The oneDNN layer is not used by the
pipeline: ``--vary`` gives every call a new row count, as a training run's batches have,
and prints the process's resident memory, which grows with every row count oneDNN has
built a kernel for. Each pair is checked equal (the largest difference is printed) and
timed in calls per second, the median of ``--repeats`` interleaved.
"""

from __future__ import annotations

import argparse
import statistics
import time

from _common import report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--edges", type=int, default=24448)
    p.add_argument("--atoms", type=int, default=998)
    p.add_argument("--graphs", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--vary", action="store_true", help="a new row count at every call (up to 2%% fewer rows)")
    args = p.parse_args()
    import psutil
    import torch

    from cdssl.models import _bag_index, _gathered_sum

    linear_pointwise = torch.ops.mkldnn._linear_pointwise

    class OneDNNLinear(torch.autograd.Function):
        """x @ weight.T + bias (+ other): forward and input gradient on oneDNN, the weight's
        gradient as autograd's MKL product."""

        @staticmethod
        def forward(ctx, x, weight, bias, other):
            # contiguous: oneDNN sums a strided weight (a split layer's block) in another order
            weight = weight.contiguous()
            ctx.save_for_backward(x, weight)
            if other is None:
                return linear_pointwise(x, weight, bias, "none", [], "")
            return linear_pointwise.binary(x, other, weight, bias, "add")

        @staticmethod
        def backward(ctx, grad):
            x, weight = ctx.saved_tensors
            need_x, need_w, need_b, need_other = ctx.needs_input_grad
            grad_x = linear_pointwise(grad, weight.t(), None, "none", [], "") if need_x else None
            grad_w = grad.t().mm(x) if need_w else None
            grad_b = grad.sum(0) if need_b else None
            return grad_x, grad_w, grad_b, (grad if need_other else None)

    def onednn_linear(x, weight, bias):
        return OneDNNLinear.apply(x, weight, bias, None)

    def onednn_add(h, x, weight):
        return OneDNNLinear.apply(x, weight, None, h)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"# torch {torch.__version__}, {args.threads} thread(s); calls/s, median of {args.repeats}")
    print(f"# {args.edges} edges, {args.atoms} atoms, {args.graphs} graphs; new row count per call: {args.vary}")
    calls = {"n": 0, "timing": False}

    def rows() -> int:
        """The edges of this call: all, or while timing with --vary one fewer row than the
        call before (cycling through 2% of them)."""
        calls["n"] += 1
        return args.edges - (calls["n"] % (args.edges // 50) if args.vary and calls["timing"] else 0)

    def rate(pair: dict) -> list[tuple[str, float]]:
        times: dict[str, list[float]] = {name: [] for name in pair}
        calls["timing"] = True
        for fn in pair.values():
            fn()
        for _ in range(args.repeats):
            for name, fn in pair.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        calls["timing"] = False
        return [(name, 1.0 / statistics.median(t)) for name, t in times.items()]

    def memory() -> None:
        print(f"# resident memory of this process: {psutil.Process().memory_info().rss / 2**20:.0f} MiB")

    def worst(a, b) -> float:
        return max((x - y).abs().max().item() / y.abs().max().item() for x, y in zip(a, b, strict=True))

    for d_in, d_out, input_grad in ((100, 128, False), (128, 64, True), (64, 128, True), (128, 128, True)):
        layer = torch.nn.Linear(d_in, d_out)
        x_all = torch.randn(args.edges, d_in, requires_grad=input_grad)
        grad_all = torch.randn(args.edges, d_out)
        leaves = (x_all, layer.weight, layer.bias) if input_grad else (layer.weight, layer.bias)

        def run(fn, d_out=d_out, x_all=x_all, grad_all=grad_all, leaves=leaves, layer=layer):
            n = rows()
            return torch.autograd.grad(fn(x_all[:n], layer.weight, layer.bias), leaves, grad_all[:n])

        pair = {
            "autograd's Linear (MKL)": lambda run=run: run(torch.nn.functional.linear),
            "oneDNN inner product": lambda run=run: run(onednn_linear),
        }
        same = worst(run(onednn_linear), run(torch.nn.functional.linear))
        print(f"\n## Linear {d_in} -> {d_out}, forward and backward (largest gradient difference {same:.1e})")
        report(rate(pair), "autograd's Linear (MKL)", "calls/s")
        memory()

    # the split edge update: the gathered sum plus the edge block of the first conv layer,
    # whose weight is a strided block of the layer's 256 inputs
    first = torch.nn.Linear(256, 128)
    w_edge = first.weight[:, 128:192]
    h_all = torch.randn(args.edges, 128, requires_grad=True)
    e_all = torch.randn(args.edges, 64, requires_grad=True)
    grad_all = torch.randn(args.edges, 128)

    def add(fn):
        n = rows()
        return torch.autograd.grad(fn(h_all[:n] * 1, e_all[:n], w_edge), (h_all, e_all, first.weight), grad_all[:n])

    pair = {
        "h.addmm_ (MKL)": lambda: add(lambda h, e, w: h.addmm_(e, w.T)),
        "oneDNN binary inner product": lambda: add(onednn_add),
    }
    same = worst(add(onednn_add), add(lambda h, e, w: h.addmm_(e, w.T)))
    print(f"\n## the edge block 64 -> 128 added onto the gathered sum (largest gradient difference {same:.1e})")
    report(rate(pair), "h.addmm_ (MKL)", "calls/s")
    memory()

    src = torch.randint(0, args.atoms, (args.edges,)).sort().values.int()
    dst = torch.randint(0, args.atoms, (args.edges,)).int()
    graph = torch.randint(0, args.graphs, (args.edges,)).sort().values.int()
    tables = [torch.randn(k, 128, requires_grad=True) for k in (args.atoms, args.atoms, args.graphs)]
    bag = _bag_index([src, dst, graph], [args.atoms, args.atoms, args.graphs])
    grad_all = torch.randn(args.edges, 128)

    def embedding_bag(tables, bag):
        return torch.nn.functional.embedding_bag(bag, torch.cat(tables), mode="sum")

    def gathered(fn):
        n = rows()
        return torch.autograd.grad(fn(tables, bag[:n]), tables, grad_all[:n])

    pair = {
        "embedding_bag (sorting backward)": lambda: gathered(embedding_bag),
        "cdssl _GatheredSum (index_add_)": lambda: gathered(_gathered_sum),
    }
    same = worst(gathered(_gathered_sum), gathered(embedding_bag))
    print(f"\n## the gathered sum of 3 tables x 128 onto the edges (largest gradient difference {same:.1e})")
    report(rate(pair), "embedding_bag (sorting backward)", "calls/s")


if __name__ == "__main__":
    main()
