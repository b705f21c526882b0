"""Pretraining step: graphs/s of the cdssl DenoisingModule vs a plain loop over MatGL's MEGNet.

    .venv/bin/python benchmarks/bench_pretrain.py --n 1000 --batch 128
Same structures, Table 2 model, batch, Adam; each step is forward, backward, optimiser
step, including batching. The plain path is what one writes with MatGL alone: MGLDataset
graphs, MatGL's collate, positions from fractional coordinates and lattice (as
ModelLightningModule does, then perturbed), MEGNet.forward (readout included), and a
linear head on ``feature_dict["gc_3"]`` edge features. On a GPU (``--device cuda``) the
same comparison runs there.
"""

from __future__ import annotations

import tempfile
import time

from _common import TABLE2, device, matgl_loader, environment, parser, report, table


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=0, help="0: one pass over the data")
    args = p.parse_args()
    import torch
    
    from cdssl.graphs import GraphCache, build_cache
    from cdssl.models import build_megnet
    from cdssl.pretrain import DenoisingModule, perturb, standardise_per_graph

    torch.set_num_threads(args.threads)
    dev = device(args.device)
    environment(args, dev)
    t = table(args.n, args.max_sites)

    def run(step, batches) -> float:
        for b in batches[:2]:  # warm-up
            step(b)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        graphs = 0
        for b in batches:
            graphs += step(b)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return graphs / (time.perf_counter() - start)

    # plain MatGL
    torch.manual_seed(0)
    model = build_megnet(TABLE2, 5.0).to(dev)
    head = torch.nn.Linear(64, 1).to(dev)
    opt = torch.optim.Adam([*model.parameters(), *head.parameters()], lr=1e-3)
    with tempfile.TemporaryDirectory() as tmp:
        loader = matgl_loader(t, args.batch, tmp)
        plain_batches = list(loader)

    def plain_step(batch) -> int:
        g, lat, state, _ = batch
        g = g.to(dev)
        lat = lat.to(dev).reshape(-1, 3, 3)
        node_lat = lat[g.batch]
        pos = torch.einsum("ni,nij->nj", g.frac_coords, node_lat)
        g.pbc_offshift = torch.einsum("ei,eij->ej", g.pbc_offset, node_lat[g.edge_index[0]])
        src, dst = g.edge_index
        dist = (pos[dst] + g.pbc_offshift - pos[src]).norm(dim=1)
        target = standardise_per_graph(dist, g.batch[src], g.num_graphs)
        g.pos = perturb(pos, 0.5)
        model(g, state_attr=state.to(dev))
        pred = head(model.feature_dict["gc_3"]["edge_feat"]).squeeze(-1)
        loss = torch.nn.functional.mse_loss(pred, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return g.num_graphs

    plain = run(plain_step, plain_batches)

    # cdssl
    torch.manual_seed(0)
    cache = GraphCache(build_cache(t, 5.0, 1)[0])
    module = DenoisingModule(TABLE2, 5.0, 0.5, 1e-3).to(dev)
    opt2 = torch.optim.Adam(module.parameters(), lr=1e-3)
    order = list(range(len(cache)))

    def ours_step(idx) -> int:
        batch = cache.collate(idx).to(dev)
        loss = module.training_step(batch, 0)
        opt2.zero_grad()
        loss.backward()
        opt2.step()
        return batch.num_graphs

    ours = run(ours_step, [order[i : i + args.batch] for i in range(0, len(order), args.batch)])
    report([("plain MatGL loop (MEGNet.forward + head)", plain, ""), ("cdssl DenoisingModule step", ours, "")],
           "plain MatGL loop (MEGNet.forward + head)", "graphs/s")


if __name__ == "__main__":
    main()
