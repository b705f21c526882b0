"""Fine-tuning: SSL (pretrained encoder, fresh readout) versus SL (MEGNet from scratch)."""

from __future__ import annotations

import copy
import math
import shutil
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from .baselines import composition_mae, mean_predictor_mae, split_predictions
from .config import FinetuneSettings
from .graphs import GraphBatch, GraphCache
from .model_files import load_network
from .models import build_network, is_encoder, output_layer, predict, reset_readout
from .splits import finetune_split
from .training import (
    BEST,
    EpochCheckpoint,
    EpochShuffle,
    HistoryModule,
    checked_best,
    epoch_mean,
    job_identity,
    make_trainer,
    prepare_checkpoint_dir,
    write_history,
)
from .utils import LOG, atomic_path, write_json


class PropertyModule(HistoryModule):
    """MSE on targets standardised with the training subset's mean and std."""

    history_columns = ("train_loss", "train_mae", "val_mae", "grad_norm")

    def __init__(
        self,
        model: nn.Module,
        mean: float,
        std: float,
        lr: float,
        history_csv: str | None = None,
        *,
        lr_schedule: str = "constant",
        lr_min_factor: float = 0.01,
        max_epochs: int = 1,
        weight_decay: float = 0.0,
        encoder_lr_factor: float = 1.0,
        freeze_encoder: bool = False,
    ):
        super().__init__(history_csv)
        # the target's scale and the recipe ride in every checkpoint (plain floats and
        # strings: a weights-only load reads them), so the best epoch reloads from its
        # file alone (:func:`load_best`)
        self.save_hyperparameters(ignore=["model", "history_csv"])
        self.model = model
        self.lr = lr
        self.lr_schedule, self.lr_min_factor, self.max_epochs = lr_schedule, lr_min_factor, max_epochs
        self.weight_decay, self.encoder_lr_factor = weight_decay, encoder_lr_factor
        if freeze_encoder:
            for name, param in model.named_parameters():
                if is_encoder(model, name):
                    param.requires_grad_(False)
        # per graph: the loss on standardised targets, the MAE in the target's units
        self.train_loss, self.train_mae, self.val_mae = epoch_mean(), epoch_mean(), epoch_mean()
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def forward(self, batch: GraphBatch) -> torch.Tensor:
        """Predictions in the target's units."""
        return predict(self.model, batch) * self.std + self.mean

    def training_step(self, batch: GraphBatch, batch_idx: int) -> torch.Tensor:
        pred = predict(self.model, batch)
        target = (batch.target - self.mean) / self.std
        loss = nn.functional.mse_loss(pred, target)
        # per graph over the epoch (each graph's error, not the batch means)
        self.train_loss.update((pred.detach() - target) ** 2)
        self.train_mae.update(((pred.detach() * self.std + self.mean) - batch.target).abs())
        self.log_epoch({"train_loss": self.train_loss, "train_mae": self.train_mae})
        return loss

    def validation_step(self, batch: GraphBatch, batch_idx: int) -> None:
        self.val_mae.update((self(batch) - batch.target).abs())
        self.log_epoch({"val_mae": self.val_mae})

    def configure_optimizers(self):
        # with encoder_lr_factor, two groups: the readout at lr, the encoder (pretrained in
        # ssl) at lr * encoder_lr_factor. Otherwise one group in the model's order, as
        # before the option existed, so the optimiser state of older checkpoints resumes
        trainable = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        params: list = [p for _, p in trainable]
        if self.encoder_lr_factor != 1.0:
            encoder = [p for n, p in trainable if is_encoder(self.model, n)]
            readout = [p for n, p in trainable if not is_encoder(self.model, n)]
            params = [{"params": readout, "lr": self.lr}, {"params": encoder, "lr": self.lr * self.encoder_lr_factor}]
        if self.weight_decay > 0:
            optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        else:
            optimizer = torch.optim.Adam(params, lr=self.lr)
        if self.lr_schedule == "cosine":
            # each group decays to the same share of its own rate; stepped per epoch, and
            # Lightning keeps the scheduler's state in every checkpoint, so a resume continues it
            schedule = torch.optim.lr_scheduler.LambdaLR(
                optimizer,
                lambda epoch: (
                    self.lr_min_factor
                    + (1 - self.lr_min_factor)
                    * 0.5
                    * (1 + math.cos(math.pi * min(epoch, self.max_epochs) / self.max_epochs))
                ),
            )
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "epoch"}}
        if self.lr_schedule == "plateau":
            schedule = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer,
                mode="min",
                factor=0.5,
                patience=2,
                min_lr=[group["lr"] * self.lr_min_factor for group in optimizer.param_groups],
            )
            return {
                "optimizer": optimizer,
                "lr_scheduler": {"scheduler": schedule, "monitor": "val_mae", "interval": "epoch"},
            }
        return optimizer


