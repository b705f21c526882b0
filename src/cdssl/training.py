"""What pretraining and fine-tuning share: per-epoch history, exact resume, trainer setup.

Exact resume rests on three choices:

* the per-epoch history lives in the module and travels inside every checkpoint, so a
  resumed job rewrites its CSV from the checkpoint: no row is lost or doubled;
* nothing random depends on generator state carried between epochs: the shuffle of an
  epoch and the noise of a training batch are pure functions of (seed, epoch, batch),
  so a run resumed at any epoch draws exactly what an uninterrupted run draws;
* ``last.ckpt`` is written at the end of every epoch and ``best.ckpt`` whenever the
  history's own monitored value improves, so a kill loses at most the epoch in progress
  and the selected epoch is always the one on disk.

A checkpoint folder belongs to one job identity (:func:`job_identity`): the job's
declared settings plus content digests of its input files. Any other identity discards it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import platform
import shutil
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import grad_norm
from torch.utils.data import RandomSampler
from torchmetrics import MeanMetric

from .distributed import started_by_srun
from .utils import LOG, atomic_path, file_digest, write_json

FINGERPRINT_FILE = "fingerprint.json"
LAST = "last.ckpt"
BEST = "best.ckpt"
# every epoch that set a new best, weights only: the best of the first k epochs for any k
# (cdssl.selection's budgets), whichever k is asked for after the run
SNAPSHOTS = "best_by_epoch"


def snapshot_path(ckpt_dir: str | Path, epoch: int) -> Path:
    return Path(ckpt_dir) / SNAPSHOTS / f"epoch_{int(epoch):05d}.ckpt"


def epoch_mean() -> MeanMetric:
    """A torchmetrics mean for one history column: float64 sums (the history is read to
    the last digit when epochs are compared), NaN kept (a diverged run must show it),
    summed over DDP ranks by torchmetrics when computed. Update it with every element's
    value, never with weights: with NaNs kept, torchmetrics 1.9 drops the weights."""
    return MeanMetric(nan_strategy="disable").set_dtype(torch.float64)


class HistoryModule(L.LightningModule):
    """A LightningModule whose per-epoch metrics Lightning computes and whose history
    travels inside every checkpoint.

    Subclasses log torchmetrics objects with ``log_dict(..., on_epoch=True)``; Lightning
    computes them over the epoch (synchronised across ranks) and resets them. At the end
    of each training epoch the values of :attr:`history_columns` become one history row,
    which the checkpoint keeps, so a resumed run rewrites history.csv from it.
    """

    history_columns: tuple[str, ...] = ()

    def __init__(self, history_csv: str | None = None):
        super().__init__()
        self.history_csv = history_csv
        self.history: list[dict[str, float]] = []
        self.grad_norm_mean = epoch_mean()
        self._epoch_start = time.monotonic()

    def on_fit_start(self) -> None:
        # one line per rank: a multi-process run shows in the log that every rank started
        t = self.trainer
        LOG.info(
            "training rank %d of %d (node %d, local rank %d) on %s, pid %d",
            t.global_rank,
            t.world_size,
            t.node_rank,
            t.local_rank,
            platform.node(),
            os.getpid(),
        )

    def on_train_epoch_start(self) -> None:
        self._epoch_start = time.monotonic()

    def log_epoch(self, metrics: dict[str, Any]) -> None:
        """Hand the epoch's metrics (torchmetrics, updated by the step) to Lightning, which
        computes them at the epoch's end; outside a Trainer (a benchmark calling the step
        itself) there is nothing to hand them to, and Lightning would warn at every step."""
        if self._trainer is not None:
            self.log_dict(metrics, on_step=False, on_epoch=True)

    def on_before_optimizer_step(self, optimizer) -> None:
        # Lightning's grad_norm: every parameter's 2-norm and their total, before the step
        norms = grad_norm(self, norm_type=2)
        if norms:
            self.grad_norm_mean.update(norms["grad_2.0_norm_total"])
            self.log_epoch({"grad_norm": self.grad_norm_mean})

    def on_train_epoch_end(self) -> None:
        logged = self.trainer.callback_metrics
        row = {"epoch": self.current_epoch}
        # NaN where a loop did not run (e.g. no validation batches)
        row |= {key: float(logged[key]) if key in logged else float("nan") for key in self.history_columns}
        row["epoch_seconds"] = time.monotonic() - self._epoch_start
        self.history.append(row)
        if self.trainer.is_global_zero:
            LOG.info("epoch %d: %s", row["epoch"], ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch"))
            if self.history_csv:
                write_history(self.history, self.history_csv)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["cdssl_history"] = self.history

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.history = list(checkpoint.get("cdssl_history", []))


def best_row(history: list[dict[str, float]], monitor: str) -> dict[str, float]:
    """The first epoch with the lowest ``monitor``: the one rule for "best" everywhere."""
    finite = [row for row in history if math.isfinite(row[monitor])]
    if not finite:
        raise ValueError(f"no epoch has a finite {monitor}")
    return min(finite, key=lambda row: row[monitor])  # min keeps the first of equal values


def checked_best(history: list[dict[str, float]], kept: list[dict[str, float]], monitor: str, ckpt: Path | str) -> dict:
    """The best row of ``history``, after checking that checkpoint ``ckpt`` (whose own
    history is ``kept``) holds that very epoch; files of two different runs stop here."""
    best = best_row(history, monitor)
    if int(kept[-1]["epoch"]) != int(best["epoch"]):
        raise ValueError(
            f"{ckpt} holds epoch {kept[-1]['epoch']} but the lowest {monitor} of the history is at epoch "
            f"{best['epoch']}: they come from different runs; delete {Path(ckpt).parent} and rerun the job "
            f"(snakemake --forcerun <rule> ...)"
        )
    return best


def write_history(rows: list[dict], path: str | Path) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            fields = list(dict.fromkeys(key for row in rows for key in row))  # every key, first-seen order
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)


class EpochShuffle(RandomSampler):
    """A shuffle that is a pure function of (seed, epoch), like DistributedSampler's.

    A RandomSampler draws from a generator whose state would have to be carried across a
    resume; this one needs only the epoch, which Lightning sets on every sampler before
    each epoch (and restores on resume). Being a RandomSampler, Lightning replaces it by a
    shuffling DistributedSampler (also seeded by epoch) when training on several devices.
    """

    def __init__(self, data_source, seed: int):
        super().__init__(data_source)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        yield from torch.randperm(len(self.data_source), generator=gen).tolist()


def step_generator(device: torch.device, *key: int) -> torch.Generator:
    """A generator seeded by ``key`` (e.g. seed, epoch, batch, rank): draws that need no carried state."""
    seed = int.from_bytes(hashlib.sha256(repr(key).encode()).digest()[:8], "little") & (2**63 - 1)
    return torch.Generator(device=device).manual_seed(seed)


# ---------------------------------------------------------------- job identity


def job_identity(settings: Mapping[str, Any], inputs: Mapping[str, str | Path | None]) -> dict[str, Any]:
    """What a job's results are a function of: its settings and the content of its inputs."""
    return {
        "settings": json.loads(json.dumps(dict(settings), sort_keys=True, default=str)),
        "inputs": {name: file_digest(p) for name, p in sorted(inputs.items()) if p is not None},
    }


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(old) | set(new))
    out = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}")
    return out


