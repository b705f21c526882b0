"""Checkpoint selection: the pretrained encoder with the lowest validation loss, exported for MatGL."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import torch

from .config import model_kwargs
from .models import build_megnet
from .utils import LOG, write_json


def select_checkpoint(
    history_csv: str | Path, ckpt_dir: str | Path, config: dict, selected_json: str | Path, encoder_dir: str | Path
) -> dict:
    history = pd.read_csv(history_csv)
    if history.empty:
        raise ValueError(f"{history_csv} has no epochs")
    best = history.loc[history["val_loss"].idxmin()]
    epoch = int(best["epoch"])
    ckpt = Path(ckpt_dir) / f"epoch={epoch:05d}.ckpt"
    if not ckpt.exists():
        raise FileNotFoundError(
            f"the best epoch by validation loss is {epoch}, but {ckpt} is missing; "
            f"rerun pretraining (snakemake --forcerun pretrain)"
        )
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    model = build_megnet(model_kwargs(config, "ssl"), config["graph"]["cutoff"])
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    encoder_dir = Path(encoder_dir)
    if encoder_dir.exists():
        shutil.rmtree(encoder_dir)
    model.save(encoder_dir, metadata={"description": f"CDSSL pretrained MEGNet encoder, epoch {epoch}"})
    record = {
        "epoch": epoch,
        "val_loss": float(best["val_loss"]),
        "train_loss": float(best["train_loss"]),
        "val_mae": float(best["val_mae"]),
        "epochs_trained": int(len(history)),
        "first_val_loss": float(history["val_loss"].iloc[0]),
        "checkpoint": str(ckpt),
        "encoder": str(encoder_dir),
        "why": f"lowest validation pretraining loss among {len(history)} epochs",
    }
    write_json(record, selected_json)
    LOG.info("selected epoch %d (val_loss %.4g); encoder exported to %s", epoch, record["val_loss"], encoder_dir)
    return record
