"""Checkpoint selection: the pretrained encoder with the lowest validation loss, exported for MatGL."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from .training import BEST, LAST, best_row, checked_best, snapshot_path
from .utils import LOG, write_json


def _trained(ckpt_dir: str | Path) -> int:
    """Epochs the run in ``ckpt_dir`` trained (its last checkpoint's history), 0 if none."""
    import torch

    last = Path(ckpt_dir) / LAST
    if not last.exists():
        return 0
    return len(torch.load(last, map_location="cpu", weights_only=True).get("cdssl_history", []))


def select_checkpoint(
    history_csv: str | Path,
    ckpt_dir: str | Path,
    selected_json: str | Path,
    encoder_dir: str | Path,
    budget: int | None = None,
) -> dict:
    """Export ``ckpt_dir/best.ckpt`` after checking it is the best epoch of ``history_csv``.

    Pretraining writes best.ckpt by the same rule (:func:`cdssl.training.best_row` on the
    same history column), so the two can only disagree when the files come from
    different runs; that stops here with the command that makes them agree.

    With ``budget`` k: the best of the first k epochs only, from the snapshot pretraining
    kept when that epoch set a new best (:func:`cdssl.training.snapshot_path`), checked
    against the history cut at k: the encoder a run of k epochs would have selected.
    """
    from .pretrain import DenoisingModule

    history = pd.read_csv(history_csv)
    if history.empty:
        raise ValueError(f"{history_csv} has no epochs")
    trained = len(history)
    if budget is not None:
        history = history[history["epoch"] < budget]
        if history.empty:
            raise ValueError(f"budget {budget}: {history_csv} has no epoch below it")
    rows = history.to_dict("records")
    snapshot = snapshot_path(ckpt_dir, best_row(rows, "val_loss")["epoch"])
    # the whole run's best, or a first-k-epochs best (a budget, or a run whose cap was
    # lowered after it trained on: cdssl.pretrain.cut_to_cap) from its snapshot
    cut = budget is not None or (len(history) < _trained(ckpt_dir) and snapshot.exists())
    ckpt = snapshot if cut else Path(ckpt_dir) / BEST
    if not ckpt.exists():
        why = "" if budget is None else f" (the best of the first {budget} epochs, kept since budgets exist)"
        raise FileNotFoundError(f"{ckpt} is missing{why}; rerun pretraining (snakemake --forcerun pretrain ...)")
    # weights_only: a checkpoint copied from elsewhere cannot run code when it is read
    module = DenoisingModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    best = checked_best(rows, module.history, "val_loss", ckpt)
    epoch = int(best["epoch"])
    encoder_dir = Path(encoder_dir)
    if encoder_dir.exists():
        shutil.rmtree(encoder_dir)
    what = "" if budget is None else f" (budget {budget} epochs)"
    name = type(module.model).__name__
    module.model.save(encoder_dir, metadata={"description": f"CDSSL pretrained {name} encoder, epoch {epoch}{what}"})
    stop = str(history["stop"].fillna("").iloc[-1]) if "stop" in history else ""
    record = {
        "epoch": epoch,
        "val_loss": float(best["val_loss"]),
        "train_loss": float(best["train_loss"]),
        "val_mae": float(best["val_mae"]),
        "epochs_trained": int(len(history)),
        # why training ended: the epoch cap, or (with pretrain.patience) a flat loss
        "stop": stop,
        "first_val_loss": float(history["val_loss"].iloc[0]),
        "checkpoint": str(ckpt),
        "encoder": str(encoder_dir),
        "why": f"lowest validation pretraining loss among {len(history)} epochs",
    }
    if budget is not None:
        # a run that stopped early before k epochs gives its final best to every later budget
        record.update(budget=int(budget), run_epochs=int(trained))
        if len(history) < budget:
            record["why"] += f" (the run ended before {budget}: {stop or 'unknown reason'})"
    write_json(record, selected_json)
    LOG.info("selected epoch %d (val_loss %.4g)%s; encoder to %s", epoch, record["val_loss"], what, encoder_dir)
    return record
