"""CDSSL pretext task: recover each edge's original length from a shaken crystal."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics import Metric

from .config import PretrainSettings, megnet_sizes
from .graphs import GraphBatch, GraphCache
from .models import build_megnet, encode
from .training import (
    EpochCheckpoint,
    EpochShuffle,
    HistoryModule,
    epoch_mean,
    job_identity,
    make_trainer,
    prepare_checkpoint_dir,
    resume_checkpoint,
    step_generator,
    write_history,
)
from .utils import LOG, atomic_path, write_json

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


def no_learning_reference(val_loader: DataLoader, sigma: float, val_seed: int) -> dict[str, float]:
    """Validation loss of two answers that need no training, on the validation noise.

    ``noisy_distances``: the standardised edge lengths of the shaken crystal itself, what
    the input already says; ``zeros``: each graph's mean distance. A pretrained network
    is only worth its epochs below the first.
    """
    se_noisy = se_zero = n = 0.0
    for batch_idx, batch in enumerate(val_loader):
        target = denoising_target(batch)
        shaken = perturb(batch.pos, sigma, validation_generator(batch.pos.device, val_seed, batch_idx))
        noisy = standardise_per_graph(edge_lengths(shaken, batch), batch.edge_batch, batch.num_graphs)
        se_noisy += float(((noisy - target) ** 2).sum())
        se_zero += float((target**2).sum())
        n += target.numel()
    return {"val_loss_noisy_distances": se_noisy / n, "val_loss_zeros": se_zero / n, "sigma": sigma, "n_edges": int(n)}


# Bins of the per-graph-standardised noisy length, for the lookup references and for the
# share of the network's output a lookup explains: 0.1 wide over [-4, 4], plus two tails.
LOOKUP_EDGES = torch.linspace(-4.0, 4.0, 81)


PAIR_PRIOR = 20.0


def lookup_bin(noisy: torch.Tensor) -> torch.Tensor:
    return torch.bucketize(noisy, LOOKUP_EDGES.to(noisy.device, noisy.dtype))


def pair_key(batch: GraphBatch, n_types: int = 128) -> torch.Tensor:
    """Each edge's unordered element pair as one integer."""
    src, dst = batch.edge_index
    a, b = batch.node_type[src].long(), batch.node_type[dst].long()
    return torch.minimum(a, b) * n_types + torch.maximum(a, b)


def _noisy_standardised(batch: GraphBatch, sigma: float, generator: torch.Generator) -> torch.Tensor:
    shaken = perturb(batch.pos, sigma, generator)
    return standardise_per_graph(edge_lengths(shaken, batch), batch.edge_batch, batch.num_graphs)


