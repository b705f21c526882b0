"""The CDSSL pretext task: shake a crystal's atoms, keep its edges, and ask for each edge's
original length, standardised per graph.

The pieces every part of pretraining shares (the model in cdssl.pretrain, the answers
that need no learning in cdssl.references, the benchmarks): the perturbation, the
target, and the noise generators that make training and validation noise pure functions
of where in the run they are drawn.
"""

from __future__ import annotations

import torch

from .graphs import GraphBatch
from .training import step_generator

ZERO_STD = 1e-6  # float32 distances equal to ~1e-7 A count as "all the same length"


def perturb(pos: torch.Tensor, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Positions shaken by isotropic Gaussian noise N(0, sigma^2 I); edges are not touched."""
    noise = torch.randn(pos.shape, generator=generator, device=pos.device, dtype=pos.dtype)
    return pos + sigma * noise


def edge_lengths(pos: torch.Tensor, batch: GraphBatch) -> torch.Tensor:
    src, dst = batch.edge_index
    return (pos[dst] + batch.pbc_offshift - pos[src]).norm(dim=1)


def standardise_per_graph(values: torch.Tensor, graph: torch.Tensor, num_graphs: int) -> torch.Tensor:
    """(v - mean) / std within each graph (population std); zeros where std is 0."""
    ones = torch.ones_like(values)
    count = torch.zeros(num_graphs, dtype=values.dtype, device=values.device).index_add_(0, graph, ones)
    mean = torch.zeros_like(count).index_add_(0, graph, values) / count
    centred = values - mean[graph]
    var = torch.zeros_like(count).index_add_(0, graph, centred**2) / count
    std = var.sqrt()
    safe = torch.where(std > ZERO_STD, std, torch.ones_like(std))
    return torch.where(std[graph] > ZERO_STD, centred / safe[graph], torch.zeros_like(centred))


def denoising_target(batch: GraphBatch) -> torch.Tensor:
    return standardise_per_graph(edge_lengths(batch.pos, batch), batch.edge_batch, batch.num_graphs)


def validation_generator(device: torch.device, val_seed: int, batch_idx: int) -> torch.Generator:
    # the same noise every epoch, so validation losses of different epochs compare
    return torch.Generator(device=device).manual_seed(val_seed * 100003 + batch_idx)


def training_generator(device: torch.device, seed: int, epoch: int, batch_idx: int, rank: int) -> torch.Generator:
    # fresh noise each time a graph is seen, yet a pure function of where in training we
    # are: a resumed run draws exactly the noise an uninterrupted run draws
    return step_generator(device, seed, epoch, batch_idx, rank)
