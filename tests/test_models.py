"""The split-weight MEGNet forward must equal MatGL's own MEGNet.forward, values and gradients."""

import dataclasses

import pytest
import torch

from cdssl.graphs import GraphCache
from cdssl.models import build_model, predict, state_attr


@pytest.mark.parametrize("backbone", ["megnet", "m3gnet", "tensornet"])
@pytest.mark.parametrize("mode", ["ssl", "sl"])
@pytest.mark.parametrize("indices", [[4], list(range(24))], ids=["one graph", "batch"])
def test_forward_and_gradients_equal_matgl(small_cache_path, test_config, backbone, mode, indices):
    """predict() (MEGNet's split edge update; M3GNet's split gated MLPs, triplet terms
    computed once per batch; TensorNet's compact messages) is the MatGL model's own
    forward, values and gradients (TensorNet's gradients to float32 rounding at each
    tensor's scale: its sums run in another order, test below)."""
    torch.manual_seed(0)
    model = build_model(_backbone(test_config, backbone), mode)
    batch = GraphCache.load(small_cache_path, 5.0).collate(indices)
    params = [p for p in model.parameters() if p.requires_grad]
    state = state_attr(batch, model) if backbone == "megnet" else None
    ref = model(batch, state_attr=state).reshape(-1)
    ours = predict(model, batch)
    assert torch.allclose(ours, ref, atol=1e-5)
    g_ref = torch.autograd.grad((ref**2).sum(), params)
    g_ours = torch.autograd.grad((predict(model, batch) ** 2).sum(), params)
    for a, b in zip(g_ref, g_ours, strict=True):
        if backbone == "tensornet":
            assert torch.allclose(a, b, atol=1e-5 * a.abs().max().item(), rtol=1e-4)
        else:
            assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def _backbone(test_config, backbone: str) -> dict:
    import copy

    config = copy.deepcopy(test_config)
    config["models"]["backbone"] = backbone
    return config


def _assert_same_values_and_gradients(ours, ref, params, atol: float, rtol: float, scaled: bool = False) -> None:
    """``ours`` equals ``ref``, and so does the gradient of its squared sum with respect to
    every parameter (a parameter that one side does not reach, neither does the other).
    ``scaled``: ``atol`` is relative to the largest entry of each tensor (a float32 sum
    in another order is off by its rounding at the tensor's scale, not each entry's)."""

    def close(a, b):
        return torch.allclose(a, b, atol=atol * (b.abs().max().item() if scaled else 1.0), rtol=rtol)

    assert close(ours, ref)
    g_ref = torch.autograd.grad((ref**2).sum(), params, allow_unused=True)
    g_ours = torch.autograd.grad((ours**2).sum(), params, allow_unused=True)
    for a, b in zip(g_ref, g_ours, strict=True):
        assert (a is None) == (b is None)
        assert a is None or close(a, b)


@pytest.mark.parametrize("backbone", ["m3gnet", "tensornet"])
@pytest.mark.parametrize("mode", ["ssl", "sl"])
def test_backbone_encoders_equal_matgl_s_forward_values_and_gradients(small_cache_path, test_config, backbone, mode):
    """encode_m3gnet / encode_tensornet at the clean positions are MatGL's own forward up to
    the readout (its feature_dict / forward_features), values and gradients."""
    from cdssl.models import encode_m3gnet, encode_tensornet

    torch.manual_seed(0)
    model = build_model(_backbone(test_config, backbone), mode)
    batch = GraphCache.load(small_cache_path, 5.0).collate(list(range(24)))
    params = [p for p in model.parameters() if p.requires_grad]
    if backbone == "m3gnet":
        model(batch)
        last = model.feature_dict[f"gc_{model.n_blocks}"]
        ref = torch.cat([last["node_feat"], last["edge_feat"]])
        ours = torch.cat(encode_m3gnet(model, batch))
        _assert_same_values_and_gradients(ours, ref, params, atol=1e-5, rtol=1e-4)
    else:
        # TensorNet's compact messages sum the same terms in another order: within 1e-5 of
        # each tensor's scale in float32 (MatGL's own float32 is as far from float64), and
        # MatGL's function exactly in float64 (next test)
        ref = model.forward_features(batch)["readout"]
        ours = encode_tensornet(model, batch)
        _assert_same_values_and_gradients(ours, ref, params, atol=1e-5, rtol=0.0, scaled=True)


