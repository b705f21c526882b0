"""The pretext task on real structures: perturbation, targets, learning, selection."""

import itertools
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cdssl.config import model_kwargs, pretrain_settings
from cdssl.graphs import GraphCache
from cdssl.models import _reverse_pairs
from cdssl.pretext import (
    denoising_target,
    edge_lengths,
    perturb,
    standardise_per_graph,
    validation_generator,
)
from cdssl.pretrain import DenoisingModule, loaders, nested_split, pretrain_split, run_pretraining
from cdssl.references import lookup_references, lookup_share, no_learning_reference


@pytest.fixture(scope="module")
def cache(small_cache_path):
    return GraphCache.load(small_cache_path, 5.0)


def test_perturbation_moves_positions_but_not_edges(cache):
    batch = cache.collate(list(range(8)))
    noisy = perturb(batch.pos, 0.5, torch.Generator().manual_seed(1))
    assert ((noisy - batch.pos).norm(dim=1) > 0).all()
    # per-coordinate noise has the configured scale
    assert abs(float((noisy - batch.pos).std()) - 0.5) < 0.05


def test_the_network_sees_noisy_lengths_on_the_original_edges_and_predicts_the_clean_ones(cache, test_config):
    # What the pretext step feeds the network: the distances its bond expansion receives
    # must be the shaken positions measured along the clean graph's edges (same edges,
    # same periodic shifts, no neighbour list rebuilt from the shaken atoms), and the
    # target the standardised clean lengths. Feeding the clean positions, or rebuilding
    # the edges after shaking, fails here.
    torch.manual_seed(0)
    module = DenoisingModule(model_kwargs(test_config, "ssl"), 5.0, 0.5, 1e-3)
    batch = cache.collate(list(range(8)))
    edges_before, shift_before, pos_before = batch.edge_index.clone(), batch.pbc_offshift.clone(), batch.pos.clone()
    seen = []
    module.model.bond_expansion.register_forward_hook(lambda mod, args, out: seen.append(args[0].detach()))
    pred, target = module._step(batch, torch.Generator().manual_seed(1))
    noisy = perturb(pos_before, 0.5, torch.Generator().manual_seed(1))
    # MEGNet expands each bond's length once, for both its directions (_reverse_pairs)
    first, row = _reverse_pairs(edges_before, shift_before, pos_before.shape[0])
    assert len(seen) == 1 and seen[0].shape == first.shape and pred.shape == row.shape == (edges_before.shape[1],)
    lengths = seen[0][row]
    assert torch.allclose(lengths, edge_lengths(noisy, batch), atol=1e-5)
    assert not torch.allclose(lengths, edge_lengths(pos_before, batch), atol=1e-2)
    assert torch.allclose(target, denoising_target(batch))
    # the batch itself is left as it was: the next epoch shakes the clean positions again
    assert torch.equal(batch.edge_index, edges_before) and torch.equal(batch.pbc_offshift, shift_before)
    assert torch.equal(batch.pos, pos_before)


def test_original_lengths_match_pymatgen(small_table, cache):
    from pymatgen.core import Structure

    s = Structure.from_dict(small_table["structure"].iloc[0])
    batch = cache.collate([0])
    ours = np.sort(edge_lengths(batch.pos, batch).numpy())
    ref = np.sort([n.nn_distance for site in s.get_all_neighbors(5.0) for n in site])
    assert np.allclose(ours, ref, atol=1e-4)


def test_per_graph_standardisation_and_zero_std():
    values = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0, 7.0])
    graph = torch.tensor([0, 0, 0, 1, 1, 1, 2])
    out = standardise_per_graph(values, graph, 3)
    g0 = out[:3]
    assert torch.allclose(g0.mean(), torch.tensor(0.0), atol=1e-6)
    assert torch.allclose(g0.std(unbiased=False), torch.tensor(1.0), atol=1e-6)
    assert torch.equal(out[3:], torch.zeros(4))  # all equal lengths, and a single edge


def test_denoising_target_is_standardised_per_graph(cache):
    batch = cache.collate(list(range(6)))
    target = denoising_target(batch)
    for g in range(6):
        t = target[batch.edge_batch == g]
        assert abs(float(t.mean())) < 1e-5 and abs(float(t.std(unbiased=False)) - 1) < 1e-4


