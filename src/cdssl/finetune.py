"""Fine-tuning: SSL (pretrained encoder, fresh readout) versus SL (MEGNet from scratch)."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from .config import model_kwargs
from .graphs import GraphBatch, GraphCache
from .models import build_megnet, predict, reset_readout
from .training import HistoryModule, checkpoint_callback, make_trainer, prepare_checkpoint_dir, write_history
from .utils import LOG, atomic_path, write_json


def finetune_split(
    n: int, seed: int, fraction: float, test_fraction: float, val_fraction: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, test) indices for one (dataset, seed, fraction).

    One permutation per seed: its head is the test set, then the validation set, so
    both are the same for every fraction; training subsets are prefixes of the rest,
    so the 10% subset lies inside the 20% one, and so on. ``fraction`` is a fraction of
    the whole dataset, as in the paper.
    """
    order = np.random.default_rng(seed).permutation(n)
    n_test = max(1, int(round(test_fraction * n)))
    n_val = max(1, int(round(val_fraction * n)))
    pool = order[n_test + n_val :]
    n_train = min(len(pool), max(1, int(round(fraction * n))))
    return np.sort(pool[:n_train]), np.sort(order[n_test : n_test + n_val]), np.sort(order[:n_test])


class PropertyModule(HistoryModule):
    """MSE on targets standardised with the training subset's mean and std."""

    def __init__(self, model: nn.Module, mean: float, std: float, lr: float, history_csv: str | None = None):
        super().__init__(history_csv)
        self.model = model
        self.lr = lr
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def forward(self, batch: GraphBatch) -> torch.Tensor:
        """Predictions in the target's units."""
        return predict(self.model, batch) * self.std + self.mean

    def training_step(self, batch: GraphBatch, batch_idx: int) -> torch.Tensor:
        pred = predict(self.model, batch)
        loss = nn.functional.mse_loss(pred, (batch.target - self.mean) / self.std)
        n = torch.tensor(float(batch.num_graphs), device=pred.device)
        self.accumulate(
            train_se=loss.detach() * n,
            train_ae=((pred.detach() * self.std + self.mean) - batch.target).abs().sum(),
            n_train=n,
        )
        return loss

    def validation_step(self, batch: GraphBatch, batch_idx: int) -> None:
        err = self(batch) - batch.target
        n = torch.tensor(float(batch.num_graphs), device=err.device)
        self.accumulate(val_ae=err.abs().sum(), n_val=n)
        self.log("val_mae", err.abs().mean(), batch_size=batch.num_graphs, sync_dist=True)

    def epoch_row(self, s: dict[str, float]) -> dict[str, float]:
        return {
            "train_loss": self.ratio(s, "train_se", "n_train"),
            "train_mae": self.ratio(s, "train_ae", "n_train"),
            "val_mae": self.ratio(s, "val_ae", "n_val"),
            "grad_norm": self.ratio(s, "grad_norm", "n_grad"),
        }

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def initial_model(config: dict, mode: str, encoder_dir: str | Path | None):
    """``ssl``: the exported pretrained MEGNet with a fresh readout; ``sl``/``sl_large``: from scratch."""
    cutoff = config["graph"]["cutoff"]
    if mode == "ssl":
        import matgl

        if encoder_dir is None:
            raise ValueError("mode 'ssl' needs the selected pretrained encoder")
        model = matgl.load_model(Path(encoder_dir))
        if abs(model.cutoff - cutoff) > 1e-9:
            raise ValueError(f"encoder {encoder_dir} uses cutoff {model.cutoff}, the config {cutoff}")
        reset_readout(model)
        return model
    return build_megnet(model_kwargs(config, mode), cutoff)


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
    config: dict,
    dataset: str,
    fraction: float,
    seed: int,
    mode: str,
    encoder_dir: str | Path | None,
    metrics_json: str | Path,
    predictions_csv: str | Path,
    history_csv: str | Path,
    ckpt_dir: str | Path,
) -> dict:
    """Train one grid cell; resume from ``ckpt_dir`` when it holds the same settings."""
    fc = config["finetune"]
    start = time.monotonic()
    L.seed_everything(seed, workers=True, verbose=False)
    cache = GraphCache.load(graphs, config["graph"]["cutoff"])
    train, val, test = finetune_split(len(cache), seed, fraction, fc["test_fraction"], fc["val_fraction"])
    y = cache.targets.numpy()
    mean, std = float(y[train].mean()), float(y[train].std())
    std = std if std > 0 else 1.0
    LOG.info(
        "%s fraction=%s seed=%d mode=%s: %d train, %d val, %d test; target mean %.4g std %.4g",
        dataset, fraction, seed, mode, len(train), len(val), len(test), mean, std,
    )
    model = initial_model(config, mode, encoder_dir)
    settings = {
        "graphs": str(graphs), "n_graphs": len(cache), "dataset": dataset, "fraction": fraction,
        "seed": seed, "mode": mode, "encoder": str(encoder_dir) if mode == "ssl" else None,
        **{k: fc[k] for k in ("batch_size", "lr", "test_fraction", "val_fraction")},
    }
    resume = prepare_checkpoint_dir(ckpt_dir, settings)
    module = PropertyModule(model, mean, std, fc["lr"], str(history_csv))
    gen = torch.Generator().manual_seed(seed)
    train_dl = DataLoader(train.tolist(), batch_size=fc["batch_size"], shuffle=True, collate_fn=cache.collate, generator=gen)
    val_dl = DataLoader(val.tolist(), batch_size=fc["batch_size"], collate_fn=cache.collate)
    ckpt = checkpoint_callback(ckpt_dir, "val_mae")
    trainer = make_trainer(fc["epochs"], config["accelerator"], [ckpt])
    trainer.fit(module, train_dl, val_dl, ckpt_path=resume)
    write_history(module.history, history_csv)

    best = torch.load(ckpt.best_model_path, map_location=module.mean.device, weights_only=False)
    module.load_state_dict(best["state_dict"])
    pred = predict_all(module, cache, test, fc["batch_size"])
    truth = y[test]
    best_row = min(module.history, key=lambda r: r["val_mae"])
    metrics = {
        "dataset": dataset,
        "fraction": fraction,
        "seed": seed,
        "mode": mode,
        "n_train": int(len(train)),
        "n_val": int(len(val)),
        "n_test": int(len(test)),
        "test_mae": float(np.abs(pred - truth).mean()),
        "val_mae": float(best_row["val_mae"]),
        "best_epoch": int(best_row["epoch"]),
        "epochs": int(fc["epochs"]),
        "units": config["datasets"][dataset].get("units", ""),
        "wall_seconds": time.monotonic() - start,
        "device": str(trainer.strategy.root_device),
    }
    with atomic_path(predictions_csv, suffix=".csv") as tmp:
        pd.DataFrame({"id": [cache.ids[i] for i in test], "target": truth, "prediction": pred}).to_csv(tmp, index=False)
    write_json(metrics, metrics_json)
    LOG.info("test MAE %.4g %s (best epoch %d)", metrics["test_mae"], metrics["units"], metrics["best_epoch"])
    return metrics