@pytest.mark.parametrize("group", ["O(3)", "SO(3)"])
@pytest.mark.parametrize("mode", ["ssl", "sl"])
def test_tensornet_compact_messages_compute_matgl_s_function_in_float64(small_cache_path, test_config, mode, group):
    """In float64, where rounding no longer hides a wrong term, encode_tensornet's compact
    messages (10 numbers per channel and edge, summed at the atom) give MatGL's
    forward_features to 1e-9, values and gradients, under either symmetry group. (Fails with a skew component's sign
    flipped, a projection off by a factor, or either half of the group product's backward
    wrong.)"""
    from cdssl.config import model_kwargs
    from cdssl.models import build_network, encode_tensornet

    torch.manual_seed(0)
    sizes = {**model_kwargs(_backbone(test_config, "tensornet"), mode), "equivariance_invariance_group": group}
    model = build_network(sizes, 5.0).double()
    batch = GraphCache.load(small_cache_path, 5.0).collate(list(range(24)))
    # positions take gradients too: the bond directions enter through the compact geometry
    pos = batch.pos.double().requires_grad_()
    batch = dataclasses.replace(batch, pos=pos, pbc_offshift=batch.pbc_offshift.double())
    params = [pos, *(p for p in model.parameters() if p.requires_grad)]
    ref = model.forward_features(batch)["readout"]
    assert ref.dtype == torch.float64
    _assert_same_values_and_gradients(encode_tensornet(model, batch), ref, params, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("backbone", ["megnet", "m3gnet", "tensornet"])
def test_a_crystal_from_the_graph_cache_gets_the_prediction_matgl_gives_its_structure(
    small_table, small_cache_path, test_config, backbone
):
    """The cache holds what MatGL's own converter makes of a crystal (edges, periodic
    offsets, atom types): predict() on a cached batch equals MatGL's predict_structure on
    each pymatgen structure. (Fails with the offsets taken through the transposed
    lattice; reversing every crystal's edge order changes no backbone's prediction.)"""
    from pymatgen.core import Structure

    torch.manual_seed(0)
    model = build_model(_backbone(test_config, backbone), "ssl").eval()
    cache = GraphCache.load(small_cache_path, 5.0)
    with torch.no_grad():
        ours = predict(model, cache.collate(list(range(6))))
    for i in range(6):
        structure = Structure.from_dict(small_table["structure"].iloc[i])
        ref = model.predict_structure(structure)
        assert torch.allclose(ours[i], ref.reshape(()), atol=1e-5), (backbone, i)


def test_m3gnet_pretext_features_take_shaken_lengths_and_angles_on_the_clean_triplets(
    small_cache_path, test_config, monkeypatch
):
    """The pretext task keeps the original edges, and for M3GNet the original triplets:
    the line graph is built from the clean distances, while the features read the shaken
    geometry (at a shake too small to move any bond across the three-body cutoff they are
    MatGL's own forward at the shaken positions)."""
    from cdssl import models
    from cdssl.models import edge_features
    from cdssl.pretext import perturb

    torch.manual_seed(0)
    model = build_model(_backbone(test_config, "m3gnet"), "ssl")
    batch = GraphCache.load(small_cache_path, 5.0).collate(list(range(24)))
    clean = (batch.pos[batch.edge_index[1]] + batch.pbc_offshift - batch.pos[batch.edge_index[0]]).norm(dim=1)
    seen = []
    build = models.create_line_graph
    monkeypatch.setattr(models, "create_line_graph", lambda ei, dist, *a: seen.append(dist) or build(ei, dist, *a))
    shaken = perturb(batch.pos, 0.5, torch.Generator().manual_seed(1))
    features = edge_features(model, batch, shaken)
    assert torch.allclose(seen[-1], clean, atol=1e-5)
    assert not torch.allclose(features, edge_features(model, batch, batch.pos), atol=1e-3)
    nudged = perturb(batch.pos, 1e-4, torch.Generator().manual_seed(1))
    model(dataclasses.replace(batch, pos=nudged))
    assert torch.allclose(edge_features(model, batch, nudged), model.feature_dict["gc_3"]["edge_feat"], atol=1e-5)


@pytest.mark.parametrize("network", ["megnet", "m3gnet"])
def test_the_edge_loss_path_skips_only_what_the_edges_do_not_read(small_cache_path, test_config, network):
    """edge_features (the pretext head's input) skips the last block's node (and state)
    update; at shaken positions its edges are the full encoder's, values and gradients."""
    from cdssl.models import edge_features, encode_m3gnet, encode_megnet
    from cdssl.pretext import perturb

    torch.manual_seed(0)
    model = build_model(_backbone(test_config, network), "ssl")
    batch = GraphCache.load(small_cache_path, 5.0).collate(list(range(24)))
    pos = perturb(batch.pos, 0.5, torch.Generator().manual_seed(0))
    params = [p for p in model.parameters() if p.requires_grad]
    full = (encode_megnet if network == "megnet" else encode_m3gnet)(model, batch, pos)[1]
    ours = edge_features(model, batch, pos)
    _assert_same_values_and_gradients(ours, full, params, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("backbone", ["megnet", "m3gnet", "tensornet"])
def test_pretraining_trains_exactly_the_parameters_the_edge_loss_reaches(small_cache_path, test_config, backbone):
    """pretext_unused freezes what the edge loss never reaches and nothing else: with every
    parameter unfrozen, the ones without a gradient are exactly the frozen ones (a frozen
    list too short hangs DDP waiting for a gradient; too long, it stops learning)."""
    from cdssl.config import model_kwargs
    from cdssl.models import build_network
    from cdssl.pretext import perturb
    from cdssl.pretrain import DenoisingModule

    torch.manual_seed(0)
    sizes = model_kwargs(_backbone(test_config, backbone), "ssl")
    module = DenoisingModule(sizes, 5.0, 0.5, 1e-3)
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    # what pretraining froze: trainable in MatGL's own model (its fixed Gaussian centres are not)
    learnable = {f"model.{n}" for n, p in build_network(sizes, 5.0).named_parameters() if p.requires_grad}
    frozen = learnable - trainable
    assert frozen, "nothing frozen: the readout at least is out of the edge loss's reach"
    for name, param in module.named_parameters():
        param.requires_grad_(name in trainable | frozen)
    batch = GraphCache.load(small_cache_path, 5.0).collate(list(range(24)))
    module(batch, perturb(batch.pos, 0.5, torch.Generator().manual_seed(0))).pow(2).sum().backward()
    reached = {n for n, p in module.named_parameters() if p.grad is not None}
    assert reached == trainable


@pytest.mark.parametrize("backbone", ["megnet", "m3gnet", "tensornet"])
def test_batches_carry_32_bit_edge_indices_with_the_64_bit_results_bit_for_bit(small_cache_path, test_config, backbone):
    """The cache's batches index edges in int32, as MatGL's collate does (faster gathers
    and scatters: docs/benchmarks.md). On one thread, as the pipeline trains on a CPU,
    outputs and gradients are exactly those of int64 indices: the dtype changes no number.
    (On several threads the CPU's scatter sums are not deterministic for either dtype.)"""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = build_model(_backbone(test_config, backbone), "ssl")
        batch = GraphCache.load(small_cache_path, 5.0).collate(list(range(24)))
        assert batch.edge_index.dtype == torch.int32
        results = []
        for b in (batch, dataclasses.replace(batch, edge_index=batch.edge_index.long())):
            model.zero_grad()
            out = predict(model, b)
            out.pow(2).sum().backward()
            results.append([out.detach(), *(p.grad.clone() for p in model.parameters() if p.grad is not None)])
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))