def resume_checkpoint(ckpt_dir: str | Path, identity: dict[str, Any]) -> str | None:
    """What :func:`prepare_checkpoint_dir` returns, without touching the folder: for ranks
    other than 0, which must not delete or stamp it. Whatever rank 0 is doing meanwhile,
    the answer is the same: last.ckpt only when its stamp already matches, and then rank 0
    keeps it."""
    ckpt_dir = Path(ckpt_dir)
    try:
        old = json.loads((ckpt_dir / FINGERPRINT_FILE).read_text())["identity"]
    except (OSError, ValueError, KeyError):
        return None
    last = ckpt_dir / LAST
    return str(last) if old == identity and last.exists() else None


def prepare_checkpoint_dir(ckpt_dir: str | Path, identity: dict[str, Any]) -> str | None:
    """Return last.ckpt to resume from when it belongs to ``identity``, else start clean.

    Checkpoints written for another identity (other settings, other input content) are
    removed with a log line naming what changed: resuming them would report numbers of
    another experiment.
    """
    ckpt_dir = Path(ckpt_dir)
    stamp = ckpt_dir / FINGERPRINT_FILE
    last = ckpt_dir / LAST
    if ckpt_dir.exists():
        try:
            old = json.loads(stamp.read_text())["identity"] if stamp.exists() else None
        except (ValueError, KeyError):
            old = None
        if old == identity and last.exists():
            LOG.info("resuming from %s: same settings and input content as the job that wrote it", last)
            return str(last)
        if old is None:
            why = "no readable identity stamp"
        elif old != identity:
            why = "changed: " + ", ".join(_differences(old, identity))
        else:
            why = "no finished epoch"
        if any(p.name != FINGERPRINT_FILE for p in ckpt_dir.iterdir()):
            LOG.warning("discarding checkpoints in %s (%s); training from scratch", ckpt_dir, why)
        shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    write_json({"identity": identity}, stamp)
    return None


def last_relative_improvement(history: list[dict], monitor: str, min_delta: float) -> int:
    """The epoch of the last value below ``(1 - min_delta)`` times the one counted before
    it (the first finite value counts); -1 when no value is finite."""
    counted, epoch = math.inf, -1
    for row in history:
        value = row[monitor]
        if math.isfinite(value) and (epoch < 0 or value < counted * (1 - min_delta)):
            counted, epoch = value, int(row["epoch"])
    return epoch


