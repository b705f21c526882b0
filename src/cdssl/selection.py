"""Checkpoint selection: the pretrained encoder with the lowest validation loss, exported for MatGL."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from .training import BEST, checked_best
from .utils import LOG, write_json


def select_checkpoint(
    history_csv: str | Path, ckpt_dir: str | Path, selected_json: str | Path, encoder_dir: str | Path
) -> dict:
    """Export ``ckpt_dir/best.ckpt`` after checking it is the best epoch of ``history_csv``.

    Pretraining writes best.ckpt by the same rule (:func:`cdssl.training.best_row` on the
    same history column), so the two can only disagree when the files come from
    different runs; that stops here with the command that makes them agree.
    """
    from .pretrain import DenoisingModule

    history = pd.read_csv(history_csv)
    if history.empty:
        raise ValueError(f"{history_csv} has no epochs")
    ckpt = Path(ckpt_dir) / BEST
    if not ckpt.exists():
        raise FileNotFoundError(f"{ckpt} is missing; rerun pretraining (snakemake --forcerun pretrain ...)")
    # weights_only: a checkpoint copied from elsewhere cannot run code when it is read
    module = DenoisingModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    best = checked_best(history.to_dict("records"), module.history, "val_loss", ckpt)
    epoch = int(best["epoch"])
    encoder_dir = Path(encoder_dir)
    if encoder_dir.exists():
        shutil.rmtree(encoder_dir)
    module.model.save(encoder_dir, metadata={"description": f"CDSSL pretrained MEGNet encoder, epoch {epoch}"})
    record = {
        "epoch": epoch,
        "val_loss": float(best["val_loss"]),
        "train_loss": float(best["train_loss"]),
        "val_mae": float(best["val_mae"]),
        "epochs_trained": int(len(history)),
        # why training ended: the epoch cap, or (with pretrain.patience) a flat loss
        "stop": str(history["stop"].fillna("").iloc[-1]) if "stop" in history else "",
        "first_val_loss": float(history["val_loss"].iloc[0]),
        "checkpoint": str(ckpt),
        "encoder": str(encoder_dir),
        "why": f"lowest validation pretraining loss among {len(history)} epochs",
    }
    write_json(record, selected_json)
    LOG.info("selected epoch %d (val_loss %.4g); encoder exported to %s", epoch, record["val_loss"], encoder_dir)
    return record