def test_megnet_encodes_each_bond_once_and_every_edge_as_matgl_does(small_cache_path, test_config):
    """_reverse_pairs keys the two directions of a bond alike and nothing else: every key
    of the cached crystals (self-images included) holds an edge and its reverse, the
    atoms swapped and the shift negated. With one direction dropped, the other keeps a
    row of its own and MEGNet's prediction is still MatGL's, values and gradients; with a
    shift or a batch beyond the key's range nothing pairs. (Fails with the self-image sign rule or
    the flip for the higher-numbered source removed, or the shift keyed in 5 A steps,
    which merges bonds.)"""
    from cdssl.models import _reverse_pairs

    torch.manual_seed(0)
    batch = GraphCache.load(small_cache_path, 5.0).collate(list(range(24)))
    src, dst = batch.edge_index.long()
    first, row = _reverse_pairs(batch.edge_index, batch.pbc_offshift, batch.pos.shape[0])
    assert torch.equal(torch.bincount(row), torch.full((len(first),), 2))
    assert bool((src == dst).any()), "no self-image edge in the cached crystals: the test checks less than it says"
    partner = torch.empty_like(row)
    order = torch.argsort(row, stable=True)
    partner[order[0::2]], partner[order[1::2]] = order[1::2], order[0::2]
    assert torch.equal(src[partner], dst) and torch.equal(dst[partner], src)
    assert torch.allclose(batch.pbc_offshift[partner], -batch.pbc_offshift, atol=1e-5)
    assert torch.equal(row[first], torch.arange(len(first)))

    # one direction of the first bond gone
    keep = torch.ones(len(src), dtype=torch.bool)
    keep[0] = False
    lopsided = dataclasses.replace(batch, edge_index=batch.edge_index[:, keep], pbc_offshift=batch.pbc_offshift[keep])
    first, row = _reverse_pairs(lopsided.edge_index, lopsided.pbc_offshift, batch.pos.shape[0])
    assert torch.equal(torch.bincount(torch.bincount(row)), torch.tensor([0, 1, len(first) - 1]))
    model = build_model(test_config, "sl")
    params = [p for p in model.parameters() if p.requires_grad]
    ref = model(lopsided, state_attr=state_attr(lopsided, model)).reshape(-1)
    _assert_same_values_and_gradients(predict(model, lopsided), ref, params, atol=1e-5, rtol=1e-4)

    far = batch.pbc_offshift.clone()
    far[0, 0] = 2048.0
    assert _reverse_pairs(batch.edge_index, far, batch.pos.shape[0]) is None
    # atom pairs times shifts beyond an int64 key: nothing pairs rather than keys wrapping
    assert _reverse_pairs(batch.edge_index, batch.pbc_offshift, 2**31) is None