def test_a_few_steps_lower_the_loss(cache, test_config):
    torch.manual_seed(0)
    module = DenoisingModule(model_kwargs(test_config, "ssl"), 5.0, 0.5, 1e-3)
    opt = torch.optim.Adam(module.parameters(), lr=3e-3)
    batch = cache.collate(list(range(16)))
    gen = torch.Generator().manual_seed(0)

    def loss():
        pred, target = module._step(batch, torch.Generator().manual_seed(0))
        return torch.nn.functional.mse_loss(pred, target)

    first = float(loss())
    for _ in range(25):
        opt.zero_grad()
        pred, target = module._step(batch, gen)
        torch.nn.functional.mse_loss(pred, target).backward()
        opt.step()
    assert float(loss()) < 0.8 * first


def test_no_learning_reference_uses_the_validation_noise(cache, test_config):
    train, val = pretrain_split(len(cache), 0.2, 0)
    _, val_dl = loaders(cache, train, val, 8, 0)
    assert no_learning_reference(val_dl, 0.0, 0)["val_loss_noisy_distances"] == 0.0
    ref = no_learning_reference(val_dl, 0.5, 0)
    # every graph's targets have mean 0 and (population) variance 1
    assert ref["val_loss_zeros"] == pytest.approx(1.0, abs=1e-5)
    assert 0.1 < ref["val_loss_noisy_distances"] < 1.0
    # validation_step sees the same shaken crystals: a module whose answer is the
    # noisy distances' own standardisation scores exactly the reference
    module = DenoisingModule(model_kwargs(test_config, "ssl"), 5.0, 0.5, 1e-3)
    module.forward = lambda batch, pos: standardise_per_graph(
        edge_lengths(pos, batch), batch.edge_batch, batch.num_graphs
    )
    for i, batch in enumerate(val_dl):
        module.validation_step(batch, i)
    assert float(module.val_loss.compute()) == pytest.approx(ref["val_loss_noisy_distances"], rel=1e-5)


def test_lookup_references_recover_a_known_mapping(cache):
    train, val = pretrain_split(len(cache), 0.2, 0)
    train_dl, val_dl = loaders(cache, train, val, 8, 0)
    # without noise the standardised noisy length is the target itself: a lookup per
    # 0.1-wide bin recovers it to within its bin (tails past +-4 are rare)
    exact = lookup_references(train_dl, val_dl, 0.0, 0)
    assert exact["val_loss_lookup_noisy_length"] < 0.1**2 / 4
    assert exact["val_loss_lookup_element_pair"] < 0.1**2 / 4
    shaken = lookup_references(train_dl, val_dl, 0.5, 0)
    noisy = no_learning_reference(val_dl, 0.5, 0)["val_loss_noisy_distances"]
    # on real noise both tables beat reading the noisy length as is (they undo its
    # shrinkage towards the mean), as on the demo pool
    assert shaken["val_loss_lookup_element_pair"] < noisy
    assert shaken["val_loss_lookup_noisy_length"] < noisy


def test_lookup_share_is_one_for_a_copy_of_the_input_and_zero_for_noise():
    gen = torch.Generator().manual_seed(0)
    noisy = torch.randn(20000, generator=gen)
    bins = torch.bucketize(noisy, torch.linspace(-4.0, 4.0, 81))

    def share(pred):
        zeros = torch.zeros(82, dtype=torch.float64)
        p = pred.double()
        sums = {
            "bin_n": zeros.index_add(0, bins, torch.ones_like(p)),
            "bin_s": zeros.index_add(0, bins, p),
            "bin_ss": zeros.index_add(0, bins, p * p),
        }
        return lookup_share(sums)

    assert share(noisy) > 0.99
    assert share(torch.randn(20000, generator=gen)) < 0.02
    assert 0.3 < share(noisy + torch.randn(20000, generator=gen)) < 0.7


def test_measuring_the_reference_leaves_training_unchanged(tmp_path, small_cache_path, config):
    config["pretrain"].update(epochs=1, batch_size=16)
    for name, ref in (("a", None), ("b", tmp_path / "ref.json")):
        run_pretraining(
            small_cache_path,
            **pretrain_settings(config),
            history_csv=tmp_path / f"{name}.csv",
            split_csv=tmp_path / f"{name}_split.csv",
            ckpt_dir=tmp_path / f"{name}_ckpt",
            reference_json=ref,
        )
    columns = ["train_loss", "val_loss", "grad_norm"]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "a.csv")[columns], pd.read_csv(tmp_path / "b.csv")[columns])