class EpochCheckpoint(Checkpoint):
    """``best.ckpt`` when the history's ``monitor`` improves, then ``last.ckpt``, every epoch;
    and, with ``patience``, early stopping.

    A Checkpoint subclass, so Lightning runs it after the module's on_train_epoch_end
    has appended the epoch's history row. "Best" is decided from that row with
    :func:`best_row`, the same rule checkpoint selection applies to history.csv. best is
    written before last: a kill between the two leaves last one epoch behind, and the
    redone epoch rewrites best with the same bytes.

    Each row also gets ``steps`` (optimizer steps so far) and ``stop``: empty while
    training goes on, else why it ended. The stop is decided from the history alone
    (``patience`` epochs without a new best, once at least ``min_steps`` optimizer steps
    were taken), so a run resumed from its last checkpoint stops where an uninterrupted
    one does, and one resumed after it stopped does not train on.

    With ``min_delta`` above 0 only a best lower than ``(1 - min_delta)`` times the last
    counted one resets the patience: the run stops once the curve is flat to that relative
    tolerance, while ``best.ckpt`` still follows every new lowest value.

    With ``snapshots`` each new best is also kept, weights only, as
    :func:`snapshot_path`: the best encoder of any first k epochs stays on disk.
    """

    def __init__(
        self,
        dirpath: str | Path,
        monitor: str,
        patience: int | None = None,
        min_steps: int = 0,
        min_delta: float = 0.0,
        snapshots: bool = False,
    ):
        super().__init__()
        self.dirpath = Path(dirpath)
        self.snapshots = snapshots
        self.monitor = monitor
        self.patience = patience
        self.min_steps = min_steps
        self.min_delta = min_delta

    def on_train_start(self, trainer: L.Trainer, pl_module: HistoryModule) -> None:
        if not pl_module.history:
            return
        # decided again under this run's cap: a run that ended at its old cap trains on
        # when the cap was raised (its last row then reads as in a run that never
        # stopped there); an early stop stays an early stop
        last = pl_module.history[-1]
        last["stop"] = self.stop_reason(trainer, pl_module.history) if last.get("stop") else ""
        trainer.should_stop = bool(last["stop"])

    def stop_reason(self, trainer: L.Trainer, history: list[dict]) -> str:
        epoch = int(history[-1]["epoch"])
        if self.min_delta > 0:
            best = last_relative_improvement(history, self.monitor, self.min_delta)
            what = f"no {self.monitor} {self.min_delta:.0%} below the last counted best"
        else:
            best = (
                int(best_row(history, self.monitor)["epoch"])
                if any(math.isfinite(r[self.monitor]) for r in history)
                else -1
            )
            what = f"no lower {self.monitor}"
        if self.patience is not None and epoch - best >= self.patience and trainer.global_step >= self.min_steps:
            return f"early stop: {what} for {self.patience} epochs (best epoch {best})"
        if epoch + 1 >= trainer.max_epochs:
            return f"max epochs ({trainer.max_epochs}) reached"
        return ""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: HistoryModule) -> None:
        row = pl_module.history[-1]
        row["steps"] = trainer.global_step
        row["stop"] = self.stop_reason(trainer, pl_module.history)
        if row["stop"]:
            trainer.should_stop = True
            LOG.info("epoch %d: %s", row["epoch"], row["stop"])
        if trainer.is_global_zero and pl_module.history_csv:
            write_history(pl_module.history, pl_module.history_csv)
        if math.isfinite(row[self.monitor]) and best_row(pl_module.history, self.monitor) is row:
            if self.snapshots:
                # before best: a kill in between redoes the epoch and rewrites both
                self._save(trainer, snapshot_path(self.dirpath, row["epoch"]), weights_only=True)
            self._save(trainer, self.dirpath / BEST)
        self._save(trainer, self.dirpath / LAST)

    def _save(self, trainer: L.Trainer, path: Path, weights_only: bool = False) -> None:
        # every rank takes part in save_checkpoint (it synchronises); rank 0 writes, and
        # the rename makes the file appear whole or not at all
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.partial"
        # the whole state (optimizer, loops, callbacks) for best and last: an exact resume
        # needs it; said explicitly, or Lightning logs that it defaulted, twice per epoch
        trainer.save_checkpoint(tmp, weights_only=weights_only)
        if trainer.is_global_zero:
            os.replace(tmp, path)
        trainer.strategy.barrier("cdssl-checkpoint")


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
    nodes: int = 1,
) -> L.Trainer:
    accel = resolve_accelerator(accelerator)
    world = nodes * devices
    plugins = []
    if started_by_srun(nodes, devices):
        # srun started every rank (cdssl.distributed): Lightning's SLURM environment
        # names them; requeueing is left to Snakemake's profile, not to Lightning's
        # signal handler, which would requeue the job behind Snakemake's back
        strategy = "ddp"
        plugins.append(SLURMEnvironment(auto_requeue=False))
    elif accel == "cpu" and strategy == "ddp":
        # forked workers inherit the graph cache; spawn would pickle it through shared
        # memory, which small /dev/shm mounts refuse. GPUs keep Lightning's "ddp".
        strategy = "ddp_fork" if devices > 1 else "auto"
    return L.Trainer(
        max_epochs=max_epochs,
        accelerator=accel,
        devices=devices,
        num_nodes=nodes,
        strategy=strategy,
        plugins=plugins or None,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=sys.stderr.isatty(),
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=deterministic and accel == "cpu",
        use_distributed_sampler=world > 1,
    )
