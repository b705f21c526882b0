"""What pretraining and fine-tuning share: per-epoch history, resume, trainer setup.

The per-epoch history lives in the module and travels inside every Lightning
checkpoint, so a job resumed after SIGKILL or preemption rewrites its CSV from the
checkpoint: the epoch that was interrupted is redone once, no row is lost or doubled.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from .utils import LOG, atomic_path

FINGERPRINT_FILE = "fingerprint.json"


class HistoryModule(L.LightningModule):
    """A LightningModule that sums per-epoch metrics itself and keeps them in checkpoints."""

    history_fields: tuple[str, ...] = ()

    def __init__(self, history_csv: str | None = None):
        super().__init__()
        self.history_csv = history_csv
        self.history: list[dict[str, float]] = []
        self._sums: dict[str, torch.Tensor] = {}
        self._epoch_start = time.monotonic()

    def accumulate(self, **values: torch.Tensor) -> None:
        """Add (sum, count) style values; the caller passes sums, ``n_*`` keys are counts."""
        for key, value in values.items():
            value = value.detach().double().reshape(())
            self._sums[key] = self._sums.get(key, torch.zeros((), dtype=torch.float64, device=value.device)) + value

    def _reduced(self) -> dict[str, float]:
        out = {}
        for key, value in self._sums.items():
            if self.trainer is not None and self.trainer.world_size > 1:
                value = self.trainer.strategy.reduce(value, reduce_op="sum")
            out[key] = float(value)
        return out

    def on_train_epoch_start(self) -> None:
        self._epoch_start = time.monotonic()

    def on_before_optimizer_step(self, optimizer) -> None:
        norms = [p.grad.detach().norm(2) for p in self.parameters() if p.grad is not None]
        if norms:
            self.accumulate(grad_norm=torch.stack(norms).norm(2), n_grad=torch.ones(()))

    def epoch_row(self, sums: dict[str, float]) -> dict[str, float]:
        raise NotImplementedError

    @staticmethod
    def ratio(sums: dict[str, float], key: str, count: str) -> float:
        """sums[key] / sums[count]; NaN when that loop did not run (e.g. no validation)."""
        return sums[key] / sums[count] if sums.get(count) else float("nan")

    def on_train_epoch_end(self) -> None:
        row = {"epoch": self.current_epoch, **self.epoch_row(self._reduced())}
        row["epoch_seconds"] = time.monotonic() - self._epoch_start
        self._sums = {}
        self.history.append(row)
        if self.trainer.is_global_zero:
            LOG.info("epoch %d: %s", row["epoch"], ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch"))
            if self.history_csv:
                write_history(self.history, self.history_csv)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["cdssl_history"] = self.history

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.history = list(checkpoint.get("cdssl_history", []))


def write_history(rows: list[dict], path: str | Path) -> None:
    with atomic_path(path, suffix=".csv") as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


def fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def prepare_checkpoint_dir(ckpt_dir: str | Path, settings: dict) -> str | None:
    """Return last.ckpt to resume from when it belongs to the same settings, else start clean.

    Checkpoints from other settings (another seed, model or data) are removed, because
    resuming them would silently mix two experiments.
    """
    ckpt_dir = Path(ckpt_dir)
    fp = fingerprint(settings)
    stamp = ckpt_dir / FINGERPRINT_FILE
    last = ckpt_dir / "last.ckpt"
    if ckpt_dir.exists():
        old = json.loads(stamp.read_text()).get("fingerprint") if stamp.exists() else None
        if old == fp and last.exists():
            LOG.info("resuming from %s", last)
            return str(last)
        if old != fp and any(ckpt_dir.iterdir()):
            LOG.warning("checkpoints in %s belong to other settings; starting afresh", ckpt_dir)
        shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps({"fingerprint": fp, "settings": settings}, indent=2, default=str))
    return None


def checkpoint_callback(ckpt_dir: str | Path, monitor: str) -> ModelCheckpoint:
    # save_on_train_epoch_end: the module appends the epoch's history row in its own
    # on_train_epoch_end, which Lightning runs before checkpoint callbacks, so the saved
    # checkpoint always holds the row of the epoch its weights belong to.
    return ModelCheckpoint(
        dirpath=str(ckpt_dir),
        filename="epoch={epoch:05d}",
        auto_insert_metric_name=False,
        monitor=monitor,
        mode="min",
        save_top_k=1,
        save_last=True,
        save_on_train_epoch_end=True,
    )


def resolve_accelerator(accelerator: str) -> str:
    if accelerator == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    return accelerator


def make_trainer(
    max_epochs: int,
    accelerator: str,
    callbacks: list,
    devices: int = 1,
    strategy: str = "auto",
    deterministic: bool = True,
) -> L.Trainer:
    accel = resolve_accelerator(accelerator)
    if accel == "cpu" and strategy == "ddp":
        # forked workers inherit the graph cache; spawn would pickle it through shared
        # memory, which small /dev/shm mounts refuse. GPUs keep Lightning's "ddp".
        strategy = "ddp_fork" if devices > 1 else "auto"
    return L.Trainer(
        max_epochs=max_epochs,
        accelerator=accel,
        devices=devices,
        strategy=strategy,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=sys.stderr.isatty(),
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=deterministic and accel == "cpu",
        use_distributed_sampler=devices > 1,
    )