def recipe_of(job: FinetuneSettings, mode: str) -> dict[str, Any]:
    """The optimiser recipe of one run: the encoder's own rate and freezing apply to the
    pretrained encoder (ssl) only; a model from scratch trains every weight at lr."""
    pretrained = mode == "ssl"
    return {
        "lr_schedule": job.lr_schedule,
        "lr_min_factor": job.lr_min_factor,
        "max_epochs": job.epochs,
        "weight_decay": job.weight_decay,
        "encoder_lr_factor": job.encoder_lr_factor if pretrained else 1.0,
        "freeze_encoder": job.freeze_encoder and pretrained,
    }


def initial_model(mode: str, sizes: dict | None, cutoff: float, encoder_dir: str | Path | None):
    """``ssl``: the exported pretrained encoder with a fresh readout; ``sl``/``sl_large``: from scratch."""
    if mode == "ssl":
        if encoder_dir is None:
            raise ValueError("mode 'ssl' needs the selected pretrained encoder")
        # no file of the folder chooses what code runs (cdssl.model_files)
        model = load_network(encoder_dir)
        if abs(model.cutoff - cutoff) > 1e-9:
            raise ValueError(f"encoder {encoder_dir} uses cutoff {model.cutoff}, the config {cutoff}")
        reset_readout(model)
        return model
    if sizes is None:
        raise ValueError(f"mode {mode!r} needs model sizes")
    return build_network(sizes, cutoff)


@torch.no_grad()
def export_model(module: PropertyModule, path: str | Path, info: dict[str, Any]) -> None:
    """The selected epoch's network as a MatGL model folder (``matgl.load_model``) that
    outputs the target itself: the training set's mean and std, which the module applies
    after the network, are folded into the last layer of the output MLP. ``info`` goes
    into model.json's metadata under ``cdssl`` (the target, its transform and the site cap
    that :mod:`cdssl.inference` applies to new crystals)."""
    model = copy.deepcopy(module.model).cpu().float()
    last = output_layer(model)
    std, mean = float(module.std), float(module.mean)
    last.weight.mul_(std)
    last.bias.mul_(std).add_(mean)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    description = f"CDSSL fine-tuned {type(model).__name__}: {info['target']}"
    model.save(tmp, metadata={"description": description, "cdssl": info})
    # whole or absent: a kill mid-export leaves only the hidden partial folder
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)


@torch.no_grad()
def predict_all(module: PropertyModule, cache: GraphCache, indices: np.ndarray, batch_size: int) -> np.ndarray:
    module.eval()
    device = module.mean.device
    out = []
    for start in range(0, len(indices), batch_size):
        batch = cache.collate(indices[start : start + batch_size].tolist()).to(device)
        out.append(module(batch).double().cpu().numpy())
    return np.concatenate(out)


