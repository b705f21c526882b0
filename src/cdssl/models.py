"""MatGL networks (the backbones): construction, and the pieces of their forward passes
that pretraining, fine-tuning and the probe need.

MEGNet is the paper's encoder; M3GNet and TensorNet are MatGL's later architectures. A
network's sizes dict names its backbone (``"backbone"``, absent for MEGNet, so MEGNet
results keep the identity they had before backbones existed). Every function here takes
the MatGL model and dispatches on its class; nothing outside this module names a
backbone's layers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from matgl.graph._compute import compute_pair_vector_and_distance, compute_theta_and_phi, create_line_graph
from matgl.layers._activations import SoftPlus2
from matgl.layers._core import MLP
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


LOG2 = math.log(2.0)


class _SoftPlus2(torch.autograd.Function):
    """MatGL's ``SoftPlus2``, ``softplus(x) - log 2``, with the same values and gradients
    bit for bit, as one autograd node: the shift is made in place on softplus's output
    (MatGL's module subtracts into a second new tensor, and its backward passes the
    gradient through the subtraction first), and the backward is torch's softplus
    backward on the saved input. A log form, ``log(1/2 + exp(x)/2)``, ran faster on one
    Intel CPU but slower on an AVX-512 AMD one, where torch's log kernel is slow, and
    changes values at float32 rounding (benchmarks/bench_activation.py times all three)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return nn.functional.softplus(x).sub_(LOG2)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return torch.ops.aten.softplus_backward(grad, x, 1.0, 20.0)