def lookup_references(train_loader: DataLoader, val_loader: DataLoader, sigma: float, seed: int) -> dict[str, float]:
    """Validation loss of two lookup tables fitted on the training split: the mean target
    per bin of the standardised noisy length, and the same per element pair, each (pair,
    bin) mean shrunk towards the bin's mean by :data:`PAIR_PRIOR` edges (a pair or bin
    never seen in training falls back to the first table, an unseen bin to its centre). What a network must beat
    to have learned more than "read the noisy length, correct its average bias".

    The training noise is one draw per training graph (generator keyed by the seed and
    batch, independent of the training run's own draws); the validation noise is the
    very noise the network's validation loss uses.
    """
    nb = len(LOOKUP_EDGES) + 1
    s_bin, n_bin = torch.zeros(nb, dtype=torch.float64), torch.zeros(nb, dtype=torch.float64)
    pair_sums: dict[int, torch.Tensor] = {}
    for batch_idx, batch in enumerate(train_loader):
        target = denoising_target(batch).double()
        bins = lookup_bin(_noisy_standardised(batch, sigma, step_generator(batch.pos.device, seed, -1, batch_idx)))
        s_bin.index_add_(0, bins, target)
        n_bin.index_add_(0, bins, torch.ones_like(target))
        keys = pair_key(batch) * nb + bins
        uniq, inverse = torch.unique(keys, return_inverse=True)
        sums = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, target)
        counts = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, torch.ones_like(target))
        for k, sv, cv in zip(uniq.tolist(), sums.tolist(), counts.tolist(), strict=True):
            acc = pair_sums.setdefault(k, torch.zeros(2, dtype=torch.float64))
            acc += torch.tensor([sv, cv], dtype=torch.float64)
    # a bin no training edge fell in answers its own centre: the noisy length as read
    edges = LOOKUP_EDGES.double()
    centres = torch.cat([edges[:1] - 0.05, (edges[1:] + edges[:-1]) / 2, edges[-1:] + 0.05])
    by_bin = torch.where(n_bin > 0, s_bin / n_bin.clamp(min=1), centres)
    # a (pair, bin) cell seen a few times is mostly noise: its mean is shrunk towards the
    # bin's mean with the weight of PAIR_PRIOR edges (an empirical-Bayes average), which
    # keeps the table from doing worse than the binned lookup on a pool of many elements
    by_pair = {k: float((v[0] + PAIR_PRIOR * by_bin[k % nb]) / (v[1] + PAIR_PRIOR)) for k, v in pair_sums.items()}
    se_bin = se_pair = n = 0.0
    for batch_idx, batch in enumerate(val_loader):
        target = denoising_target(batch).double()
        bins = lookup_bin(_noisy_standardised(batch, sigma, validation_generator(batch.pos.device, seed, batch_idx)))
        pred_bin = by_bin[bins]
        keys = (pair_key(batch) * nb + bins).tolist()
        pred_pair = torch.tensor([by_pair.get(k, float("nan")) for k in keys], dtype=torch.float64)
        pred_pair = torch.where(pred_pair.isnan(), pred_bin, pred_pair)
        se_bin += float(((pred_bin - target) ** 2).sum())
        se_pair += float(((pred_pair - target) ** 2).sum())
        n += target.numel()
    return {"val_loss_lookup_noisy_length": se_bin / n, "val_loss_lookup_element_pair": se_pair / n}


def lookup_share(s: dict) -> float:
    """Share of the variance of the network's validation outputs that their mean per bin
    of the noisy length explains (between-bin / total sum of squares): near 1, the
    encoder does little more than copy its input."""
    if "bin_n" not in s:
        return float("nan")
    n, s1, s2 = (torch.as_tensor(s[k], dtype=torch.float64) for k in ("bin_n", "bin_s", "bin_ss"))
    total = float(s2.sum() - s1.sum() ** 2 / n.sum())
    within = float((s2 - torch.where(n > 0, s1**2 / n.clamp(min=1), torch.zeros_like(s1))).sum())
    return 1.0 - within / total if total > 0 else float("nan")


