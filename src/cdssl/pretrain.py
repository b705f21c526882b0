"""Denoising pretraining: a MatGL encoder (MEGNet, the paper's, or another backbone) with
a linear edge head on the pretext task (cdssl.pretext), and the resumable run that trains it."""

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

from .config import PretrainSettings, network_sizes
from .graphs import GraphBatch, GraphCache
from .models import build_network, edge_feature_dim, edge_features, pretext_unused
from .pretext import (
    denoising_target,
    edge_lengths,
    perturb,
    standardise_per_graph,
    training_generator,
    validation_generator,
)
from .references import LookupShare, lookup_bin, lookup_references, no_learning_reference
from .training import (
    EpochCheckpoint,
    EpochShuffle,
    HistoryModule,
    epoch_mean,
    job_identity,
    make_trainer,
    prepare_checkpoint_dir,
    resume_checkpoint,
    write_history,
)
from .utils import LOG, atomic_path, write_json


class DenoisingModule(HistoryModule):
    """A MatGL encoder + a linear head on each edge's features (cdssl.models.edge_features)."""

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
        self.model = build_network(sizes, cutoff)
        for module in pretext_unused(self.model):
            module.requires_grad_(False)
        self.head = nn.Linear(edge_feature_dim(self.model), 1)
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
        return self.head(edge_features(self.model, batch, pos)).squeeze(-1)

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
        self.log_epoch({"train_loss": self.train_loss, "train_mae": self.train_mae})
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
        self.log_epoch(metrics | {"val_output_share_lookup": self.val_output_share_lookup})

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


def nested_split(n: int, pool_size: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The train/validation split of a pool of ``pool_size`` of the ``n`` pretraining
    graphs: the first ``pool_size`` of one seeded permutation, position ``i`` of which is
    a validation crystal where ``floor((i + 1) * val_fraction)`` steps up. Both parts of a
    smaller pool are therefore subsets of the same parts of a larger one (same seed), so
    the pool-size axis changes how much data a run trains on and nothing else, and the
    largest pool's validation crystals were never trained on by any smaller pool."""
    if not 2 <= pool_size <= n:
        raise ValueError(f"pretrain.pool_size {pool_size} is outside 2..{n}, the pretraining dataset's {n} graphs")
    order = np.random.default_rng(seed).permutation(n)[:pool_size]
    position = np.arange(pool_size)
    is_val = np.floor((position + 1) * val_fraction) > np.floor(position * val_fraction)
    if not is_val.any() or is_val.all():
        raise ValueError(
            f"pretrain.pool_size {pool_size} at val_fraction {val_fraction} leaves no train or no val graph"
        )
    return np.sort(order[~is_val]), np.sort(order[is_val])


def job_split(n: int, job: PretrainSettings) -> tuple[np.ndarray, np.ndarray]:
    """A pretraining job's train/validation split of its ``n`` graphs: the whole dataset
    (:func:`pretrain_split`) or its pool (:func:`nested_split`)."""
    if job.pool_size is None:
        train, val = pretrain_split(n, job.val_fraction, job.seed)
    else:
        train, val = nested_split(n, job.pool_size, job.val_fraction, job.seed)
    pool = "the whole dataset" if job.pool_size is None else f"a pool of {job.pool_size} of its {n}"
    LOG.info("pretraining on %d graphs, validating on %d (seed %d; %s)", len(train), len(val), job.seed, pool)
    return train, val


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
    train, val = job_split(len(cache), job)
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
        network_sizes(job.sizes),
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
    if resume is not None and cut_to_cap(resume, job.epochs, history_csv if rank == 0 else None):
        return
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


def cut_to_cap(resume: str | Path, epochs: int, history_csv: str | Path | None) -> bool:
    """A run resumed under a lowered ``pretrain.epochs``: when it trained more epochs than
    the cap, write the history a run of ``epochs`` epochs gives and return True (nothing
    to train). Exact: the cap is outside the identity only under a constant learning
    rate, where epoch e does not depend on the cap, so the first ``epochs`` epochs are
    those of the clean shorter run, which ends at its cap (the longer run did not stop
    before it); selection takes their best from the snapshot kept of every new best
    (cdssl.selection). The checkpoints stay: a cap raised again resumes the longer run."""
    history = torch.load(resume, map_location="cpu", weights_only=True).get("cdssl_history", [])
    if len(history) <= epochs:
        return False
    rows = [dict(row) for row in history[:epochs]]
    rows[-1]["stop"] = f"max epochs ({epochs}) reached"
    LOG.info(
        "pretrain.epochs %d is below the %d epochs this run trained: its first %d epochs are the "
        "run a cap of %d gives (constant learning rate), written from its kept history; nothing to train",
        epochs, len(history), epochs, epochs,
    )  # fmt: skip
    if history_csv is not None:
        write_history(rows, history_csv)
    return True


def write_split(cache: GraphCache, train: np.ndarray, val: np.ndarray, path: str | Path) -> None:
    """Every graph of the cache, in its order, as ``train``, ``val`` or (outside a
    smaller pool) ``unused``."""
    split = np.array(["unused"] * len(cache), dtype=object)
    split[train] = "train"
    split[val] = "val"
    with atomic_path(path) as tmp:
        pd.DataFrame({"id": cache.ids, "split": split}).to_csv(tmp, index=False)
