"""MatGL MEGNet construction and the pieces of its forward pass the pretext task needs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from matgl.graph._compute import compute_pair_vector_and_distance
from matgl.models import MEGNet

from .config import megnet_sizes, model_kwargs
from .graphs import GraphBatch, element_types

GAUSS_WIDTH = 0.5


def build_megnet(sizes: Mapping[str, Any], cutoff: float) -> MEGNet:
    """A MatGL MEGNet with the given sizes (a config's models entry, lists allowed); 100
    Gaussian centres come from dim_edge_embedding."""
    return MEGNet(
        **megnet_sizes(sizes),
        cutoff=cutoff,
        gauss_width=GAUSS_WIDTH,
        element_types=element_types(),
        is_classification=False,
        include_state=True,
    )


def build_model(config: dict, mode: str) -> MEGNet:
    """A fresh MEGNet for ``mode`` of a validated config: Table 2 for ssl and sl_large,
    Table 3 for sl, at the config's cutoff."""
    return build_megnet(model_kwargs(config, mode), config["graph"]["cutoff"])


def state_attr(batch: GraphBatch, model: MEGNet) -> torch.Tensor:
    """MatGL's default crystal state (zeros), one row per graph."""
    dim = model.embedding.dim_state_embedding
    return torch.zeros(batch.num_graphs, dim, device=batch.pos.device)


def _edge_update(
    conv,
    edge_index: torch.Tensor,
    edge: torch.Tensor,
    node: torch.Tensor,
    state: torch.Tensor,
    edge_batch: torch.Tensor,
) -> torch.Tensor:
    """``MEGNetGraphConv.edge_update_`` with its first Linear split by input block.

    W [v_src; v_dst; e; u] + b = (W_s v)[src] + (W_d v)[dst] + W_e e + (W_u u + b)[graph]:
    the node and state blocks are multiplied once per node or graph and then gathered,
    instead of once per edge. Same weights, same result, about half the edge MLP's work.
    """
    first, *rest = conv.edge_func.layers
    d_node, d_edge = node.shape[1], edge.shape[1]
    w_src, w_dst, w_edge, w_state = first.weight.split([d_node, d_node, d_edge, state.shape[1]], dim=1)
    src, dst = edge_index
    h = torch.addmm((state @ w_state.T + first.bias)[edge_batch], edge, w_edge.T)
    h = h + (node @ w_src.T)[src] + (node @ w_dst.T)[dst]
    for layer in rest:
        h = layer(h)
    return h


def _block(block, batch: GraphBatch, edge, node, state, edge_batch):
    """``MEGNetBlock.forward`` calling MatGL's own layers, with the split edge update."""
    inputs = (edge, node, state)
    edge, node, state = block.edge_func(edge), block.node_func(node), block.state_func(state)
    conv = block.conv
    edge = _edge_update(conv, batch.edge_index, edge, node, state, edge_batch)
    node = conv.node_update_(batch.edge_index, edge, node, state[batch.batch], node.shape[0])
    state = conv.state_update_(edge, node, state, edge_batch, batch.batch, batch.num_graphs)
    state = state.reshape(batch.num_graphs, -1)
    if block.dropout is not None:
        edge, node, state = block.dropout(edge), block.dropout(node), block.dropout(state)
    if block.skip:
        edge, node, state = edge + inputs[0], node + inputs[1], state + inputs[2]
    return edge, node, state


def encode(
    model: MEGNet, batch: GraphBatch, pos: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Node, edge and state features of the last MEGNet block, at positions ``pos``.

    The sequence of ``MEGNet.forward`` up to the readout (which the pretext task never
    uses), on MatGL's own modules and weights; ``pos`` lets the caller feed perturbed
    positions with the original edges. Tests hold it equal to ``MEGNet.forward``.
    """
    pos = batch.pos if pos is None else pos
    _, dist = compute_pair_vector_and_distance(pos, batch.edge_index, batch.pbc_offshift)
    edge_attr = model.bond_expansion(dist)
    node, edge, state = model.embedding(batch.node_type, edge_attr, state_attr(batch, model))
    edge = model.edge_encoder(edge)
    node = model.node_encoder(node)
    state = model.state_encoder(state).reshape(batch.num_graphs, -1)
    edge_batch = batch.edge_batch
    for block in model.blocks:
        edge, node, state = _block(block, batch, edge, node, state, edge_batch)
    return node, edge, state


def readout(model: MEGNet, batch: GraphBatch, node, edge, state) -> torch.Tensor:
    """MEGNet's Set2Set readouts and output MLP, as in ``MEGNet.forward``."""
    n = batch.num_graphs
    node_vec = model.node_s2s(node, batch.batch).view(n, -1)
    edge_vec = model.edge_s2s(edge, batch.edge_batch, num_graphs=n).view(n, -1)
    vec = torch.cat([node_vec, edge_vec, state.view(n, -1)], dim=-1)
    if model.dropout:
        vec = model.dropout(vec)
    out = model.output_proj(vec)
    return torch.sigmoid(out) if model.is_classification else out


def predict(model: MEGNet, batch: GraphBatch) -> torch.Tensor:
    """One value per graph, equal to ``MEGNet.forward`` (readout included)."""
    return readout(model, batch, *encode(model, batch)).reshape(-1)


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
