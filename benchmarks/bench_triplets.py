"""M3GNet's three-body triplets: built per batch (what cdssl does) or precomputed per crystal.

    .venv/bin/python benchmarks/bench_triplets.py --n 500 --batch 32 --threads 1
M3GNet needs, for every pair of bonds that share an atom within its three-body cutoff, a
triplet index. cdssl builds them per batch from the clean distances with MatGL's
``create_line_graph`` (``cdssl.models.encode_m3gnet``). The alternative is to build them
once per crystal in the graph stage and, per batch, only shift each crystal's indices by
its bonds' offset and concatenate them. On the same batches this times, in ms per batch:
the per-batch build, the precomputed path's concatenation (the triplets it gives are
checked equal to the per-batch ones), and a whole M3GNet pretraining step (forward,
backward, Adam) with the per-batch build inside it. The most precomputing can save is the
build's time minus the concatenation's, as a share of the step.
"""

from __future__ import annotations

import statistics
import time

from _common import backbone_sizes, environment, parser, table


def main() -> None:
    p = parser(__doc__)
    p.set_defaults(backbone="m3gnet", max_sites=6)
    p.add_argument("--batch", type=int, default=32, help="the pipeline's batch size")
    p.add_argument("--passes", type=int, default=5, help="passes over the data; the median is reported")
    args = p.parse_args()
    import torch
    from matgl.graph._compute import compute_pair_vector_and_distance, create_line_graph

    from cdssl.graphs import GraphCache, build_cache
    from cdssl.pretrain import DenoisingModule

    torch.set_num_threads(args.threads)
    args.backbone = "m3gnet"
    environment(args)
    cache = GraphCache(build_cache(table(args.n, args.max_sites), 5.0, 1)[0])
    sizes = backbone_sizes("m3gnet")
    torch.manual_seed(0)
    module = DenoisingModule(sizes, 5.0, 0.5, 1e-3)
    cutoff = module.model.threebody_cutoff
    order = list(range(len(cache)))
    batches = [cache.collate(order[i : i + args.batch]) for i in range(0, len(order), args.batch)]

    def line_graph(batch) -> dict[str, torch.Tensor]:
        vec, dist = compute_pair_vector_and_distance(batch.pos, batch.edge_index, batch.pbc_offshift)
        return create_line_graph(batch.edge_index, dist, vec, batch.pbc_offshift, batch.pos.shape[0], cutoff)

    # the graph stage's share of the alternative: each crystal's triplets, once
    per_crystal = []
    for i in order:
        line = line_graph(cache.collate([i]))
        per_crystal.append((line["line_edge_index"], line["n_triple_ij"]))

    def precomputed(idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        bonds = torch.tensor([per_crystal[i][1].numel() for i in idx])
        offsets = torch.cumsum(bonds, 0) - bonds
        lines = torch.cat([per_crystal[i][0] + off for i, off in zip(idx, offsets.tolist(), strict=True)], dim=1)
        return lines, torch.cat([per_crystal[i][1] for i in idx])

    index = [order[i : i + args.batch] for i in range(0, len(order), args.batch)]
    for idx, batch in zip(index, batches, strict=True):
        lines, counts = precomputed(idx)
        line = line_graph(batch)
        assert torch.equal(lines, line["line_edge_index"]) and torch.equal(counts, line["n_triple_ij"])

    opt = torch.optim.Adam([q for q in module.parameters() if q.requires_grad], lr=1e-3)

    def step(batch) -> None:
        loss = module.training_step(batch, 0)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def per_batch_ms(fn, items) -> float:
        for item in items[:2]:  # warm-up
            fn(item)
        times = []
        for _ in range(args.passes):
            start = time.perf_counter()
            for item in items:
                fn(item)
            times.append((time.perf_counter() - start) / len(items) * 1e3)
        return statistics.median(times)

    build = per_batch_ms(line_graph, batches)
    concat = per_batch_ms(precomputed, index)
    whole = per_batch_ms(step, batches)
    triplets = sum(int(c.sum()) for _, c in per_crystal) / len(order)
    print(f"# {len(order)} crystals, batches of {args.batch}, {triplets:.0f} triplets per crystal")
    print(f"{'ms per batch':<52} {'ms':>8} {'of step':>8}")
    for name, value in [
        ("per-batch build (create_line_graph, cdssl)", build),
        ("precomputed: shift and concatenate", concat),
        ("M3GNet pretraining step (per-batch build inside)", whole),
    ]:
        print(f"{name:<52} {value:>8.2f} {value / whole:>8.1%}")
    print(f"most precomputing can save: {(build - concat) / whole:.1%} of a step")


if __name__ == "__main__":
    main()