def test_split_is_seeded_and_disjoint():
    a_tr, a_va = pretrain_split(100, 0.2, 0)
    b_tr, b_va = pretrain_split(100, 0.2, 0)
    assert np.array_equal(a_va, b_va) and len(a_va) == 20
    assert not set(a_tr) & set(a_va) and len(a_tr) + len(a_va) == 100
    assert not np.array_equal(pretrain_split(100, 0.2, 1)[1], a_va)


def test_smaller_pools_are_subsets_of_larger_ones_train_in_train_and_val_in_val():
    sizes = (10, 37, 100, 250, 1000)
    splits = {n: nested_split(1000, n, 0.2, seed=3) for n in sizes}
    for n, (train, val) in splits.items():
        assert len(train) + len(val) == n and not set(train) & set(val)
        assert len(val) == n // 5  # floor(n * val_fraction)
    for small, large in itertools.pairwise(sizes):
        assert set(splits[small][0]) <= set(splits[large][0]), (small, large)
        assert set(splits[small][1]) <= set(splits[large][1]), (small, large)
    # seeded: the same seed the same pools, another seed others
    assert all(np.array_equal(a, b) for a, b in zip(nested_split(1000, 100, 0.2, 3), splits[100], strict=True))
    assert not np.array_equal(nested_split(1000, 100, 0.2, 4)[0], splits[100][0])
    for size in (1, 1001):
        with pytest.raises(ValueError, match=f"pretrain.pool_size {size} is outside 2..1000"):
            nested_split(1000, size, 0.2, 0)
    with pytest.raises(ValueError, match="leaves no train or no val graph"):
        nested_split(1000, 4, 0.2, 0)


def test_pretraining_run_logs_every_epoch_and_selection_exports_for_matgl(tmp_path, small_cache_path, config):
    import matgl

    from cdssl.models import encoder_state
    from cdssl.selection import select_checkpoint

    config["pretrain"].update(epochs=4, batch_size=4)  # several validation batches
    run_pretraining(
        small_cache_path,
        **pretrain_settings(config),
        history_csv=tmp_path / "h.csv",
        split_csv=tmp_path / "split.csv",
        ckpt_dir=tmp_path / "ckpt",
        reference_json=tmp_path / "ref.json",
    )
    h = pd.read_csv(tmp_path / "h.csv")
    reference = json.loads((tmp_path / "ref.json").read_text())
    assert reference["sigma"] == 0.5 and 0 < reference["val_loss_noisy_distances"] < reference["val_loss_zeros"]
    assert reference["val_loss_lookup_element_pair"] < reference["val_loss_noisy_distances"]
    assert h["val_output_share_lookup"].between(0, 1).all()
    assert h["epoch"].tolist() == [0, 1, 2, 3]
    assert {"train_loss", "train_mae", "val_loss", "val_mae", "grad_norm"} <= set(h.columns)
    assert (h["grad_norm"] > 0).all()
    record = select_checkpoint(tmp_path / "h.csv", tmp_path / "ckpt", tmp_path / "sel.json", tmp_path / "enc")
    assert record["epoch"] == int(h["val_loss"].idxmin())
    loaded = matgl.load_model(tmp_path / "enc")
    kept = torch.load(record["checkpoint"], weights_only=False)
    # the kept checkpoint is the selected epoch: one validation loss for both
    assert kept["cdssl_history"][-1]["epoch"] == record["epoch"]
    for key, value in encoder_state(loaded).items():
        assert torch.equal(value, kept["state_dict"]["model." + key]), key
    # the history's validation numbers (torchmetrics, reduced by Lightning over the epoch)
    # are the selected weights' per-edge errors over the whole split, recomputed here by hand
    module = DenoisingModule.load_from_checkpoint(record["checkpoint"], weights_only=False).eval()
    cache = GraphCache.load(small_cache_path, 5.0)
    seed, sigma = config["pretrain"]["seed"], config["pretrain"]["sigma"]
    train, val = pretrain_split(len(cache), config["pretrain"]["val_fraction"], seed)
    se = ae = n = 0.0
    with torch.no_grad():
        for batch_idx, batch in enumerate(loaders(cache, train, val, 4, seed)[1]):
            shaken = perturb(batch.pos, sigma, validation_generator(batch.pos.device, seed, batch_idx))
            err = (module(batch, shaken) - denoising_target(batch)).double()
            se, ae, n = se + float((err**2).sum()), ae + float(err.abs().sum()), n + err.numel()
    row = h.iloc[record["epoch"]]
    assert row["val_loss"] == pytest.approx(se / n, rel=1e-5) and row["val_mae"] == pytest.approx(ae / n, rel=1e-5)
    # a history from another run (another best epoch) is refused, naming the command
    other = h.copy()
    other.loc[(record["epoch"] + 1) % 4, "val_loss"] = -1.0
    other.to_csv(tmp_path / "other.csv", index=False)
    with pytest.raises(ValueError, match="different runs.*forcerun"):
        select_checkpoint(tmp_path / "other.csv", tmp_path / "ckpt", tmp_path / "sel2.json", tmp_path / "enc2")


