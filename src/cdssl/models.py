"""MatGL networks (the backbones): construction, and the pieces of their forward passes
that pretraining, fine-tuning and the probe need.

MEGNet is the paper's encoder; M3GNet and TensorNet are MatGL's later architectures. A
network's sizes dict names its backbone (``"backbone"``, absent for MEGNet, so MEGNet
results keep the identity they had before backbones existed). Every function here takes
the MatGL model and dispatches on its class; nothing outside this module names a
backbone's layers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from matgl.graph._compute import compute_pair_vector_and_distance, compute_theta_and_phi, create_line_graph
from matgl.models import M3GNet, MEGNet, TensorNet
from matgl.models._tensornet import decompose_tensor, tensor_norm
from matgl.utils.cutoff import polynomial_cutoff
from torch import nn

from .config import model_kwargs, network_sizes, schema_backbones
from .graphs import GraphBatch, element_types

GAUSS_WIDTH = 0.5
# the schema's list: what a config may name is what build_network can build
BACKBONES = schema_backbones()


def build_network(sizes: Mapping[str, Any], cutoff: float) -> nn.Module:
    """A MatGL network with the given sizes (a config's models entry, lists allowed, its
    ``backbone`` key naming the architecture; none: MEGNet) for one intensive target."""
    kwargs = network_sizes(sizes)
    backbone = kwargs.pop("backbone", "megnet")
    if backbone == "megnet":
        return build_megnet(kwargs, cutoff)
    if backbone == "m3gnet":
        # MatGL's own readout for intensive properties (weighted atom sum, then an MLP)
        return M3GNet(**kwargs, cutoff=cutoff, element_types=element_types(), is_intensive=True)
    if backbone == "tensornet":
        # MatGL's plain PyG layers on every machine: with auto-detection, whether the optional
        # warp kernels (nvalchemi-toolkit-ops) are installed would decide which code trains
        return TensorNet(**kwargs, cutoff=cutoff, element_types=element_types(), is_intensive=True, use_warp=False)
    raise ValueError(f"unknown backbone {backbone!r}; one of {', '.join(BACKBONES)}")


def build_megnet(sizes: Mapping[str, Any], cutoff: float) -> MEGNet:
    """A MatGL MEGNet with the given sizes; 100 Gaussian centres come from dim_edge_embedding."""
    return MEGNet(
        **network_sizes(sizes),
        cutoff=cutoff,
        gauss_width=GAUSS_WIDTH,
        element_types=element_types(),
        is_classification=False,
        include_state=True,
    )


def build_model(config: dict, mode: str) -> nn.Module:
    """A fresh network for ``mode`` of a validated config: the large sizes for ssl and
    sl_large, the small for sl, of the config's backbone, at the config's cutoff."""
    return build_network(model_kwargs(config, mode), config["graph"]["cutoff"])


def backbone_of(model: nn.Module) -> str:
    for name, cls in (("megnet", MEGNet), ("m3gnet", M3GNet), ("tensornet", TensorNet)):
        if isinstance(model, cls):
            return name
    raise TypeError(f"not a MatGL backbone of this pipeline: {type(model).__name__}")


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


def encode_megnet(
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


def readout_megnet(model: MEGNet, batch: GraphBatch, node, edge, state) -> torch.Tensor:
    """MEGNet's Set2Set readouts and output MLP, as in ``MEGNet.forward``."""
    n = batch.num_graphs
    node_vec = model.node_s2s(node, batch.batch).view(n, -1)
    edge_vec = model.edge_s2s(edge, batch.edge_batch, num_graphs=n).view(n, -1)
    vec = torch.cat([node_vec, edge_vec, state.view(n, -1)], dim=-1)
    if model.dropout:
        vec = model.dropout(vec)
    out = model.output_proj(vec)
    return torch.sigmoid(out) if model.is_classification else out


def encode_m3gnet(
    model: M3GNet, batch: GraphBatch, pos: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Node and edge features of the last M3GNet block, at positions ``pos``.

    ``M3GNet.forward`` up to the readout, on MatGL's own modules, with one change that
    only shaken positions see: the three-body triplets (bond pairs within
    ``threebody_cutoff``) come from the clean positions, as the edges do, while the
    distances, angles and cutoff weights are the shaken ones. At the clean positions this
    is ``M3GNet.forward`` exactly (tests hold it equal).
    """
    at = batch.pos if pos is None else pos
    vec, dist = compute_pair_vector_and_distance(at, batch.edge_index, batch.pbc_offshift)
    if pos is None:
        clean_vec, clean_dist = vec, dist
    else:
        with torch.no_grad():
            clean_vec, clean_dist = compute_pair_vector_and_distance(batch.pos, batch.edge_index, batch.pbc_offshift)
    num_nodes, num_bonds = batch.pos.shape[0], batch.edge_index.shape[1]
    line = create_line_graph(
        batch.edge_index, clean_dist, clean_vec, batch.pbc_offshift, num_nodes, model.threebody_cutoff
    )
    angles = compute_theta_and_phi(vec, dist, line["line_edge_index"])
    basis = model.basis_expansion(angles["triple_bond_lengths"], angles["cos_theta"], angles["phi"])
    three_body_cutoff = polynomial_cutoff(dist, model.threebody_cutoff)
    expanded = model.bond_expansion(dist)
    node, edge, state = model.embedding(batch.node_type, expanded, None)
    for interaction, layer in zip(model.three_body_interactions, model.graph_layers, strict=True):
        edge = interaction(
            batch.edge_index[1],
            line["line_edge_index"],
            line["n_triple_ij"],
            num_bonds,
            basis,
            three_body_cutoff,
            node,
            edge,
        )
        edge, node, state = layer(
            batch.edge_index, edge, node, state, expanded, batch.batch, batch.edge_batch, num_nodes, batch.num_graphs
        )
    return node, edge


def encode_tensornet(model: TensorNet, batch: GraphBatch, pos: torch.Tensor | None = None) -> torch.Tensor:
    """TensorNet's per-atom features (``forward_features``' readout input) at positions
    ``pos`` on the batch's own edges (TensorNet has no edge outputs)."""
    at = batch.pos if pos is None else pos
    vec, dist = compute_pair_vector_and_distance(at, batch.edge_index, batch.pbc_offshift)
    edge_attr = model.bond_expansion(dist)
    x, _ = model.tensor_embedding(batch.node_type, batch.edge_index, edge_attr, dist, vec, None)
    for layer in model.layers:
        x = layer(batch.edge_index, dist, edge_attr, x)
    scalars, skew, traceless = decompose_tensor(x)
    x = torch.cat((tensor_norm(scalars), tensor_norm(skew), tensor_norm(traceless)), dim=-1)
    return model.linear(model.out_norm(x))


