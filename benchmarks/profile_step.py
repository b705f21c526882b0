"""Where a pretraining step's time goes, and what the dense arithmetic alone would allow.

    .venv/bin/python benchmarks/profile_step.py --n 500 --threads 1 --batch 128 --backbone m3gnet
For the plain MatGL step and the cdssl step (as ``bench_pretrain.py`` times them), over one
pass of the same structures after a warm-up batch:
- phases: batching, forward, backward, optimizer (ms per batch);
- forward by module (the outermost MatGL module running; "outside modules" is code between
  module calls: gathers, distances, triplets, the loss);
- self time by op kind over the whole step (dense matmuls, gathers/scatters, activations,
  other elementwise work such as basis expansions, memory copies and fills);
- the matmul floating-point work per graph (forward and backward, torch's FlopCounterMode),
  this machine's matmul rate at the step's own shapes, and the graphs/s that rate alone
  would allow: the arithmetic bound the measured graphs/s is compared against.
"""

from __future__ import annotations

import re
import tempfile
import time
from collections import defaultdict

from _common import backbone_sizes, device, environment, matgl_loader, parser, plain_pretext_loss, table

KINDS = {
    "dense matmul": r"^aten::(mm|addmm_?|bmm|matmul|linear|baddbmm|addmv|mv|dot)$",
    "gather / scatter": r"^aten::(index|index_select|index_add_?|scatter_add_?|scatter_|_index_put_impl_|index_put_"
    r"|gather|scatter|scatter_reduce|_?embedding.*|segment_reduce|_segment_reduce.*)$",
    # exp and log: M3GNet's radial and cutoff terms, and the SoftPlus2 log form that
    # benchmarks/bench_activation.py compares
    "activations": r"^aten::(silu|sigmoid|softplus|tanh|exp|log)(_backward)?_?$",
    "copies, fills, allocation": r"^aten::(copy_|fill_|zero_|zeros|empty.*|cat|clone|contiguous|to|_to_copy|stack)$",
}


def op_kind(name: str) -> str | None:
    for kind, pattern in KINDS.items():
        if re.match(pattern, name):
            return kind
    return "other elementwise and reductions" if name.startswith("aten::") else None


class ModuleRanges:
    """Profiler ranges named after the outermost module of ``root`` that is running."""

    def __init__(self, root, strip: str = "") -> None:
        import torch

        paths = defaultdict(list)
        for name, module in root.named_modules(remove_duplicate=False):
            paths[id(module)].append((name, module))
        # a module held under several names (MatGL shares one activation instance across a
        # network) is named by its class: its calls outside any other module's are its own
        self.names = {
            key: re.sub(r"\.\d+", "", found[0][0].removeprefix(strip)).split(".")[0]
            if len(found) == 1
            else f"{type(found[0][1]).__name__} (one instance, shared)"
            for key, found in paths.items()
        }
        self.names.pop(id(root), None)
        self.open: list = []
        self.handles = [
            torch.nn.modules.module.register_module_forward_pre_hook(self.enter),
            torch.nn.modules.module.register_module_forward_hook(self.leave),
        ]

    def enter(self, module, _inputs) -> None:
        from torch.autograd.profiler import record_function

        if any(self.open) or id(module) not in self.names:
            self.open.append(None)
            return
        rf = record_function(f"module::{self.names[id(module)]}")
        rf.__enter__()
        self.open.append(rf)

    def leave(self, _module, _inputs, _output) -> None:
        rf = self.open.pop()
        if rf is not None:
            rf.__exit__(None, None, None)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def profile_pass(step, batches, root, strip: str):
    """Self CPU time by op kind, forward time by module and per phase, for one pass."""
    from torch.profiler import profile

    ranges = ModuleRanges(root, strip)
    with profile() as prof:
        start = time.perf_counter()
        for b in batches:
            step(b)
        wall = time.perf_counter() - start
    ranges.remove()
    kinds, modules, phases = defaultdict(float), defaultdict(float), defaultdict(float)
    for event in prof.key_averages():
        if event.key.startswith("module::"):
            modules[event.key.removeprefix("module::")] += event.cpu_time_total
        elif event.key.startswith("phase::"):
            phases[event.key.removeprefix("phase::")] += event.cpu_time_total
        elif (kind := op_kind(event.key)) is not None:
            kinds[kind] += event.self_cpu_time_total
    modules["outside modules"] = phases["forward"] - sum(modules.values())
    return wall, kinds, modules, phases