class LookupShare(Metric):
    """:func:`lookup_share` of an epoch's validation outputs, as a torchmetrics Metric:
    per bin of the noisy length the count, sum and sum of squares of the outputs,
    summed over batches and DDP ranks."""

    full_state_update = False

    def __init__(self):
        super().__init__()
        for name in ("bin_n", "bin_s", "bin_ss"):
            self.add_state(name, torch.zeros(len(LOOKUP_EDGES) + 1, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, bins: torch.Tensor) -> None:
        p = pred.detach().double()
        self.bin_n += torch.zeros_like(self.bin_n).index_add(0, bins, torch.ones_like(p))
        self.bin_s += torch.zeros_like(self.bin_s).index_add(0, bins, p)
        self.bin_ss += torch.zeros_like(self.bin_ss).index_add(0, bins, p * p)

    def compute(self) -> torch.Tensor:
        share = lookup_share({"bin_n": self.bin_n, "bin_s": self.bin_s, "bin_ss": self.bin_ss})
        return torch.tensor(share, dtype=torch.float64)


class DenoisingModule(HistoryModule):
    """MEGNet encoder + a linear head on the last block's edge features."""

    history_columns = ("train_loss", "train_mae", "val_loss", "val_mae", "val_output_share_lookup", "grad_norm")

    def __init__(
        self,
        sizes: dict,
        cutoff: float,
        sigma: float,
        lr: float,
        val_seed: int = 0,
        history_csv: str | None = None,
        lr_schedule: str = "constant",
        lr_min_factor: float = 0.01,
        max_epochs: int = 1,
    ):
        super().__init__(history_csv)
        self.save_hyperparameters(ignore=["history_csv"])
        self.model = build_megnet(sizes, cutoff)
        # The edge loss never reaches the readout, nor the last block's node and state
        # updates (a MEGNet block updates edges first). Frozen, they get no gradient that
        # DDP would wait for; fine-tuning trains all parameters again.
        last = self.model.blocks[-1].conv
        for module in (
            self.model.node_s2s,
            self.model.edge_s2s,
            self.model.output_proj,
            last.node_func,
            last.state_func,
        ):
            module.requires_grad_(False)
        self.head = nn.Linear(sizes["hidden_layer_sizes_conv"][-1], 1)
        self.train_loss, self.train_mae = epoch_mean(), epoch_mean()
        self.val_loss, self.val_mae = epoch_mean(), epoch_mean()
        self.val_output_share_lookup = LookupShare()
        self.sigma = sigma
        self.lr = lr
        self.val_seed = val_seed
        self.lr_schedule = lr_schedule
        self.lr_min_factor = lr_min_factor
        self.max_epochs = max_epochs

    def forward(self, batch: GraphBatch, pos: torch.Tensor) -> torch.Tensor:
        _, edge, _ = encode(self.model, batch, pos)
        return self.head(edge).squeeze(-1)

    def _step(self, batch: GraphBatch, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        target = denoising_target(batch)
        pred = self(batch, perturb(batch.pos, self.sigma, generator))
        return pred, target

    def training_step(self, batch: GraphBatch, batch_idx: int) -> torch.Tensor:
        gen = training_generator(batch.pos.device, self.val_seed, self.current_epoch, batch_idx, self.global_rank)
        pred, target = self._step(batch, gen)
        loss = nn.functional.mse_loss(pred, target)
        # per edge over the epoch (each edge's error, not the batch means)
        err = pred.detach() - target
        self.train_loss.update(err**2)
        self.train_mae.update(err.abs())
        self.log_dict({"train_loss": self.train_loss, "train_mae": self.train_mae}, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: GraphBatch, batch_idx: int) -> None:
        target = denoising_target(batch)
        shaken = perturb(batch.pos, self.sigma, validation_generator(batch.pos.device, self.val_seed, batch_idx))
        pred = self(batch, shaken)
        err = pred.detach() - target
        # one validation loss, per edge over the whole split: the history column that both
        # the best-checkpoint rule and the selection read
        self.val_loss.update(err**2)
        self.val_mae.update(err.abs())
        # per bin of the noisy length: how much of the output a lookup of it explains
        bins = lookup_bin(standardise_per_graph(edge_lengths(shaken, batch), batch.edge_batch, batch.num_graphs))
        self.val_output_share_lookup.update(pred, bins)
        metrics = {"val_loss": self.val_loss, "val_mae": self.val_mae}
        self.log_dict(metrics | {"val_output_share_lookup": self.val_output_share_lookup}, on_step=False, on_epoch=True)

    def configure_optimizers(self):
        optimizer = torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=self.lr)
        if self.lr_schedule == "constant":
            return optimizer
        # cosine decay to lr * lr_min_factor over the configured epochs, stepped per epoch;
        # Lightning keeps the scheduler's state in every checkpoint, so a resume continues it
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(1, self.max_epochs), eta_min=self.lr * self.lr_min_factor
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "epoch"}}


def pretrain_split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/validation split of the pretraining graphs."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(val_fraction * n)))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def loaders(cache: GraphCache, train: np.ndarray, val: np.ndarray, batch_size: int, seed: int):
    train_list = train.tolist()
    return (
        DataLoader(train_list, batch_size=batch_size, sampler=EpochShuffle(train_list, seed), collate_fn=cache.collate),
        DataLoader(val.tolist(), batch_size=batch_size, shuffle=False, collate_fn=cache.collate),
    )