def edge_features(model: nn.Module, batch: GraphBatch, pos: torch.Tensor) -> torch.Tensor:
    """What the pretext head reads for each edge, at shaken positions ``pos``.

    MEGNet and M3GNet: the last block's edge features (the paper's head, on networks that
    have edge outputs). TensorNet: the edge's two endpoint features, symmetrised (sum and
    product, so an edge and its reverse get one answer) beside the expansion of the shaken
    length in the network's own radial basis: an edge has no feature of its own there.
    """
    backbone = backbone_of(model)
    if backbone == "megnet":
        return encode_megnet(model, batch, pos)[1]
    if backbone == "m3gnet":
        return encode_m3gnet(model, batch, pos)[1]
    node = encode_tensornet(model, batch, pos)
    src, dst = batch.edge_index
    _, dist = compute_pair_vector_and_distance(pos, batch.edge_index, batch.pbc_offshift)
    return torch.cat([node[src] + node[dst], node[src] * node[dst], model.bond_expansion(dist)], dim=1)


def edge_feature_dim(model: nn.Module) -> int:
    backbone = backbone_of(model)
    if backbone == "megnet":
        return _last_linear(model.blocks[-1].conv.edge_func).out_features
    if backbone == "m3gnet":
        return _last_linear(model.graph_layers[-1].conv.edge_update_func).out_features
    return 2 * model.units + model.num_rbf


def _last_linear(module: nn.Module) -> nn.Linear:
    return [m for m in module.modules() if isinstance(m, nn.Linear)][-1]


def pretext_unused(model: nn.Module) -> list[nn.Module]:
    """The modules the edge loss never reaches: the readout, and (MEGNet, M3GNet: a block
    updates edges before nodes) the last block's node and state updates. Frozen in
    pretraining, they get no gradient that DDP would wait for; fine-tuning trains them."""
    backbone = backbone_of(model)
    if backbone == "megnet":
        last = model.blocks[-1].conv
        return [model.node_s2s, model.edge_s2s, model.output_proj, last.node_func, last.state_func]
    if backbone == "m3gnet":
        last = model.graph_layers[-1].conv
        return [model.readout, model.final_layer, last.node_update_func, last.node_weight_func]
    return [model.readout, model.final_layer]


def graph_embedding(model: nn.Module, batch: GraphBatch) -> torch.Tensor:
    """One vector per crystal from the encoder's last features (the linear probe's input):
    the means over atoms and over edges, and the state where the backbone has one."""
    from torch_geometric.utils import scatter

    backbone = backbone_of(model)
    n = batch.num_graphs
    if backbone == "tensornet":
        return scatter(encode_tensornet(model, batch), batch.batch, dim=0, dim_size=n, reduce="mean")
    if backbone == "megnet":
        node, edge, state = encode_megnet(model, batch)
        parts = [state.reshape(n, -1)]
    else:
        (node, edge), parts = encode_m3gnet(model, batch), []
    node = scatter(node, batch.batch, dim=0, dim_size=n, reduce="mean")
    edge = scatter(edge, batch.edge_batch, dim=0, dim_size=n, reduce="mean")
    return torch.cat([node, edge, *parts], dim=1)


def predict(model: nn.Module, batch: GraphBatch) -> torch.Tensor:
    """One value per graph, equal to the MatGL model's forward (readout included)."""
    if isinstance(model, MEGNet):
        return readout_megnet(model, batch, *encode_megnet(model, batch)).reshape(-1)
    return model(batch).reshape(-1)


# the readout of each backbone: what fine-tuning starts afresh and what the encoder is not
READOUTS = {
    "megnet": ("node_s2s", "edge_s2s", "output_proj"),
    "m3gnet": ("readout", "final_layer"),
    "tensornet": ("readout", "final_layer"),
}


def is_encoder(model: nn.Module, name: str) -> bool:
    """Whether parameter ``name`` belongs to the encoder (everything before the readout)."""
    return not name.startswith(READOUTS[backbone_of(model)])


def output_layer(model: nn.Module) -> nn.Linear:
    """The last Linear of the network (a fine-tuned model's scale and offset fold into it)."""
    return _last_linear(model.get_submodule(READOUTS[backbone_of(model)][-1]))


def reset_readout(model: nn.Module) -> None:
    """A fresh readout: the fine-tuning head starts from scratch."""
    for prefix in READOUTS[backbone_of(model)]:
        for layer in model.get_submodule(prefix).modules():
            if hasattr(layer, "reset_parameters"):
                layer.reset_parameters()


def encoder_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters pretraining learns (everything before the readout)."""
    return {k: v for k, v in model.state_dict().items() if is_encoder(model, k)}
