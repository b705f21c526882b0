"""CDSSL pretext task: recover each edge's original length from a shaken crystal."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from .config import megnet_sizes
from .graphs import GraphBatch, GraphCache
from .models import build_megnet, encode
from .training import (
    EpochCheckpoint,
    EpochShuffle,
    HistoryModule,
    job_identity,
    make_trainer,
    prepare_checkpoint_dir,
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


class DenoisingModule(HistoryModule):
    """MEGNet encoder + a linear head on the last block's edge features."""

    def __init__(
        self,
        sizes: dict,
        cutoff: float,
        sigma: float,
        lr: float,
        val_seed: int = 0,
        history_csv: str | None = None,
    ):
        super().__init__(history_csv)
        self.save_hyperparameters(ignore=["history_csv"])
        self.model = build_megnet(sizes, cutoff)
        # The edge loss never reaches the readout, nor the last block's node and state
        # updates (a MEGNet block updates edges first). Frozen, they get no gradient that
        # DDP would wait for; fine-tuning trains all parameters again.
        last = self.model.blocks[-1].conv
        for module in (self.model.node_s2s, self.model.edge_s2s, self.model.output_proj, last.node_func, last.state_func):
            module.requires_grad_(False)
        self.head = nn.Linear(sizes["hidden_layer_sizes_conv"][-1], 1)
        self.sigma = sigma
        self.lr = lr
        self.val_seed = val_seed

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
        n = torch.tensor(float(target.numel()), device=pred.device)
        self.accumulate(
            train_se=loss.detach() * n, train_ae=(pred - target).abs().sum(), n_train=n
        )
        return loss

    def validation_step(self, batch: GraphBatch, batch_idx: int) -> None:
        pred, target = self._step(batch, validation_generator(batch.pos.device, self.val_seed, batch_idx))
        err = pred - target
        n = torch.tensor(float(target.numel()), device=pred.device)
        # one validation loss, per edge over the whole split: the history column that both
        # the best-checkpoint rule and the selection read
        self.accumulate(val_se=(err**2).sum(), val_ae=err.abs().sum(), n_val=n)

    def epoch_row(self, s: dict[str, float]) -> dict[str, float]:
        return {
            "train_loss": self.ratio(s, "train_se", "n_train"),
            "train_mae": self.ratio(s, "train_ae", "n_train"),
            "val_loss": self.ratio(s, "val_se", "n_val"),
            "val_mae": self.ratio(s, "val_ae", "n_val"),
            "grad_norm": self.ratio(s, "grad_norm", "n_grad"),
        }

    def configure_optimizers(self):
        return torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=self.lr)


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
    sizes: dict,
    cutoff: float,
    sigma: float,
    epochs: int,
    batch_size: int,
    lr: float,
    val_fraction: float,
    seed: int,
    history_csv: str | Path,
    split_csv: str | Path,
    ckpt_dir: str | Path,
    reference_json: str | Path | None = None,
    devices: int = 1,
    strategy: str = "auto",
    accelerator: str = "auto",
) -> None:
    """Pretrain, resuming from ``ckpt_dir/last.ckpt`` when it belongs to this very job.

    The keyword arguments are :func:`cdssl.config.pretrain_settings` (plus the outputs and
    where to run); they and the graph cache's content digest form the job's identity.
    ``reference_json`` receives :func:`no_learning_reference` on the validation split.
    """
    settings = dict(sizes=sizes, cutoff=cutoff, sigma=sigma, epochs=epochs, batch_size=batch_size, lr=lr,
                    val_fraction=val_fraction, seed=seed, devices=devices, strategy=strategy)
    L.seed_everything(seed, workers=True, verbose=False)
    cache = GraphCache.load(graphs, cutoff)
    train, val = pretrain_split(len(cache), val_fraction, seed)
    LOG.info("pretraining on %d graphs, validating on %d (seed %d)", len(train), len(val), seed)
    write_split(cache, train, val, split_csv)
    resume = prepare_checkpoint_dir(ckpt_dir, job_identity(settings, {"graphs": graphs}))
    module = DenoisingModule(megnet_sizes(sizes), cutoff, sigma, lr, seed, str(history_csv))
    train_dl, val_dl = loaders(cache, train, val, batch_size, seed)
    if reference_json is not None:
        # a DataLoader iterator draws its base seed from the global generator: fork_rng
        # keeps measuring the reference from touching anything training reads
        with torch.random.fork_rng(devices=[]):
            reference = no_learning_reference(val_dl, sigma, seed)
        LOG.info("validation loss without learning: noisy distances %.4f, zeros %.4f",
                 reference["val_loss_noisy_distances"], reference["val_loss_zeros"])
        write_json(reference, reference_json)
    trainer = make_trainer(epochs, accelerator, [EpochCheckpoint(ckpt_dir, "val_loss")],
                           devices=devices, strategy=strategy)
    start = time.monotonic()
    trainer.fit(module, train_dl, val_dl, ckpt_path=resume)
    if trainer.is_global_zero and module.history:
        # a rerun that resumes an already finished run trains nothing: write the log anyway
        write_history(module.history, history_csv)
    LOG.info("pretraining finished in %.1f s", time.monotonic() - start)


def write_split(cache: GraphCache, train: np.ndarray, val: np.ndarray, path: str | Path) -> None:
    split = np.array(["train"] * len(cache), dtype=object)
    split[val] = "val"
    with atomic_path(path, suffix=".csv") as tmp:
        pd.DataFrame({"id": cache.ids, "split": split}).to_csv(tmp, index=False)