def run_pretraining(
    graphs: str | Path,
    *,
    history_csv: str | Path,
    split_csv: str | Path,
    ckpt_dir: str | Path,
    reference_json: str | Path | None = None,
    accelerator: str = "auto",
    **settings: Any,
) -> None:
    """Pretrain, resuming from ``ckpt_dir/last.ckpt`` when it belongs to this very job.

    ``settings`` are :class:`cdssl.config.PretrainSettings` (what
    :func:`cdssl.config.pretrain_settings` returns and the rule declares); with the graph
    cache's content digest they form the job's identity. The other arguments are the
    outputs and where to run. ``reference_json`` receives :func:`no_learning_reference`
    on the validation split.
    """
    job = PretrainSettings(**settings)
    L.seed_everything(job.seed, workers=True, verbose=False)
    # memory-mapped: the ranks on a node share one copy of the cache's pages instead of
    # each holding its own (at 132,752 structures, 2.1 GB per rank; docs/scale.md)
    cache = GraphCache.load(graphs, job.cutoff, mmap=True)
    train, val = pretrain_split(len(cache), job.val_fraction, job.seed)
    LOG.info("pretraining on %d graphs, validating on %d (seed %d)", len(train), len(val), job.seed)
    # one writer: with ranks started by srun every rank runs this function, and only
    # rank 0 writes the split, the references and the checkpoint folder's stamp
    rank = rank_zero_only.rank
    identity = job_identity(job.identity(), {"graphs": graphs})
    if rank == 0:
        write_split(cache, train, val, split_csv)
        resume = prepare_checkpoint_dir(ckpt_dir, identity)
    else:
        resume = resume_checkpoint(ckpt_dir, identity)
    module = DenoisingModule(
        megnet_sizes(job.sizes),
        job.cutoff,
        job.sigma,
        job.lr,
        job.seed,
        str(history_csv),
        lr_schedule=job.lr_schedule,
        lr_min_factor=job.lr_min_factor,
        max_epochs=job.epochs,
    )
    train_dl, val_dl = loaders(cache, train, val, job.batch_size, job.seed)
    if reference_json is not None and rank == 0:
        # a DataLoader iterator draws its base seed from the global generator: fork_rng
        # keeps measuring the reference from touching anything training reads
        with torch.random.fork_rng(devices=[]):
            reference = no_learning_reference(val_dl, job.sigma, job.seed)
            reference.update(lookup_references(train_dl, val_dl, job.sigma, job.seed))
        LOG.info(
            "validation loss without learning: noisy distances %.4f, zeros %.4f, lookup of the noisy "
            "length %.4f, per element pair %.4f",
            reference["val_loss_noisy_distances"],
            reference["val_loss_zeros"],
            reference["val_loss_lookup_noisy_length"],
            reference["val_loss_lookup_element_pair"],
        )
        write_json(reference, reference_json)
    trainer = make_trainer(
        job.epochs,
        accelerator,
        [EpochCheckpoint(ckpt_dir, "val_loss", job.patience, job.min_steps, min_delta=job.min_delta, snapshots=True)],
        devices=job.devices,
        strategy=job.strategy,
        nodes=job.nodes,
    )
    start = time.monotonic()
    # weights_only: checkpoints hold tensors and plain types only (the history rows too),
    # so resuming never unpickles code from a checkpoint folder copied from elsewhere
    trainer.fit(module, train_dl, val_dl, ckpt_path=resume, weights_only=True)
    if trainer.is_global_zero and module.history:
        # a rerun that resumes an already finished run trains nothing: write the log anyway
        write_history(module.history, history_csv)
    LOG.info("pretraining finished in %.1f s", time.monotonic() - start)


def write_split(cache: GraphCache, train: np.ndarray, val: np.ndarray, path: str | Path) -> None:
    split = np.array(["train"] * len(cache), dtype=object)
    split[val] = "val"
    with atomic_path(path) as tmp:
        pd.DataFrame({"id": cache.ids, "split": split}).to_csv(tmp, index=False)