def run_finetune(
    graphs: str | Path,
    *,
    dataset: str,
    fraction: float,
    seed: int,
    mode: str,
    metrics_json: str | Path,
    predictions_csv: str | Path,
    history_csv: str | Path,
    ckpt_dir: str | Path,
    split_csv: str | Path | None = None,
    model_dir: str | Path | None = None,
    encoder_dir: str | Path | None = None,
    sigma: float | None = None,
    pretrain_seed: int | None = None,
    budget: int | None = None,
    accelerator: str = "auto",
    **settings: Any,
) -> dict:
    """Train one grid cell (:func:`train`), then score it (:func:`evaluate`); resume from
    ``ckpt_dir`` when it belongs to this very job.

    The cell is (dataset, fraction, seed, mode); ``settings`` are
    :class:`cdssl.config.FinetuneSettings` (what :func:`cdssl.config.finetune_settings`
    returns and the rule declares). The cell, the settings' identity fields and the
    content digests of the graph cache and (ssl) of the encoder form the job's identity.
    ``sigma`` (the encoder's noise scale), ``pretrain_seed`` (its pretraining run's
    seed, when there are several) and ``budget`` (its pretraining epochs, with
    pretrain.export_epochs) only label results: the encoder's digest already stands for
    them.
    """
    job = FinetuneSettings(**settings)
    cell = {"dataset": dataset, "fraction": fraction, "seed": seed, "mode": mode}
    start = time.monotonic()
    L.seed_everything(seed, workers=True, verbose=False)
    cache = GraphCache.load(graphs, job.cutoff)
    split = finetune_split(len(cache), seed, fraction, job.test_fraction, job.val_fraction)
    module, best, history, device = train(
        cache, split, job, cell, graphs=graphs, encoder_dir=encoder_dir, history_csv=history_csv, ckpt_dir=ckpt_dir,
        accelerator=accelerator,
    )  # fmt: skip
    labels = {"sigma": sigma, "pretrain_seed": pretrain_seed}
    # only with budgets: the metrics of a run without them keep their keys
    labels |= {"budget": int(budget)} if budget is not None else {}
    metrics = evaluate(
        module, cache, split, job, cell | labels, best, history, predictions_csv=predictions_csv, split_csv=split_csv,
        model_dir=model_dir,
    )  # fmt: skip
    metrics |= {"wall_seconds": time.monotonic() - start, "device": device}
    write_json(metrics, metrics_json)
    LOG.info("test MAE %.4g %s (best epoch %d)", metrics["test_mae"], job.units, metrics["best_epoch"])
    return metrics


def train(
    cache: GraphCache,
    split: tuple[np.ndarray, np.ndarray, np.ndarray],
    job: FinetuneSettings,
    cell: dict[str, Any],
    *,
    graphs: str | Path,
    encoder_dir: str | Path | None,
    history_csv: str | Path,
    ckpt_dir: str | Path,
    accelerator: str,
) -> tuple[PropertyModule, dict, list[dict], str]:
    """Fit one cell to its stopping epoch and reload the best one. Returns the module at
    the best epoch, that epoch's history row, the whole history and the device."""
    train_idx, val_idx, test_idx = split
    y = cache.targets.numpy()
    mean, std = float(y[train_idx].mean()), float(y[train_idx].std())
    std = std if std > 0 else 1.0
    LOG.info(
        "%s fraction=%s seed=%d mode=%s: %d train, %d val, %d test; target mean %.4g std %.4g",
        *cell.values(), len(train_idx), len(val_idx), len(test_idx), mean, std,
    )  # fmt: skip
    mode, seed = cell["mode"], cell["seed"]
    model = initial_model(mode, job.sizes, job.cutoff, encoder_dir)
    encoder = encoder_dir if mode == "ssl" else None
    resume = prepare_checkpoint_dir(
        ckpt_dir, job_identity({**cell, **job.identity()}, {"graphs": graphs, "encoder": encoder})
    )
    recipe = recipe_of(job, mode)
    module = PropertyModule(model, mean, std, job.lr, str(history_csv), **recipe)
    train_list = train_idx.tolist()
    train_dl = DataLoader(
        train_list, batch_size=job.batch_size, sampler=EpochShuffle(train_list, seed), collate_fn=cache.collate
    )
    val_dl = DataLoader(val_idx.tolist(), batch_size=job.batch_size, collate_fn=cache.collate)
    trainer = make_trainer(job.epochs, accelerator, [EpochCheckpoint(ckpt_dir, "val_mae", job.patience, job.min_steps)])
    # weights_only: checkpoints hold tensors and plain types only (the history rows too),
    # so resuming never unpickles code from a checkpoint folder copied from elsewhere
    trainer.fit(module, train_dl, val_dl, ckpt_path=resume, weights_only=True)
    history = module.history
    write_history(history, history_csv)
    # the best epoch's weights, through Lightning (the history rides along in the checkpoint)
    best_ckpt = Path(ckpt_dir) / BEST
    module = load_best(module, best_ckpt)
    best = checked_best(history, module.history, "val_mae", best_ckpt)
    return module, best, history, str(trainer.strategy.root_device)


