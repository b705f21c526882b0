"""MEGNet's SoftPlus2 on edge-sized tensors: MatGL's module against cdssl's node and a log form.

    .venv/bin/python benchmarks/bench_activation.py --threads 1

After the split edge update, a MEGNet training step's largest cost beside its matmuls is
SoftPlus2 (``softplus(x) - log 2``) on every edge-sized hidden layer (docs/benchmarks.md).
MatGL's module runs it as two ops, a softplus and a subtraction into a new tensor. cdssl's
training path (``cdssl.models._SoftPlus2``) is one autograd function that shifts the
softplus in place and hands its backward straight to torch's softplus backward (the same
values and gradients, one edge-sized tensor fewer). A third form, ``log(1/2 + exp(x)/2)``
with the same backward (values to float32 rounding), trades softplus's log1p for a log:
which of the two kernels is faster depends on the CPU. This times a chain of Linear +
SoftPlus2 layers at the shape of one pretraining batch's edges (forward, then backward of
the sum of squares), each way, after checking that the outputs and every gradient agree;
``--compile`` adds ``torch.compile`` of SoftPlus2 alone. Reported in chains per second
(forward + backward), the median of ``--passes`` rounds that time every form in turn;
then each activation alone, forward and backward on one edge-sized tensor, in calls per
second.
"""

from __future__ import annotations

import argparse
import statistics
import time

from _common import report


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

    class LogForm(torch.autograd.Function):
        """log(1/2 + exp(x)/2): exp into a new tensor, a multiply-add and a log in place;
        softplus's backward. Only below float32's exp overflow (88.7), as here."""

        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            y = torch.exp(x)
            return torch.add(y.new_tensor(0.5), y, alpha=0.5, out=y).log_()

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
        "cdssl _SoftPlus2 (one autograd function)": _SoftPlus2.apply,
        "log form": LogForm.apply,
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

    def per_second(calls: dict) -> list[tuple[str, float]]:
        """Calls per second of each ``calls[name]()``: ``--passes`` rounds of 10 calls of
        each in turn (a change in the machine's speed reaches all alike); the median."""
        times: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(args.passes):
            for name, call in calls.items():
                start = time.perf_counter()
                for _ in range(10):
                    call()
                times[name].append((time.perf_counter() - start) / 10)
        return [(name, 1.0 / statistics.median(t)) for name, t in times.items()]

    report(per_second({name: lambda a=act: chain(a) for name, act in variants.items()}), "MatGL SoftPlus2", "chains/s")

    x, grad = torch.randn(args.rows, args.width) * 3, torch.randn(args.rows, args.width)
    rows = per_second(
        {name: lambda a=act: a(x.detach().requires_grad_(True)).backward(grad) for name, act in variants.items()}
    )
    print(f"\n# the activation alone on {args.rows} x {args.width}, forward + backward")
    report(rows, "MatGL SoftPlus2", "calls/s")


if __name__ == "__main__":
    main()