def phased(collate, forward, model_params, lr: float = 1e-3):
    """A step in four named ranges: batching, forward (loss), backward, optimizer."""
    import torch
    from torch.autograd.profiler import record_function

    opt = torch.optim.Adam(model_params, lr=lr)

    def step(item) -> int:
        with record_function("phase::batching"):
            batch = collate(item)
        with record_function("phase::forward"):
            loss, n = forward(batch)
        with record_function("phase::backward"):
            opt.zero_grad()
            loss.backward()
        with record_function("phase::optimizer"):
            opt.step()
        return n

    return step


def matmul_rate(rows: int, widths: list[tuple[int, int]], dev) -> float:
    """GFLOP/s of torch.mm here at the step's shapes (edge rows x in -> out), forward-like."""
    import torch

    flops = seconds = 0.0
    for k, n in widths:
        a, w = torch.randn(rows, k, device=dev), torch.randn(n, k, device=dev)
        for _ in range(2):
            a @ w.T
        start = time.perf_counter()
        for _ in range(10):
            a @ w.T
        seconds += time.perf_counter() - start
        flops += 10 * 2 * rows * k * n
    return flops / seconds / 1e9


def step_flops(step, item) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step(item)
    return counter.get_total_flops()


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--batch", type=int, default=128)
    args = p.parse_args()
    import torch

    from cdssl.graphs import GraphCache, build_cache
    from cdssl.models import build_network, edge_feature_dim
    from cdssl.pretrain import DenoisingModule

    torch.set_num_threads(args.threads)
    dev = device(args.device)
    environment(args, dev)
    t = table(args.n, args.max_sites)
    sizes = backbone_sizes(args.backbone)

    torch.manual_seed(0)
    model = build_network(sizes, 5.0).to(dev)
    head = torch.nn.Linear(edge_feature_dim(model), 1).to(dev)
    with tempfile.TemporaryDirectory() as tmp:
        plain_batches = list(matgl_loader(t, args.batch, tmp))
    plain = phased(
        lambda b: b,
        plain_pretext_loss(model, head, args.backbone, sizes, dev),
        [*model.parameters(), *head.parameters()],
    )

    cache = GraphCache(build_cache(t, 5.0, 1)[0])
    order = list(range(len(cache)))
    batches = [order[i : i + args.batch] for i in range(0, len(order), args.batch)]
    torch.manual_seed(0)
    module = DenoisingModule(sizes, 5.0, 0.5, 1e-3).to(dev)
    ours = phased(
        lambda idx: cache.collate(idx).to(dev),
        lambda b: (module.training_step(b, 0), b.num_graphs),
        [q for q in module.parameters() if q.requires_grad],
    )

    plain(plain_batches[0])
    ours(batches[0])
    results = {
        "plain MatGL": (profile_pass(plain, plain_batches, model, ""), step_flops(plain, plain_batches[0])),
        "cdssl": (profile_pass(ours, batches, module, "model."), step_flops(ours, batches[0])),
    }
    n_graphs = len(order)
    first = cache.collate(batches[0])
    per_batch = len(batches)
    edges = first.edge_index.shape[1]
    print(f"# {n_graphs} graphs in {per_batch} batches; first batch {first.num_graphs} graphs, {edges} edges")
    width = sizes.get("units", sizes.get("dim_edge_embedding", 64))
    rate = matmul_rate(edges, [(width, width), (width, 2 * width), (3 * width, width)], dev)
    print(f"# torch.mm here, {edges} rows, widths around {width}: {rate:.1f} GFLOP/s")
    for name, ((wall, kinds, modules, phases), flops) in results.items():
        graphs_s = n_graphs / wall
        gflop_graph = flops / first.num_graphs / 1e9
        print(f"\n## {name}: {graphs_s:.1f} graphs/s under the profiler; {gflop_graph * 1e3:.1f} MFLOP of matmuls")
        print(f"per graph (forward + backward): the matmul rate alone allows {rate / gflop_graph:.0f} graphs/s")
        total = sum(phases.values())
        print("| phase | ms per batch | share |\n|---|---|---|")
        for phase in ("batching", "forward", "backward", "optimizer"):
            print(f"| {phase} | {phases[phase] / 1e3 / per_batch:.1f} | {phases[phase] / total:.0%} |")
        print("| forward, by module | ms per batch | share of forward |\n|---|---|---|")
        for mod, us in sorted(modules.items(), key=lambda kv: -kv[1]):
            print(f"| {mod} | {us / 1e3 / per_batch:.1f} | {us / max(phases['forward'], 1):.0%} |")
        all_ops = sum(kinds.values())
        print("| op kind (self time, whole step) | ms per batch | share |\n|---|---|---|")
        for kind, us in sorted(kinds.items(), key=lambda kv: -kv[1]):
            print(f"| {kind} | {us / 1e3 / per_batch:.1f} | {us / all_ops:.0%} |")


if __name__ == "__main__":
    main()