def test_megnet_block_means_are_matgl_s_scatter_means_bit_for_bit(small_cache_path, test_config):
    """The node and state updates' means over counts built once per batch (_Means) are
    MatGL's scatter_mean, which counts again at every call, bit for bit, also for an atom
    with no edge of its own (mean 0, as MatGL's count of at least one gives); and
    MEGNet's prediction on such a batch is still MatGL's. (Fails with the counts not
    clamped to one, or each edge's graph taken from its destination atom.)"""
    from matgl.utils.maths import scatter_mean

    from cdssl.models import _mean_into, _Means

    torch.manual_seed(0)
    batch = GraphCache.load(small_cache_path, 5.0).collate(list(range(24)))
    # atom 0 sends no edge; edges from atom 1 go to another crystal's atom
    keep = batch.edge_index[0] != 0
    edge_index = batch.edge_index[:, keep].clone()
    edge_index[1, edge_index[0] == 1] = batch.pos.shape[0] - 1
    odd = dataclasses.replace(batch, edge_index=edge_index, pbc_offshift=batch.pbc_offshift[keep])
    means = _Means.of(odd, torch.float32)
    n_atoms, n_edges = odd.pos.shape[0], edge_index.shape[1]
    on_edges, on_atoms = torch.randn(n_edges, 8), torch.randn(n_atoms, 8)
    src, graph = edge_index[0].long(), odd.batch.long()
    for x, ours, index, size in [
        (on_edges, (means.src, means.per_atom), src, n_atoms),
        (on_edges, (means.edge_graph, means.edges_per_graph), graph[src], odd.num_graphs),
        (on_atoms, (means.node_graph, means.atoms_per_graph), graph, odd.num_graphs),
    ]:
        assert torch.equal(_mean_into(x, *ours), scatter_mean(x, index, dim_size=size, dim=0))
    assert not bool(_mean_into(on_edges, means.src, means.per_atom)[0].any())
    model = build_model(test_config, "ssl")
    params = [p for p in model.parameters() if p.requires_grad]
    ref = model(odd, state_attr=state_attr(odd, model)).reshape(-1)
    _assert_same_values_and_gradients(predict(model, odd), ref, params, atol=1e-5, rtol=1e-4)


