"""Shared setup for the benchmarks: same real structures for both paths, environment print."""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from cdssl.config import load_config, model_kwargs  # noqa: E402 (after the path)

# the paper's sizes, from the one place they are written (the config schema's defaults)
_PAPER = load_config(ROOT / "config" / "config.yaml")
TABLE2 = model_kwargs(_PAPER, "sl_large")
TABLE3 = model_kwargs(_PAPER, "sl")


def backbone_sizes(backbone: str, mode: str = "sl_large") -> dict:
    """A backbone's large (ssl, sl_large) or small (sl) sizes, as a run of it declares them."""
    config = {**_PAPER, "models": {**_PAPER["models"], "backbone": backbone}}
    return model_kwargs(config, mode)


def parser(doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc)
    p.add_argument("--n", type=int, default=1000, help="structures from the embedded data")
    p.add_argument("--max-sites", type=int, default=12)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument(
        "--backbone", default="megnet", choices=["megnet", "m3gnet", "tensornet"], help="the network (models.backbone)"
    )
    return p


def device(name: str):
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def environment(args, dev=None) -> None:
    import torch

    print(
        f"# python {platform.python_version()}, torch {torch.__version__}, {os.cpu_count()} CPUs, "
        f"torch threads {torch.get_num_threads()}, device {dev or 'cpu'}"
        + (f" ({torch.cuda.get_device_name(dev)})" if dev is not None and dev.type == "cuda" else "")
    )
    print(f"# {args.n} structures of matbench_dielectric with <= {args.max_sites} sites; backbone {args.backbone}")


def table(n: int, max_sites: int):
    """(ids, pymatgen dicts, targets): the first ``n`` small structures, through the data stage."""
    from cdssl.data import build_table

    entry = {"matminer": "matbench_dielectric", "target": "n", "transform": "log10", "max_sites": max_sites}
    t = build_table("bench", entry, str(ROOT / "data" / "matminer"))[0].head(n)
    return t


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def report(rows: list[tuple[str, float]], baseline: str, unit: str) -> None:
    base = dict(rows)[baseline]
    print(f"{'path':<44} {unit:>14} {'ratio':>7}")
    for name, value in rows:
        print(f"{name:<44} {value:>14.1f} {value / base:>7.2f}x")


def matgl_loader(t, batch_size: int, root: str):
    """MatGL's own data path: MGLDataset of Structure2Graph graphs and its (shuffling) MGLDataLoader."""
    from matgl.ext.pymatgen import Structure2Graph
    from matgl.graph.data import MGLDataLoader, MGLDataset, collate_fn_graph
    from pymatgen.core import Structure

    from cdssl.graphs import element_types

    ds = MGLDataset(
        structures=[Structure.from_dict(s) for s in t["structure"]],
        converter=Structure2Graph(element_types(), 5.0),
        labels={"y": t["target"].tolist()},
        root=root,
        save_cache=False,
    )
    loader, _ = MGLDataLoader(ds, ds, collate_fn=collate_fn_graph, batch_size=batch_size, num_workers=0)
    return loader


def plain_pretext_loss(model, head, backbone: str, sizes: dict, dev):
    """The pretext loss written with MatGL alone, on batches of ``matgl_loader``: positions
    from fractional coordinates and lattice (as ModelLightningModule does), shaken; the
    model's own forward (readout included; M3GNet builds its triplets from the shaken
    positions there); the linear head on the last block's edge features (MEGNet, M3GNet) or
    on TensorNet's atom features with the shaken length's expansion."""
    import torch
    from matgl.graph._compute import compute_pair_vector_and_distance

    from cdssl.pretext import perturb, standardise_per_graph

    def plain_loss(batch):
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
        if backbone == "tensornet":
            node = model.forward_features(g)["readout"]
            _, shaken = compute_pair_vector_and_distance(g.pos, g.edge_index, g.pbc_offshift)
            edge = torch.cat([node[src] + node[dst], node[src] * node[dst], model.bond_expansion(shaken)], dim=1)
        else:
            model(g, state_attr=state.to(dev) if backbone == "megnet" else None)
            edge = model.feature_dict[f"gc_{sizes['nblocks']}"]["edge_feat"]
        pred = head(edge).squeeze(-1)
        return torch.nn.functional.mse_loss(pred, target), g.num_graphs

    return plain_loss
