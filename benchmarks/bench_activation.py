"""MEGNet's SoftPlus2 on edge-sized tensors: MatGL's module against cdssl's log form and others.

    .venv/bin/python benchmarks/bench_activation.py --threads 1

After the split edge update, a MEGNet training step's largest cost beside its matmuls is
SoftPlus2 (``softplus(x) - log 2``) on every edge-sized hidden layer (docs/benchmarks.md).
MatGL's module runs it as two ops, a softplus and a subtraction into a new tensor. One
autograd function can shift the softplus in place and hand its backward straight to
torch's softplus backward (same values and gradients, one edge-sized tensor fewer).
cdssl's training path (``cdssl.models._SoftPlus2``) computes it as ``log(1/2 + exp(x)/2)``
with the same backward. This times a chain of Linear + SoftPlus2 layers at the shape of one pretraining batch's edges
(forward, then backward of the sum of squares), each way, after checking that the outputs
and every gradient agree; ``--compile`` adds ``torch.compile`` of SoftPlus2 alone.
Reported in chains per second (forward + backward), the median of ``--passes``; then each
activation alone, forward and backward on one edge-sized tensor, in calls per second.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

from _common import report

LOG2 = math.log(2.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # 24,448: the edges of the first batch of 128 pretraining crystals (docs/benchmarks.md)
    p.add_argument("--rows", type=int, default=24448, help="edges in the batch")
    p.add_argument("--width", type=int, default=128, help="the hidden layers' width")
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--passes", type=int, default=5, help="timed passes of 10 chains; the median is reported")
    p.add_argument("--compile", action="store_true", help="also time torch.compile of SoftPlus2")
    args = p.parse_args()
    import torch
    from matgl.layers._activations import SoftPlus2
    from torch import nn

    class ShiftedSoftplus(torch.autograd.Function):
        """softplus(x) - log 2 with the shift in place; its backward is softplus's own."""

        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return nn.functional.softplus(x).sub_(LOG2)

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return torch.ops.aten.softplus_backward(grad, x, 1.0, 20.0)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"# torch {torch.__version__}, torch threads {torch.get_num_threads()}")
    print(f"# {args.layers} x (Linear {args.width} -> {args.width} + SoftPlus2) on {args.rows} rows")
    linears = [nn.Linear(args.width, args.width) for _ in range(args.layers)]
    module = SoftPlus2()
    from cdssl.models import _SoftPlus2

    variants = {
        "MatGL SoftPlus2": module,
        "one autograd function": ShiftedSoftplus.apply,
        "cdssl log form": _SoftPlus2.apply,
    }
    if args.compile:
        variants["torch.compile(SoftPlus2)"] = torch.compile(module.forward, dynamic=True)
    x0 = torch.randn(args.rows, args.width)

    def chain(act):
        x = x0.clone().requires_grad_(True)
        h = x
        for linear in linears:
            h = act(linear(h))
        h.square().sum().backward()
        grads = [x.grad, *(q.grad.clone() for lin in linears for q in lin.parameters())]
        for lin in linears:
            lin.zero_grad(set_to_none=True)
        return h.detach(), grads

    out, grads = chain(module)
    for name, act in variants.items():
        o, g = chain(act)
        worst = max((a - b).abs().max().item() / b.abs().max().item() for a, b in zip(g, grads, strict=True))
        print(f"# {name}: max |output difference| {(o - out).abs().max().item():.1e}, gradients {worst:.1e} (relative)")

    def per_second(call) -> float:
        """Calls per second of ``call()``: the median of ``--passes`` passes of 10 calls."""
        times = []
        for _ in range(args.passes):
            start = time.perf_counter()
            for _ in range(10):
                call()
            times.append((time.perf_counter() - start) / 10)
        return 1.0 / statistics.median(times)

    report(
        [(name, per_second(lambda a=act: chain(a))) for name, act in variants.items()], "MatGL SoftPlus2", "chains/s"
    )

    x, grad = torch.randn(args.rows, args.width) * 3, torch.randn(args.rows, args.width)
    rows = [
        (name, per_second(lambda a=act: a(x.detach().requires_grad_(True)).backward(grad)))
        for name, act in variants.items()
    ]
    print(f"\n# the activation alone on {args.rows} x {args.width}, forward + backward")
    report(rows, "MatGL SoftPlus2", "calls/s")


if __name__ == "__main__":
    main()