def test_m3gnet_without_triplets_gives_matgl_s_prediction(small_cache_path, test_config):
    """A three-body cutoff below every bond leaves no triplet (empty gathers and sums)."""
    from cdssl.models import build_network, model_kwargs

    torch.manual_seed(0)
    sizes = {**model_kwargs(_backbone(test_config, "m3gnet"), "sl"), "threebody_cutoff": 0.5}
    model = build_network(sizes, 5.0)
    batch = GraphCache.load(small_cache_path, 5.0).collate(list(range(6)))
    assert torch.allclose(predict(model, batch), model(batch).reshape(-1), atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_softplus2_is_matgl_s_bit_for_bit_values_and_gradient(dtype):
    """cdssl's SoftPlus2 node gives MatGL's module's values and gradients exactly, far
    into both tails and past softplus's linear threshold (20) and float32's exp overflow
    (88.7)."""
    from matgl.layers._activations import SoftPlus2

    from cdssl.models import _SoftPlus2

    torch.manual_seed(0)
    tails = torch.tensor([0.0, -30.0, -100.0, 19.9, 20.0, 20.1, 79.0, 85.0, 100.0, 1e4])
    x = torch.cat([torch.randn(4096) * 6, tails]).to(dtype).reshape(-1, 2).requires_grad_(True)
    ours, ref = _SoftPlus2.apply(x), SoftPlus2()(x)
    assert torch.equal(ours, ref)
    grad = torch.randn_like(ref)
    assert torch.equal(*(torch.autograd.grad(y, x, grad)[0] for y in (ours, ref)))


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_the_gathered_sum_is_the_sum_of_the_gathers_values_and_gradients(dtype):
    """One embedding_bag over the stacked tables equals gathering each table by its own
    index and adding, forward and backward (the split edge updates rely on it)."""
    from cdssl.models import _bag_index, _gathered_sum

    torch.manual_seed(0)
    tables = [torch.randn(n, 8, requires_grad=True) for n in (7, 7, 3)]
    indices = [torch.randint(0, t.shape[0], (50,), dtype=dtype) for t in tables]
    ours = _gathered_sum(tables, _bag_index(indices, [t.shape[0] for t in tables]))
    ref = sum(t[i.long()] for t, i in zip(tables, indices, strict=True))
    assert torch.allclose(ours, ref, atol=1e-6)
    grad = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(ours, tables, grad), torch.autograd.grad(ref, tables, grad), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("input_grad", [True, False])
def test_narrow_linear_is_the_linear_layer_with_its_gradients_to_float32_rounding(bias, input_grad):
    """M3GNet's 9-input layers (radial weights, three-body bond update) run as
    _NarrowLinear: the Linear's values, and gradients of the input (row-major, as the
    gathers after it read it), weight and bias equal autograd's to float32 rounding."""
    from cdssl.models import _narrow_linear

    torch.manual_seed(0)
    layer = torch.nn.Linear(9, 64, bias=bias)
    x = torch.randn(5000, 9, requires_grad=input_grad)
    grad = torch.randn(5000, 64)
    ours = _narrow_linear(x, layer.weight, layer.bias)
    ref = layer(x)
    assert torch.equal(ours, ref)
    inputs = [t for t in (x, layer.weight, layer.bias) if t is not None and t.requires_grad]
    g_ours = torch.autograd.grad(ours, inputs, grad)
    g_ref = torch.autograd.grad(ref, inputs, grad)
    for a, b in zip(g_ours, g_ref, strict=True):
        assert a.shape == b.shape
        assert torch.allclose(a, b, atol=1e-5 * b.abs().max().item(), rtol=0.0)
    if input_grad:
        assert g_ours[0].is_contiguous()