def test_pretraining_maps_its_graph_cache_so_the_ranks_of_a_node_share_its_pages(
    tmp_path, small_cache_path, config, monkeypatch
):
    import shutil

    import psutil

    import cdssl.pretrain as pretrain

    graphs = tmp_path / "graphs.pt"  # a path no other test has mapped
    shutil.copy(small_cache_path, graphs)
    mapped = []
    make_trainer = pretrain.make_trainer

    def trainer_after_noting_the_mapped_files(*args, **kwargs):
        mapped.append({m.path for m in psutil.Process().memory_maps()})
        return make_trainer(*args, **kwargs)

    monkeypatch.setattr(pretrain, "make_trainer", trainer_after_noting_the_mapped_files)
    config["pretrain"].update(epochs=1, batch_size=16)
    run_pretraining(
        graphs,
        **pretrain_settings(config),
        history_csv=tmp_path / "h.csv",
        split_csv=tmp_path / "split.csv",
        ckpt_dir=tmp_path / "ckpt",
    )
    assert str(graphs.resolve()) in mapped[0]
    # and the mapped cache holds exactly what a read one does
    mapped_cache, read_cache = GraphCache.load(graphs, 5.0, mmap=True), GraphCache.load(graphs, 5.0)
    assert mapped_cache.ids == read_cache.ids
    for key, value in read_cache.data.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(mapped_cache.data[key], value), key


