"""MatGL MEGNet construction and the pieces of its forward pass the pretext task needs."""

from __future__ import annotations

import torch
from matgl.models import MEGNet
from matgl.graph._compute import compute_pair_vector_and_distance

from .graphs import GraphBatch, element_types

GAUSS_WIDTH = 0.5


def build_megnet(sizes: dict, cutoff: float) -> MEGNet:
    """A MatGL MEGNet with the given sizes; 100 Gaussian centres come from dim_edge_embedding."""
    return MEGNet(
        **sizes,
        cutoff=cutoff,
        gauss_width=GAUSS_WIDTH,
        element_types=element_types(),
        is_classification=False,
        include_state=True,
    )


def state_attr(batch: GraphBatch, model: MEGNet) -> torch.Tensor:
    """MatGL's default crystal state (zeros), one row per graph."""
    dim = model.embedding.dim_state_embedding
    return torch.zeros(batch.num_graphs, dim, device=batch.pos.device)


def encode(
    model: MEGNet, batch: GraphBatch, pos: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Node, edge and state features of the last MEGNet block, at positions ``pos``.

    The same sequence as ``MEGNet.forward`` up to the readout, which the pretext task
    never uses; ``pos`` lets the caller feed perturbed positions with original edges.
    """
    pos = batch.pos if pos is None else pos
    _, dist = compute_pair_vector_and_distance(pos, batch.edge_index, batch.pbc_offshift)
    edge_attr = model.bond_expansion(dist)
    node, edge, state = model.embedding(batch.node_type, edge_attr, state_attr(batch, model))
    edge = model.edge_encoder(edge)
    node = model.node_encoder(node)
    state = model.state_encoder(state)
    edge_batch = batch.edge_batch
    for block in model.blocks:
        edge, node, state = block(
            batch.edge_index, edge, node, state, batch.batch, edge_batch, pos.size(0), batch.num_graphs
        )
        if state.dim() == 1:
            state = state.unsqueeze(0)
    return node, edge, state


def predict(model: MEGNet, batch: GraphBatch) -> torch.Tensor:
    """MEGNet's own forward (readout included), one value per graph."""
    return model(batch, state_attr=state_attr(batch, model)).reshape(-1)


def reset_readout(model: MEGNet) -> None:
    """Fresh Set2Set readouts and output MLP: the fine-tuning head starts from scratch."""
    for module in (model.node_s2s, model.edge_s2s, model.output_proj):
        for layer in module.modules():
            if hasattr(layer, "reset_parameters"):
                layer.reset_parameters()


ENCODER_PREFIXES = ("bond_expansion", "embedding", "edge_encoder", "node_encoder", "state_encoder", "blocks")


def encoder_state(model: MEGNet) -> dict[str, torch.Tensor]:
    """The parameters pretraining learns (everything before the readout)."""
    return {k: v for k, v in model.state_dict().items() if k.startswith(ENCODER_PREFIXES)}