def _mlp(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A MatGL ``MLP`` on ``x``, its layers in order, each ``SoftPlus2`` as ``_SoftPlus2``;
    any other module (``Identity`` where a block has no dense layers) is called as is."""
    return _layers(mlp.layers, x) if isinstance(mlp, MLP) else mlp(x)


def _layers(layers, x: torch.Tensor) -> torch.Tensor:
    """MatGL layers in order on ``x``, each ``SoftPlus2`` as ``_SoftPlus2``."""
    for layer in layers:
        x = _SoftPlus2.apply(x) if isinstance(layer, SoftPlus2) else layer(x)
    return x


def _gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[index]`` along rows by ``index_select``, whose backward is one ``index_add``
    (``x[index]``'s is an accumulating ``index_put``, slower on the CPU)."""
    return torch.index_select(x, 0, index)


def _sum_into(x: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """Rows of ``x`` summed into ``size`` rows by ``index`` (MatGL's scatter sum, without
    materialising an index per element)."""
    return x.new_zeros((size, *x.shape[1:])).index_add(0, index, x)


def _bag_index(indices: list[torch.Tensor], sizes: list[int]) -> torch.Tensor:
    """Each edge's rows in the stacked tables of ``_gathered_sum``: the k-th index shifted
    by the rows of the tables before it, one column per table, as int64 (the dtype that
    the gradient's ``index_add_`` runs fastest with, benchmarks/bench_narrow.py). Built
    once per batch."""
    columns, offset = [], 0
    for index, size in zip(indices, sizes, strict=True):
        index = index.long()
        columns.append(index + offset if offset else index)
        offset += size
    return torch.stack(columns, dim=1)


# Shifts are keyed in steps of 1/64 A: far finer than two images of one atom pair lie apart
# (a lattice vector), far coarser than the float32 rounding of a shift. 17 bits per
# component keep the three in one int64 key: shifts up to 1024 A.
_SHIFT_STEPS_PER_A = 64
_SHIFT_LIMIT = 2**16


def _reverse_pairs(
    edge_index: torch.Tensor, shift: torch.Tensor, n_nodes: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """One edge of each reverse pair, and each edge's row among those: ``(first, row)``.

    A periodic radius graph holds every bond twice, i -> j through the cell shift s and
    j -> i through -s, one length for both; whatever is a function of the length alone
    (MEGNet's Gaussian expansion and edge encoder) is computed once per pair and gathered
    back by ``row``. An edge's key is its unordered atom pair and its shift as seen from
    the lower-numbered atom (for an atom and its own image, the sign that makes the first
    nonzero component positive), in steps of ``1/_SHIFT_STEPS_PER_A``: the two edges of a
    bond share a key, two different bonds never do. An edge whose reverse is missing keeps
    a row of its own. None where nothing pairs (or a shift or the batch is beyond the key's
    range): then every edge is computed.
    """
    n_edges = edge_index.shape[1]
    steps = torch.round(shift * _SHIFT_STEPS_PER_A).long()
    if n_edges == 0 or bool((steps.abs() >= _SHIFT_LIMIT).any()):
        return None
    src, dst = edge_index.long()
    lead = torch.where(steps[:, 0] != 0, steps[:, 0], torch.where(steps[:, 1] != 0, steps[:, 1], steps[:, 2]))
    flip = (src > dst) | ((src == dst) & (lead < 0))
    steps = torch.where(flip[:, None], -steps, steps) + _SHIFT_LIMIT
    shift_key = (steps[:, 0] * (2 * _SHIFT_LIMIT) + steps[:, 1]) * (2 * _SHIFT_LIMIT) + steps[:, 2]
    # the shifts a batch holds, numbered densely, so that atom pair and shift fit one int64
    _, shift_id = torch.unique(shift_key, return_inverse=True)
    n_shifts = int(shift_id.max()) + 1
    if n_nodes * n_nodes * n_shifts >= 2**63:
        return None
    pair = torch.minimum(src, dst) * n_nodes + torch.maximum(src, dst)
    keys, row = torch.unique(pair * n_shifts + shift_id, return_inverse=True)
    if len(keys) == n_edges:
        return None
    edges = torch.arange(n_edges, device=row.device)
    first = torch.full((len(keys),), n_edges, device=row.device).scatter_reduce_(0, row, edges, "amin")
    return first, row


class _GatheredSum(torch.autograd.Function):
    """``sum_k tables[k][bag[:, k]]`` per row: forward one ``embedding_bag`` sum over the
    stacked tables; backward one ``index_add_`` of the gradient per column, where torch's
    ``embedding_bag`` backward sorts the whole bag first: forward and backward together
    about 2x as fast on the CPU (benchmarks/bench_edge_ops.py). Gradients equal to float32
    rounding (tested); at a pretraining batch's shapes the same bit for bit
    (docs/benchmarks.md)."""

    @staticmethod
    def forward(ctx, bag: torch.Tensor, *tables: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(bag)
        ctx.sizes = [t.shape[0] for t in tables]
        return nn.functional.embedding_bag(bag, torch.cat(tables), mode="sum")

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (bag,) = ctx.saved_tensors
        if not any(ctx.needs_input_grad[1:]):
            return None, *(None for _ in ctx.sizes)
        stacked = grad.new_zeros((sum(ctx.sizes), grad.shape[1]))
        for column in bag.t():
            stacked.index_add_(0, column, grad)
        return None, *stacked.split(ctx.sizes)


def _gathered_sum(tables: list[torch.Tensor], bag: torch.Tensor) -> torch.Tensor:
    """``sum_k tables[k][index_k]`` per edge (``bag`` from ``_bag_index``), as one
    ``embedding_bag`` sum over the stacked tables (``_GatheredSum``): one pass writing an
    edge-sized tensor, where a gather and an add per table would each be a pass (and the
    gathers' backward an ``index_add`` each); its gain is measured in the step benchmarks
    (docs/benchmarks.md)."""
    return _GatheredSum.apply(bag, *tables)


def _edge_update(conv, bag: torch.Tensor, edge: torch.Tensor, node: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
    """``MEGNetGraphConv.edge_update_`` with its first Linear split by input block.

    W [v_src; v_dst; e; u] + b = (W_s v)[src] + (W_d v)[dst] + W_e e + (W_u u + b)[graph]:
    the node and state blocks are multiplied once per node or graph and then gathered
    (``_gathered_sum``, ``bag`` indexing source, destination and graph), instead of once
    per edge. Same weights, same result, about half the edge MLP's work.
    """
    first, *rest = conv.edge_func.layers
    d_node, d_edge = node.shape[1], edge.shape[1]
    w_src, w_dst, w_edge, w_state = first.weight.split([d_node, d_node, d_edge, state.shape[1]], dim=1)
    h = _gathered_sum([node @ w_src.T, node @ w_dst.T, torch.addmm(first.bias, state, w_state.T)], bag)
    # in place: the sum's backward does not read it
    h.addmm_(edge, w_edge.T)
    return _layers(rest, h)


class _Means(NamedTuple):
    """One MEGNet batch's mean reductions, built once and shared by the blocks: each
    edge's source atom and graph, each atom's graph (int64, which ``index_add`` runs
    fastest with), and how many rows each mean divides by (at least 1, as in MatGL's
    ``scatter_mean``, which counts them again at every call)."""

    src: torch.Tensor
    edge_graph: torch.Tensor
    node_graph: torch.Tensor
    per_atom: torch.Tensor
    edges_per_graph: torch.Tensor
    atoms_per_graph: torch.Tensor

    @classmethod
    def of(cls, batch: GraphBatch, dtype: torch.dtype) -> _Means:
        src, node_graph = batch.edge_index[0].long(), batch.batch.long()
        edge_graph = node_graph[src]

        def count(index: torch.Tensor, size: int) -> torch.Tensor:
            return torch.bincount(index, minlength=size).clamp_(min=1).to(dtype).unsqueeze(1)

        n_atoms, n_graphs = batch.node_type.shape[0], batch.num_graphs
        return cls(
            src,
            edge_graph,
            node_graph,
            count(src, n_atoms),
            count(edge_graph, n_graphs),
            count(node_graph, n_graphs),
        )


def _mean_into(x: torch.Tensor, index: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` averaged into ``count``'s rows by ``index`` (one of ``_Means``)."""
    return _sum_into(x, index, count.shape[0]) / count


def _block(block, edge, node, state, bag, means: _Means, nodes_needed: bool = True):
    """``MEGNetBlock.forward`` calling MatGL's own layers, with the split edge update and
    the node and state updates' means over ``means`` (MatGL's values: the same sums
    divided by the same counts); the node and state updates are skipped where nothing
    reads them (the last block under the edge loss), and the block's input node and state
    are returned instead."""
    inputs = (edge, node, state)
    edge, node, state = _mlp(block.edge_func, edge), _mlp(block.node_func, node), _mlp(block.state_func, state)
    conv = block.conv
    edge = _edge_update(conv, bag, edge, node, state)
    if not nodes_needed:
        if block.dropout is not None:
            edge = block.dropout(edge)
        return (edge + inputs[0] if block.skip else edge), inputs[1], inputs[2]
    edge_mean = _mean_into(edge, means.src, means.per_atom)
    node = _mlp(conv.node_func, torch.hstack([node, edge_mean, _gather(state, means.node_graph)]))
    graph_edges = _mean_into(edge, means.edge_graph, means.edges_per_graph)
    graph_atoms = _mean_into(node, means.node_graph, means.atoms_per_graph)
    state = _mlp(conv.state_func, torch.hstack([state, graph_edges, graph_atoms]))
    if block.dropout is not None:
        edge, node, state = block.dropout(edge), block.dropout(node), block.dropout(state)
    if block.skip:
        edge, node, state = edge + inputs[0], node + inputs[1], state + inputs[2]
    return edge, node, state


def encode_megnet(
    model: MEGNet, batch: GraphBatch, pos: torch.Tensor | None = None, nodes_needed: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Node, edge and state features of the last MEGNet block, at positions ``pos``.

    The sequence of ``MEGNet.forward`` up to the readout (which the pretext task never
    uses), on MatGL's own modules and weights; ``pos`` lets the caller feed perturbed
    positions with the original edges. Tests hold it equal to ``MEGNet.forward``.
    ``nodes_needed=False`` (the edge loss) skips the last block's node and state updates
    and returns the node and state before it. The edge encoder runs once per bond
    (``_reverse_pairs``): the two directions' lengths differ by float32 rounding at most,
    as MatGL computes them.
    """
    pos = batch.pos if pos is None else pos
    edge_index, shift = batch.edge_index, batch.pbc_offshift
    # the edge encoder reads the length alone: once per bond, not once per direction
    pairs = _reverse_pairs(edge_index, shift, pos.shape[0])
    if pairs is not None:
        edge_index, shift = edge_index[:, pairs[0]], shift[pairs[0]]
    _, dist = compute_pair_vector_and_distance(pos, edge_index, shift)
    edge_attr = model.bond_expansion(dist)
    node, edge, state = model.embedding(batch.node_type, edge_attr, state_attr(batch, model))
    edge = _mlp(model.edge_encoder, edge)
    if pairs is not None:
        edge = _gather(edge, pairs[1])
    node = _mlp(model.node_encoder, node)
    state = _mlp(model.state_encoder, state).reshape(batch.num_graphs, -1)
    means = _Means.of(batch, edge.dtype)
    bag = _bag_index(
        [means.src, batch.edge_index[1], means.edge_graph], [node.shape[0], node.shape[0], batch.num_graphs]
    )
    last = len(model.blocks) - 1
    for i, block in enumerate(model.blocks):
        edge, node, state = _block(block, edge, node, state, bag, means, nodes_needed or i < last)
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


def _gated_mlp_split(mlp, node: torch.Tensor, edge: torch.Tensor, bag: torch.Tensor) -> torch.Tensor:
    """MatGL's ``GatedMLP`` on ``[v_src, v_dst, e]`` per edge, its first layers split by block.

    Both branches' first Linear act on the same input, so they are one matmul; their node
    blocks are multiplied once per node and then gathered (``_gathered_sum``, ``bag``
    indexing source and destination), and only the edge block is multiplied per edge.
    Same weights, same result; at MatGL's sizes the first layer's per-edge inputs shrink
    from 192 to 64.
    """
    first_l, first_g = mlp.layers[0], mlp.gates[0]
    weight = torch.cat([first_l.weight, first_g.weight])
    d_node, width = node.shape[1], first_l.out_features
    w_src, w_dst, w_edge = weight.split([d_node, d_node, edge.shape[1]], dim=1)
    from_src = node @ w_src.T
    if first_l.bias is not None:
        # the bias rides on the source rows: (W_s v + b)[src] = (W_s v)[src] + b
        from_src = from_src + torch.cat([first_l.bias, first_g.bias])
    h = _gathered_sum([from_src, node @ w_dst.T], bag)
    # in place: the sum's backward does not read it
    h.addmm_(edge, w_edge.T)
    start = 1
    if isinstance(mlp.layers[1], nn.SiLU) and isinstance(mlp.gates[1], nn.SiLU):
        # both branches' first activation, as one pass over the joint tensor
        h, start = nn.functional.silu(h), 2
    # split, not two slices: its backward is one concatenation, a slice's a zero-filled
    # full-width tensor per branch
    return _gated_rest(mlp, *h.split(width, dim=1), start)


def _gated_rest(mlp, h_l: torch.Tensor, h_g: torch.Tensor, start: int) -> torch.Tensor:
    """A ``GatedMLP`` from its layer ``start`` on, each branch on its own input, then the
    gate: what follows the split first layers of ``_gated_mlp_split`` and
    ``_narrow_gated_mlp``."""
    return _layers(list(mlp.layers)[start:], h_l) * _layers(list(mlp.gates)[start:], h_g)


class _NarrowLinear(torch.autograd.Function):
    """``x @ weight.T + bias`` for a layer with few inputs (M3GNet's 9 radial or
    three-body basis functions) on edge-many rows, with its backward's products turned
    wide. Autograd's Linear backward forms the weight's gradient as (out x rows) @ (rows x
    in) and the input's as (rows x out) @ (out x in), products only 9 wide; here they are
    (in x rows) @ (rows x out) and (in x out) @ (out x rows), transposed back: wide
    products, which the CPU's matmul runs several times faster
    (benchmarks/bench_narrow.py). The forward is the Linear's; gradients equal to float32 rounding
    (the products sum in another order)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return nn.functional.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            # contiguous: the gathers and sums downstream read rows
            grad_x = torch.mm(weight.t(), grad.t()).t().contiguous()
        if ctx.needs_input_grad[1]:
            grad_w = torch.mm(x.t(), grad).t()
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(0)
        return grad_x, grad_w, grad_b


def _narrow_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return _NarrowLinear.apply(x, weight, bias)


def _narrow_gated_mlp(mlp, x: torch.Tensor) -> torch.Tensor:
    """MatGL's ``GatedMLP`` on few inputs (the three-body bond update), each branch's first
    Linear a ``_narrow_linear`` (kept apart: one 9 -> 128 forward product was slower than
    two 9 -> 64 ones in the step's profile), then each branch's own layers."""
    h_l, h_g = (_narrow_linear(x, branch[0].weight, branch[0].bias) for branch in (mlp.layers, mlp.gates))
    return _gated_rest(mlp, h_l, h_g, 1)


def _m3gnet_layer(layer, batch: GraphBatch, edge, node, rbf, bag, nodes_needed: bool = True):
    """``M3GNetBlock.forward`` without a crystal state, with the split gated MLPs; the node
    update is skipped where nothing reads it (the last block under the edge loss)."""
    conv = layer.conv
    edge_weight = _narrow_linear(rbf, conv.edge_weight_func.weight, conv.edge_weight_func.bias)
    edge = edge + _gated_mlp_split(conv.edge_update_func, node, edge, bag) * edge_weight
    if nodes_needed:
        node_weight = _narrow_linear(rbf, conv.node_weight_func.weight, conv.node_weight_func.bias)
        message = _gated_mlp_split(conv.node_update_func, node, edge, bag) * node_weight
        node = node + _sum_into(message, batch.edge_index[0], node.shape[0])
    if layer.dropout is not None:
        edge, node = layer.dropout(edge), layer.dropout(node)
    return edge, node


def _three_body(interaction, triplets: dict[str, torch.Tensor], node, edge):
    """``ThreeBodyInteractions.forward`` with the batch's triplet terms computed once
    (``_triplet_terms``) instead of once per block."""
    atoms = _gather(interaction.update_network_atom(node), triplets["end_atom"])
    bonds = _sum_into(triplets["weighted_basis"] * atoms, triplets["bond_ij"], edge.shape[0])
    return edge + _narrow_gated_mlp(interaction.update_network_bond, bonds)


def _triplet_terms(model: M3GNet, batch: GraphBatch, vec, dist, line: dict) -> dict[str, torch.Tensor]:
    """What every block's three-body update shares: the triplets' bond and end-atom
    indices and the angular basis times both bonds' cutoffs (MatGL recomputes the last two
    in every block)."""
    bond_ij, bond_ik = (line["line_edge_index"][i].to(torch.long) for i in (0, 1))
    angles = compute_theta_and_phi(vec, dist, line["line_edge_index"])
    basis = model.basis_expansion(angles["triple_bond_lengths"], angles["cos_theta"], angles["phi"])
    cutoff = polynomial_cutoff(dist, model.threebody_cutoff)
    return {
        "bond_ij": bond_ij,
        "end_atom": _gather(batch.edge_index[1], bond_ik),
        "weighted_basis": basis * (cutoff[bond_ij] * cutoff[bond_ik])[:, None],
    }


def encode_m3gnet(
    model: M3GNet, batch: GraphBatch, pos: torch.Tensor | None = None, nodes_needed: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Node and edge features of the last M3GNet block, at positions ``pos``.

    ``M3GNet.forward`` up to the readout, on MatGL's own modules and weights, with one
    change that only shaken positions see: the three-body triplets (bond pairs within
    ``threebody_cutoff``) come from the clean positions, as the edges do, while the
    distances, angles and cutoff weights are the shaken ones. At the clean positions this
    is ``M3GNet.forward`` exactly (tests hold it equal, values and gradients). Faster
    than MatGL's: split gated MLPs (``_gated_mlp_split``) and triplet terms computed once
    per batch. ``nodes_needed=False`` (the edge loss) skips the last block's node update
    and returns the nodes before it.
    """
    if model.include_state:
        raise ValueError("cdssl's M3GNet path has no crystal state (include_state=False, MatGL's default)")
    # 64-bit edge indices from here on: with the cache's int32 ones torch's CPU index_add
    # over M3GNet's narrow rows (9 three-body values per triplet and edge), the gathers'
    # backward, runs several times slower (benchmarks/bench_narrow.py); the numbers are
    # the same either way (tests/test_models.py)
    batch = dataclasses.replace(batch, edge_index=batch.edge_index.long())
    at = batch.pos if pos is None else pos
    vec, dist = compute_pair_vector_and_distance(at, batch.edge_index, batch.pbc_offshift)
    if pos is None:
        clean_vec, clean_dist = vec, dist
    else:
        with torch.no_grad():
            clean_vec, clean_dist = compute_pair_vector_and_distance(batch.pos, batch.edge_index, batch.pbc_offshift)
    line = create_line_graph(
        batch.edge_index, clean_dist, clean_vec, batch.pbc_offshift, batch.pos.shape[0], model.threebody_cutoff
    )
    triplets = _triplet_terms(model, batch, vec, dist, line)
    expanded = model.bond_expansion(dist)
    node, edge, _ = model.embedding(batch.node_type, expanded, None)
    bag = _bag_index(list(batch.edge_index), [node.shape[0], node.shape[0]])
    last = len(model.graph_layers) - 1
    for i, (interaction, layer) in enumerate(zip(model.three_body_interactions, model.graph_layers, strict=True)):
        edge = _three_body(interaction, triplets, node, edge)
        edge, node = _m3gnet_layer(layer, batch, edge, node, expanded, bag, nodes_needed or i < last)
    return node, edge


def readout_m3gnet(model: M3GNet, batch: GraphBatch, node, edge) -> torch.Tensor:
    """M3GNet's intensive readout and final layer, as in ``M3GNet.forward``."""
    out = model.final_layer(model._readout(node, edge, batch.batch))
    return torch.sigmoid(out) if model.task_type == "classification" else out


# TensorNet's per-edge messages in compact form. A 3 x 3 feature tensor is a scalar part
# t I, a skew part (vector a: A[2,1], A[0,2], A[1,0], as MatGL's vector_to_skewtensor
# writes a vector) and a symmetric traceless part (s00, s11, s22, s01, s02, s12): 10
# numbers per channel where MatGL carries three full 3 x 3 tensors (27), so the per-edge
# gather, product and scatter of a message pass move 10 numbers, not 27. The message
# passing is linear in the components, so summing compact messages at the receiving
# atom and expanding there equals MatGL's per-edge full tensors summed.
_COMPACT = 10
# component groups of the compact layout (scalar, skew, traceless) and the radial
# feature (f_I, f_A, f_S) that multiplies each
_GROUPS = ((0, 1, 0), (1, 4, 1), (4, 10, 2))


def _compact_maps() -> tuple[torch.Tensor, torch.Tensor]:
    """``(expand, project)``: the row-major 3 x 3 tensor is ``compact @ expand`` (10 x 9),
    and ``full @ project`` (9 x 10) the compact form of any 3 x 3 tensor (exact for the
    sum of a scalar, a skew and a symmetric traceless part, which every tensor is). In
    float64, so that 1/3 rounds once, to the compute dtype."""
    expand = torch.zeros(_COMPACT, 9, dtype=torch.float64)
    expand[0, [0, 4, 8]] = 1.0
    for k, (plus, minus) in enumerate(((7, 5), (2, 6), (3, 1)), start=1):
        expand[k, plus], expand[k, minus] = 1.0, -1.0
    for k, entries in enumerate(([0], [4], [8], [1, 3], [2, 6], [5, 7]), start=4):
        expand[k, entries] = 1.0
    project = torch.zeros(9, _COMPACT, dtype=torch.float64)
    project[[0, 4, 8], 0] = 1.0 / 3.0
    for k, (plus, minus) in enumerate(((7, 5), (2, 6), (3, 1)), start=1):
        project[plus, k], project[minus, k] = 0.5, -0.5
    for k, diagonal in enumerate((0, 4, 8), start=4):
        project[diagonal, k] = 1.0
        project[[0, 4, 8], k] -= 1.0 / 3.0
    for k, pair in enumerate(([1, 3], [2, 6], [5, 7]), start=7):
        project[pair, k] = 0.5
    return expand, project


_EXPAND, _PROJECT = _compact_maps()


def _to_compact(full: torch.Tensor) -> torch.Tensor:
    """(atoms, units, 3, 3) -> (atoms, 10, units), channels last so a row gathers whole."""
    n, units = full.shape[:2]
    return (full.reshape(n, units, 9) @ _PROJECT.to(full)).transpose(1, 2).contiguous()


def _to_full(compact: torch.Tensor) -> torch.Tensor:
    """(atoms, 10, units) -> (atoms, units, 3, 3)."""
    n, _, units = compact.shape
    return (compact.transpose(1, 2) @ _EXPAND.to(compact)).view(n, units, 3, 3)


class _GroupProduct(torch.autograd.Function):
    """``out[:, k] = radial[:, group(k)] * compact[:, k]``: each of the three radial
    features (edges, 3, units) times its component group of a compact tensor (edges, 10,
    units or 1), written slice by slice into one output; materialising the radial
    features repeated to 10 rows first would be two passes over an edge-sized tensor (and
    its backward an index_put), this is one."""

    @staticmethod
    def forward(ctx, radial: torch.Tensor, compact: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(radial, compact)
        out = radial.new_empty((radial.shape[0], _COMPACT, max(radial.shape[2], compact.shape[2])))
        for lo, hi, r in _GROUPS:
            torch.mul(compact[:, lo:hi], radial[:, r : r + 1], out=out[:, lo:hi])
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        radial, compact = ctx.saved_tensors
        grad_radial = grad_compact = None
        if ctx.needs_input_grad[0]:
            grad_radial = torch.cat(
                [(grad[:, lo:hi] * compact[:, lo:hi]).sum(1, keepdim=True) for lo, hi, _ in _GROUPS], dim=1
            )
        if ctx.needs_input_grad[1]:
            grad_compact = grad.new_empty(grad.shape)
            for lo, hi, r in _GROUPS:
                torch.mul(grad[:, lo:hi], radial[:, r : r + 1], out=grad_compact[:, lo:hi])
            if compact.shape[2] == 1:
                grad_compact = grad_compact.sum(2, keepdim=True)
        return grad_radial, grad_compact


def _channel_linear(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """MatGL's tensor linear: ``linear`` over the channels of (atoms, units, 3, 3)."""
    return linear(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _edge_geometry(vec: torch.Tensor) -> torch.Tensor:
    """(edges, 10, 1): the compact form of MatGL's per-edge identity, skew tensor and
    symmetric traceless tensor of the unit bond vector (``vector_to_skewtensor``,
    ``vector_to_symtensor``)."""
    v = vec / torch.norm(vec, dim=1, keepdim=True).clamp(min=1e-6)
    outer = v[:, :, None] * v[:, None, :]
    trace = outer.diagonal(dim1=-2, dim2=-1).mean(-1, keepdim=True)
    sym = torch.cat([outer.diagonal(dim1=-2, dim2=-1) - trace, outer[:, 0, 1:], outer[:, 1, 2:]], dim=1)
    return torch.cat([torch.ones_like(trace), v, sym], dim=1)[:, :, None]


def _tensor_embedding(emb, batch: GraphBatch, edge_attr, dist, vec) -> torch.Tensor:
    """MatGL's ``TensorEmbedding.forward`` with compact messages, and ``emb2`` on the
    pair ``[x_src, x_dst]`` split by block (each atom's half multiplied once per atom)."""
    from matgl.utils.cutoff import cosine_cutoff

    src = batch.edge_index[0]
    x = emb.emb(batch.node_type)
    units = x.shape[1]
    projections = (emb.distance_proj1, emb.distance_proj2, emb.distance_proj3)
    weight = torch.cat([p.weight for p in projections])
    bias = torch.cat([p.bias for p in projections])
    # W1 | W2 | W3 of MatGL, (edges, 3, units)
    radial = (torch.addmm(bias, edge_attr, weight.T) * cosine_cutoff(dist, emb.cutoff)[:, None]).view(-1, 3, units)
    w_src, w_dst = emb.emb2.weight.split([units, units], dim=1)
    bag = _bag_index(list(batch.edge_index), [x.shape[0], x.shape[0]])
    pair = _gathered_sum([torch.addmm(emb.emb2.bias, x, w_src.T), x @ w_dst.T], bag)
    message = _GroupProduct.apply(radial * pair[:, None, :], _edge_geometry(vec))
    full = _to_full(x.new_zeros((x.shape[0], _COMPACT, units)).index_add_(0, src, message))
    scalars, skew, traceless = decompose_tensor(full)
    norm = emb.init_norm(tensor_norm(full))
    for linear in emb.linears_scalar:
        norm = emb.act(linear(norm))
    norm = norm.reshape(-1, units, 3)[..., None, None]
    parts = (
        _channel_linear(linear, part)
        for linear, part in zip(emb.linears_tensor, (scalars, skew, traceless), strict=True)
    )
    return sum(norm[:, :, k] * part for k, part in enumerate(parts))


def _tensornet_interaction(layer, batch: GraphBatch, dist, edge_attr, X) -> torch.Tensor:
    """MatGL's ``TensorNetInteraction.forward`` with compact messages: the per-atom work
    is MatGL's, the per-edge gather, product and sum move 10 numbers per channel."""
    from matgl.utils.cutoff import cosine_cutoff

    src, dst = batch.edge_index
    units = layer.units
    *hidden, last = layer.linears_scalar
    for linear in hidden:
        edge_attr = layer.act(linear(edge_attr))
    # the last Linear's outputs reordered from (unit, feature) to (feature, unit), so each
    # radial feature is one contiguous row per edge: same weights, same values
    weight = last.weight.view(units, 3, -1).transpose(0, 1).reshape(3 * units, -1)
    bias = last.bias.view(units, 3).T.reshape(-1)
    radial = layer.act(torch.addmm(bias, edge_attr, weight.T)) * cosine_cutoff(dist, layer.cutoff)[:, None]
    X = X / (tensor_norm(X) + 1)[..., None, None]
    parts = [
        _channel_linear(linear, p) for linear, p in zip(layer.linears_tensor[:3], decompose_tensor(X), strict=True)
    ]
    Y = parts[0] + parts[1] + parts[2]
    compact = _to_compact(Y)
    message = _GroupProduct.apply(radial.view(-1, 3, units), _gather(compact, dst))
    msg = _to_full(compact.new_zeros(compact.shape).index_add_(0, src, message))
    if layer.equivariance_invariance_group == "O(3)":
        parts = decompose_tensor(msg @ Y + Y @ msg)
    elif layer.equivariance_invariance_group == "SO(3)":
        parts = decompose_tensor(2 * (Y @ msg))
    else:
        raise ValueError("equivariance_invariance_group must be 'O(3)' or 'SO(3)'")
    normp1 = (tensor_norm(parts[0] + parts[1] + parts[2]) + 1)[..., None, None]
    dX = sum(_channel_linear(linear, p / normp1) for linear, p in zip(layer.linears_tensor[3:], parts, strict=True))
    return X + dX + dX @ dX


def encode_tensornet(model: TensorNet, batch: GraphBatch, pos: torch.Tensor | None = None) -> torch.Tensor:
    """TensorNet's per-atom features (``forward_features``' readout input) at positions
    ``pos`` on the batch's own edges (TensorNet has no edge outputs). MatGL's layers and
    weights, with compact per-edge messages (``_tensor_embedding``,
    ``_tensornet_interaction``); tests hold it equal to ``forward_features``."""
    at = batch.pos if pos is None else pos
    vec, dist = compute_pair_vector_and_distance(at, batch.edge_index, batch.pbc_offshift)
    edge_attr = model.bond_expansion(dist)
    x = _tensor_embedding(model.tensor_embedding, batch, edge_attr, dist, vec)
    for layer in model.layers:
        x = _tensornet_interaction(layer, batch, dist, edge_attr, x)
    scalars, skew, traceless = decompose_tensor(x)
    x = torch.cat((tensor_norm(scalars), tensor_norm(skew), tensor_norm(traceless)), dim=-1)
    return model.linear(model.out_norm(x))


def readout_tensornet(model: TensorNet, batch: GraphBatch, node: torch.Tensor) -> torch.Tensor:
    """TensorNet's intensive readout and final layer, as in ``TensorNet.forward``."""
    out = model.final_layer(model.readout(node, batch.batch))
    return torch.sigmoid(out) if model.task_type == "classification" else out


def edge_features(model: nn.Module, batch: GraphBatch, pos: torch.Tensor) -> torch.Tensor:
    """What the pretext head reads for each edge, at shaken positions ``pos``.

    MEGNet and M3GNet: the last block's edge features (the paper's head, on networks that
    have edge outputs). TensorNet: the edge's two endpoint features, symmetrised (sum and
    product, so an edge and its reverse get one answer) beside the expansion of the shaken
    length in the network's own radial basis: an edge has no feature of its own there.
    """
    backbone = backbone_of(model)
    if backbone == "megnet":
        return encode_megnet(model, batch, pos, nodes_needed=False)[1]
    if backbone == "m3gnet":
        return encode_m3gnet(model, batch, pos, nodes_needed=False)[1]
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
    if isinstance(model, M3GNet) and model.is_intensive:
        return readout_m3gnet(model, batch, *encode_m3gnet(model, batch)).reshape(-1)
    if isinstance(model, TensorNet) and model.is_intensive:
        return readout_tensornet(model, batch, encode_tensornet(model, batch)).reshape(-1)
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