class _RunsCode:
    """What a checkpoint from an untrusted source could carry: unpickling it calls ``touch``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoints_are_read_without_running_code_they_carry(tmp_path, small_cache_path, config):
    from cdssl.config import PretrainSettings
    from cdssl.selection import select_checkpoint
    from cdssl.training import job_identity, prepare_checkpoint_dir

    marker = tmp_path / "code-ran"
    settings = pretrain_settings(config)
    ckpt = tmp_path / "ckpt"
    # a folder stamped with this very job's identity, so the run resumes from its last.ckpt
    prepare_checkpoint_dir(ckpt, job_identity(PretrainSettings(**settings).identity(), {"graphs": small_cache_path}))
    for name in ("last.ckpt", "best.ckpt"):
        torch.save({"epoch": 0, "state_dict": {}, "payload": _RunsCode(marker)}, ckpt / name)
    outputs = {"history_csv": tmp_path / "h.csv", "split_csv": tmp_path / "s.csv", "ckpt_dir": ckpt}
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        run_pretraining(small_cache_path, **settings, **outputs)
    pd.DataFrame({"epoch": [0], "val_loss": [0.5]}).to_csv(tmp_path / "h.csv", index=False)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        select_checkpoint(tmp_path / "h.csv", ckpt, tmp_path / "sel.json", tmp_path / "enc")
    assert not marker.exists()


def test_relative_improvement_counts_only_drops_of_at_least_min_delta():
    from cdssl.training import last_relative_improvement

    losses = [float("nan"), 1.0, 0.9, 0.89, 0.5, 0.499]
    history = [{"epoch": e, "val_loss": v} for e, v in enumerate(losses)]
    # 0.9 is 10% below 1.0 and counts; 0.89 is not 5% below 0.9; 0.5 is; 0.499 is not
    assert last_relative_improvement(history, "val_loss", 0.05) == 4
    assert last_relative_improvement(history, "val_loss", 0.6) == 1
    assert last_relative_improvement(history, "val_loss", 1e-9) == 5
    assert last_relative_improvement(history[:1], "val_loss", 0.05) == -1


def test_pretraining_stops_once_the_validation_loss_is_flat_and_a_rerun_does_not_train_on(
    tmp_path, small_cache_path, config
):
    # a 90% drop per 2 epochs is more than this loss can give: the run stops at epoch 2
    config["pretrain"].update(epochs=30, batch_size=16, patience=2, min_delta=0.9)
    settings = pretrain_settings(config)
    assert settings["patience"] == 2 and settings["min_delta"] == 0.9
    kwargs = dict(history_csv=tmp_path / "h.csv", split_csv=tmp_path / "s.csv", ckpt_dir=tmp_path / "ckpt")
    run_pretraining(small_cache_path, **settings, **kwargs)
    h = pd.read_csv(tmp_path / "h.csv")
    assert h["epoch"].tolist() == [0, 1, 2]
    assert h["stop"].iloc[-1] == "early stop: no val_loss 90% below the last counted best for 2 epochs (best epoch 0)"
    run_pretraining(small_cache_path, **settings, **kwargs)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "h.csv"), h)
    from cdssl.selection import select_checkpoint

    record = select_checkpoint(tmp_path / "h.csv", tmp_path / "ckpt", tmp_path / "sel.json", tmp_path / "enc")
    assert record["epochs_trained"] == 3 and record["stop"] == h["stop"].iloc[-1]
    # not before min_steps: 2 steps per epoch here, so step 10 ends epoch 4
    config["pretrain"]["min_steps"] = 10
    kwargs = dict(history_csv=tmp_path / "h2.csv", split_csv=tmp_path / "s2.csv", ckpt_dir=tmp_path / "ckpt2")
    run_pretraining(small_cache_path, **pretrain_settings(config), **kwargs)
    h2 = pd.read_csv(tmp_path / "h2.csv")
    assert h2["epoch"].tolist() == [0, 1, 2, 3, 4] and h2["steps"].tolist() == [2, 4, 6, 8, 10]
    assert h2["stop"].iloc[-1].startswith("early stop") and h2["stop"].iloc[:-1].isna().all()


def test_the_papers_fixed_epoch_pretraining_keeps_the_identity_it_had_before_the_stopping_keys(root):
    from dataclasses import replace

    from cdssl.config import PretrainSettings, load_config

    config = load_config(root / "config" / "demo.yaml")
    declared = pretrain_settings(config)
    old_keys = {"sizes", "cutoff", "sigma", "epochs", "batch_size", "lr", "val_fraction", "seed"}
    assert set(declared) == old_keys | {"lr_schedule", "lr_min_factor", "devices", "strategy"}
    settings = PretrainSettings(**declared)
    for key, value in {"patience": 20, "min_delta": 0.02, "min_steps": 2100}.items():
        other = replace(settings, **{key: value})
        assert other.identity()[key] == value and other.declared()[key] == value


def _ssl_cell(out: Path, graphs: Path, config: dict, encoder: Path) -> dict:
    from cdssl.config import finetune_settings
    from cdssl.finetune import run_finetune

    config["finetune"].update(epochs=2, batch_size=16)
    settings = finetune_settings(config, "dielectric", "ssl")
    files = {"metrics_json": out / "m.json", "predictions_csv": out / "p.csv", "history_csv": out / "h.csv"}
    cell = {"dataset": "dielectric", "fraction": 0.5, "seed": 0, "mode": "ssl"}
    return run_finetune(graphs, **cell, **settings, encoder_dir=encoder, **files, ckpt_dir=out / "ckpt")


def test_a_budget_exports_the_best_of_its_first_epochs_as_a_run_of_that_length_would(
    tmp_path, small_cache_path, config
):
    """pretrain.export_epochs: the budget-k encoder of a long run is, bit for bit, the
    encoder a run of k epochs selects; and raising the epoch cap of a finished run
    (constant learning rate) resumes it into the run that had the higher cap from the start."""
    import matgl

    from cdssl.models import encoder_state
    from cdssl.selection import select_checkpoint
    from cdssl.training import snapshot_path

    def pretrain(epochs: int, out: Path) -> pd.DataFrame:
        config["pretrain"].update(epochs=epochs, batch_size=8)
        run_pretraining(
            small_cache_path,
            **pretrain_settings(config),
            history_csv=out / "h.csv",
            split_csv=out / "s.csv",
            ckpt_dir=out / "ckpt",
        )
        return pd.read_csv(out / "h.csv")

    def state(enc: Path) -> dict:
        return encoder_state(matgl.load_model(enc))

    long = pretrain(5, tmp_path / "long")
    # every new best was kept, and only those
    bests = [int(e) for e in long["epoch"] if long["val_loss"][: e + 1].idxmin() == e]
    kept = sorted(p.name for p in (tmp_path / "long/ckpt/best_by_epoch").iterdir())
    assert kept == [snapshot_path(".", e).name for e in bests]
    short = pretrain(3, tmp_path / "short")
    pd.testing.assert_frame_equal(short[["train_loss", "val_loss"]], long[["train_loss", "val_loss"]].iloc[:3])
    whole = select_checkpoint(tmp_path / "short/h.csv", tmp_path / "short/ckpt", tmp_path / "w.json", tmp_path / "w")
    cut = select_checkpoint(
        tmp_path / "long/h.csv", tmp_path / "long/ckpt", tmp_path / "b.json", tmp_path / "b", budget=3
    )
    assert cut["epoch"] == whole["epoch"] == int(long["val_loss"][:3].idxmin()) and cut["budget"] == 3
    a, b = state(tmp_path / "w"), state(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for k in range(1, 6):
        record = select_checkpoint(
            tmp_path / "long/h.csv", tmp_path / "long/ckpt", tmp_path / f"{k}.json", tmp_path / f"e{k}", budget=k
        )
        assert record["epoch"] == int(long["val_loss"][:k].idxmin()) and record["epochs_trained"] == k
    # a budget beyond the run's end gets its final best, and says so
    beyond = select_checkpoint(
        tmp_path / "long/h.csv", tmp_path / "long/ckpt", tmp_path / "9.json", tmp_path / "e9", budget=9
    )
    assert beyond["epoch"] == int(long["val_loss"].idxmin()) and "ended before 9" in beyond["why"]
    # the long run's cap lowered to just before its best epoch: nothing trains, and
    # history, selection (from a snapshot: best.ckpt is a later epoch) and encoder are
    # those of a clean run with that cap; so are the SSL cells fine-tuned from it
    k = int(long["val_loss"].idxmin())
    assert k >= 1, "the run must improve after its first epoch for the cut to leave out its best"
    clean, lowered = tmp_path / "clean", tmp_path / "lowered"
    first = pretrain(k, clean)
    shutil.copytree(tmp_path / "long", lowered)
    again = pretrain(k, lowered)
    cols = ["epoch", "train_loss", "val_loss", "val_mae", "grad_norm", "steps"]
    pd.testing.assert_frame_equal(again[cols], first[cols])
    assert again["stop"].fillna("").tolist() == first["stop"].fillna("").tolist()
    assert again["stop"].iloc[-1] == f"max epochs ({k}) reached"
    records = [select_checkpoint(d / "h.csv", d / "ckpt", d / "sel.json", d / "enc") for d in (clean, lowered)]
    same = ("epoch", "val_loss", "train_loss", "val_mae", "epochs_trained", "stop", "first_val_loss")
    assert {x: records[0][x] for x in same} == {x: records[1][x] for x in same}
    a, c = state(clean / "enc"), state(lowered / "enc")
    assert all(torch.equal(a[x], c[x]) for x in a)
    ssl = [_ssl_cell(d / "ssl", small_cache_path, config, d / "enc") for d in (clean, lowered)]
    assert {x: v for x, v in ssl[0].items() if x != "wall_seconds"} == {
        x: v for x, v in ssl[1].items() if x != "wall_seconds"
    }
    # the short run, its cap raised to 5: resumed (no epoch redone), the long run's numbers
    resumed = pretrain(5, tmp_path / "short")
    cols = ["epoch", "train_loss", "val_loss", "val_mae", "steps"]
    pd.testing.assert_frame_equal(resumed[cols], long[cols])
    assert resumed["stop"].fillna("").tolist() == long["stop"].fillna("").tolist()
    # resumed, not redone: the first three rows are the ones the short run wrote
    pd.testing.assert_series_equal(resumed["epoch_seconds"][:3], short["epoch_seconds"])
    last = {
        k: torch.load(p / "ckpt/last.ckpt", weights_only=False)["state_dict"]
        for k, p in (("s", tmp_path / "short"), ("l", tmp_path / "long"))
    }
    assert all(torch.equal(last["s"][k], last["l"][k]) for k in last["l"])


def test_a_step_outside_a_trainer_logs_nothing_and_warns_nothing(cache, test_config):
    """The step benchmarks call the training and validation steps themselves: the epoch
    metrics still update, and Lightning has no trainer to warn about at every step."""
    import warnings

    module = DenoisingModule(model_kwargs(test_config, "ssl"), 5.0, 0.5, 1e-3)
    batch = cache.collate(list(range(8)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module.training_step(batch, 0)
        module.validation_step(batch, 0)
    assert not [w for w in caught if "self.trainer" in str(w.message)], [str(w.message) for w in caught]
    assert float(module.train_loss.compute()) > 0 and float(module.val_loss.compute()) > 0