def load_best(module: PropertyModule, best_ckpt: Path) -> PropertyModule:
    """The module of the best epoch, through Lightning: its weights and hyperparameters
    from ``best_ckpt`` (the network itself is ``module``'s, whose weights it overwrites)."""
    load = {"map_location": module.mean.device, "weights_only": True, "model": module.model}
    stored = torch.load(best_ckpt, map_location="cpu", weights_only=True)
    # a checkpoint written before the hyperparameters were stored: the trained module's own
    extra = {} if stored.get(PropertyModule.CHECKPOINT_HYPER_PARAMS_KEY) else dict(module.hparams)
    return PropertyModule.load_from_checkpoint(best_ckpt, **load, **extra)


def evaluate(
    module: PropertyModule,
    cache: GraphCache,
    split: tuple[np.ndarray, np.ndarray, np.ndarray],
    job: FinetuneSettings,
    labels: dict[str, Any],
    best: dict,
    history: list[dict],
    *,
    predictions_csv: str | Path,
    split_csv: str | Path | None = None,
    model_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Score the best epoch on the test set beside the answers without learning; write
    the predictions, the split and the exported model. Returns the metrics (the caller
    adds the wall time and device and writes them)."""
    train_idx, val_idx, test_idx = split
    y = cache.targets.numpy()
    pred = predict_all(module, cache, test_idx, job.batch_size)
    truth = y[test_idx]
    metrics = {
        **labels,
        "n_train": int(len(train_idx)),
        "n_val": int(len(val_idx)),
        "n_test": int(len(test_idx)),
        "test_mae": float(np.abs(pred - truth).mean()),
        "val_mae": float(best["val_mae"]),
        "best_epoch": int(best["epoch"]),
        "epochs": int(job.epochs),
        "last_epoch": int(history[-1]["epoch"]),
        "optimizer_steps": int(history[-1]["steps"]),
        "stop": history[-1]["stop"],
        # the same test set, answered without learning from structure (cdssl.baselines)
        "test_mae_mean_predictor": mean_predictor_mae(y, train_idx, test_idx),
        "test_mae_composition": composition_mae(cache, y, train_idx, val_idx, test_idx),
        # a model whose predictions hardly vary did not learn, whatever its MAE
        # (cdssl.statistics flags it by the ratio of the two)
        "prediction_std": float(pred.std()),
        "target_std": float(truth.std()),
        "units": job.units,
    }
    # the validation rows too: a blend of the cell's models is weighted on them (cdssl.blend)
    val_pred = predict_all(module, cache, val_idx, job.batch_size)
    with atomic_path(predictions_csv) as tmp:
        split_predictions(
            cache.ids, y, {"val": val_idx, "test": test_idx}, {"prediction": np.concatenate([val_pred, pred])}
        ).to_csv(tmp, index=False)
    if split_csv is not None:
        # every crystal's role in this run, so any other model can be scored on the same split
        roles = np.array(["unused"] * len(cache), dtype=object)
        roles[train_idx], roles[val_idx], roles[test_idx] = "train", "val", "test"
        with atomic_path(split_csv) as tmp:
            pd.DataFrame({"id": cache.ids, "split": roles}).to_csv(tmp, index=False)
    if model_dir is not None:
        keys = ("dataset", "fraction", "seed", "mode", "sigma", "pretrain_seed", "budget", "test_mae")
        info = {k: metrics[k] for k in keys if k in metrics}
        info.update(target=job.target, transform=job.transform, units=job.units, max_sites=job.max_sites)
        export_model(module, model_dir, info)
    return metrics


def run_cell(
    graphs: str | Path,
    seeds: list[int],
    *,
    metrics_jsons: list[str],
    predictions_csvs: list[str],
    split_csvs: list[str],
    history_csvs: list[str],
    model_dirs: list[str],
    ckpt_dirs: list[str],
    **kwargs: Any,
) -> list[dict]:
    """Every seed of one (dataset, fraction, mode) cell in turn, each with its own
    outputs (the lists follow ``seeds``): one process pays torch's, Lightning's and
    MatGL's start-up once per cell. ``kwargs`` are :func:`run_finetune`'s."""
    return [
        run_finetune(
            graphs,
            seed=int(seed),
            metrics_json=metrics_jsons[i],
            predictions_csv=predictions_csvs[i],
            split_csv=split_csvs[i],
            history_csv=history_csvs[i],
            model_dir=model_dirs[i],
            ckpt_dir=ckpt_dirs[i],
            **kwargs,
        )  # fmt: skip
        for i, seed in enumerate(seeds)
    ]
