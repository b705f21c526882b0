"""Pretraining step: graphs/s of the cdssl DenoisingModule vs a plain loop over MatGL's model.

    .venv/bin/python benchmarks/bench_pretrain.py --n 1000 --batch 128 [--backbone m3gnet]
Same structures, the backbone's large model (MEGNet: Table 2), batch, Adam; each step is
forward, backward, optimiser step, including batching. The plain path is what one writes
with MatGL alone: MGLDataset graphs, MatGL's collate, positions from fractional
coordinates and lattice (as ModelLightningModule does, then perturbed), the model's own
forward (readout included; M3GNet builds its triplets from the shaken positions there),
and the same linear head: on the last block's ``feature_dict`` edge features (MEGNet,
M3GNet) or on TensorNet's ``forward_features`` atom features with the shaken length's
expansion. The paths take turns, one pass over the data each, ``--passes`` times; each
path's median pass is reported. On a GPU (``--device cuda``) the same comparison runs
there.
"""

from __future__ import annotations

import statistics
import tempfile
import time

from _common import backbone_sizes, device, environment, matgl_loader, parser, plain_pretext_loss, report, table


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument(
        "--compile",
        action="store_true",
        help="also time the cdssl step with torch.compile(dynamic=True) on its forward",
    )
    p.add_argument(
        "--profile", action="store_true", help="also print torch.profiler's op table for one pass of the cdssl step"
    )
    p.add_argument("--passes", type=int, default=3, help="passes over the data; the median rate is reported")
    args = p.parse_args()
    import torch

    from cdssl.graphs import GraphCache, build_cache
    from cdssl.models import build_network, edge_feature_dim
    from cdssl.pretrain import DenoisingModule

    torch.set_num_threads(args.threads)
    dev = device(args.device)
    environment(args, dev)
    t = table(args.n, args.max_sites)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def interleaved(paths: dict) -> dict[str, float]:
        """Graphs/s of each path (name -> (step, batches, label)): after two warm-up batches
        each (and compilation, if any), ``--passes`` rounds of one timed pass over the data
        per path in turn, so that a change in the machine's speed during the run reaches
        every path alike; the median pass of each."""
        for step, batches, label in paths.values():
            start = time.perf_counter()
            for b in batches[:2]:
                step(b)
            sync()
            if label:
                print(f"# {label}: {time.perf_counter() - start:.1f} s of warm-up, not counted in graphs/s")
        rates: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(args.passes):
            for name, (step, batches, _) in paths.items():
                start = time.perf_counter()
                graphs = sum(step(b) for b in batches)
                sync()
                rates[name].append(graphs / (time.perf_counter() - start))
        return {name: statistics.median(r) for name, r in rates.items()}

    # plain MatGL
    torch.manual_seed(0)
    sizes = backbone_sizes(args.backbone)
    model = build_network(sizes, 5.0).to(dev)
    head = torch.nn.Linear(edge_feature_dim(model), 1).to(dev)
    opt = torch.optim.Adam([*model.parameters(), *head.parameters()], lr=1e-3)
    with tempfile.TemporaryDirectory() as tmp:
        loader = matgl_loader(t, args.batch, tmp)
        plain_batches = list(loader)

    plain_loss = plain_pretext_loss(model, head, args.backbone, sizes, dev)

    def plain_step(batch) -> int:
        loss, n = plain_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return n

    # cdssl
    cache = GraphCache(build_cache(t, 5.0, 1)[0])
    order = list(range(len(cache)))
    batches = [order[i : i + args.batch] for i in range(0, len(order), args.batch)]

    def ours(compiled: bool):
        torch.manual_seed(0)
        module = DenoisingModule(sizes, 5.0, 0.5, 1e-3).to(dev)
        if compiled:
            # graph sizes change every batch: one symbolic-shape compile instead of one per size
            module.forward = torch.compile(module.forward, dynamic=True)
        opt = torch.optim.Adam([q for q in module.parameters() if q.requires_grad], lr=1e-3)

        def step(idx) -> int:
            batch = cache.collate(idx).to(dev)
            loss = module.training_step(batch, 0)
            opt.zero_grad()
            loss.backward()
            opt.step()
            return batch.num_graphs

        return step

    base, name = "plain MatGL loop (forward + head)", "cdssl DenoisingModule step"
    paths = {base: (plain_step, plain_batches, ""), name: (ours(False), batches, "")}
    if args.compile:
        paths["cdssl step, torch.compile"] = (ours(True), batches, "torch.compile")
    rates = interleaved(paths)
    if args.profile:
        from torch.profiler import profile

        step = paths[name][0]
        with profile() as prof:
            for b in batches:
                step(b)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
        every = cache.collate(order)
        print(
            f"# per structure: {every.edge_index.shape[1] / len(order):.1f} edges, "
            f"{every.pos.shape[0] / len(order):.1f} atoms"
        )
    report(list(rates.items()), base, "graphs/s")


if __name__ == "__main__":
    main()
