"""Killed or preempted training resumes exactly; stale checkpoints are never resumed; DDP on the CPU."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest
import torch

from cdssl.config import finetune_settings, pretrain_settings

# A job in its own process, so that it can be killed: argv = function, kwargs json, log file.
RUN = textwrap.dedent(
    """
    import json, sys
    from cdssl.finetune import run_finetune
    from cdssl.pretrain import run_pretraining
    from cdssl.utils import setup_logging
    setup_logging(sys.argv[3])
    {"pretrain": run_pretraining, "finetune": run_finetune}[sys.argv[1]](**json.loads(sys.argv[2]))
    """
)


def _start(kind: str, kwargs: dict, log) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", RUN, kind, json.dumps(kwargs, default=str), str(log)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _run(kind: str, kwargs: dict, log) -> None:
    assert _start(kind, kwargs, log).wait(timeout=600) == 0, log.read_text()


def _kill_after(proc: subprocess.Popen, history, rows: int, sig) -> None:
    """Send ``sig`` once ``history`` holds ``rows`` epochs (header + rows lines)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if history.exists() and len(history.read_text().splitlines()) >= rows + 1:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the job finished before it could be killed; raise epochs"
    proc.send_signal(sig)
    proc.wait(timeout=120)


def _same_history(a, b) -> None:
    """Identical to the bit, apart from wall time."""
    pd.testing.assert_frame_equal(
        pd.read_csv(a).drop(columns="epoch_seconds"), pd.read_csv(b).drop(columns="epoch_seconds"), check_exact=True
    )


def _pretrain_kwargs(config, cache, out) -> dict:
    return {
        "graphs": str(cache),
        **pretrain_settings(config),
        "accelerator": "cpu",
        "history_csv": str(out / "history.csv"),
        "split_csv": str(out / "split.csv"),
        "ckpt_dir": str(out / "ckpt"),
    }


@pytest.mark.slow
@pytest.mark.long
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_pretraining_killed_and_resumed_equals_an_uninterrupted_run(tmp_path, small_cache_path, config, sig):
    epochs = 6
    config["pretrain"].update(epochs=epochs, batch_size=8)
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    _run("pretrain", _pretrain_kwargs(config, small_cache_path, clean), tmp_path / "clean.log")

    kwargs = _pretrain_kwargs(config, small_cache_path, killed)
    _kill_after(_start("pretrain", kwargs, tmp_path / "first.log"), killed / "history.csv", 2, sig)
    last_done = torch.load(killed / "ckpt" / "last.ckpt", weights_only=False)["epoch"]
    assert last_done < epochs - 1
    # a checkpoint at every epoch, improved or not: the kill loses at most the epoch whose
    # history row was written just before its checkpoint
    assert last_done >= len(pd.read_csv(killed / "history.csv")) - 2

    _run("pretrain", kwargs, tmp_path / "second.log")
    second = (tmp_path / "second.log").read_text()
    assert "resuming from" in second
    trained = [int(e) for e in re.findall(r"epoch (\d+): train_loss", second)]
    assert trained == list(range(last_done + 1, epochs)), "the rerun continues right after the last checkpoint"
    _same_history(clean / "history.csv", killed / "history.csv")
    best = [torch.load(d / "ckpt" / "best.ckpt", weights_only=False) for d in (clean, killed)]
    assert best[0]["epoch"] == best[1]["epoch"]
    for key, value in best[0]["state_dict"].items():
        assert torch.equal(value, best[1]["state_dict"][key]), key


@pytest.mark.slow
@pytest.mark.long
@pytest.mark.parametrize("recipe", ["paper", "ssl_recipe"])
def test_finetuning_killed_and_resumed_equals_an_uninterrupted_run(tmp_path, small_cache_path, config, recipe):
    config["finetune"].update(epochs=8, batch_size=4)
    mode, extra = "sl", {}
    if recipe == "ssl_recipe":
        # the optimiser and scheduler state a resume must restore: two groups, AdamW, a
        # plateau schedule that halves the rate mid-run
        from cdssl.models import build_model

        config["finetune"].update(lr_schedule="plateau", weight_decay=0.01, encoder_lr_factor=0.1, lr=3e-3)
        torch.manual_seed(0)
        build_model(config, "ssl").save(tmp_path / "encoder")
        mode, extra = "ssl", {"encoder_dir": str(tmp_path / "encoder")}
    runs = {}
    for name in ("clean", "killed"):
        out = tmp_path / name
        runs[name] = {
            "graphs": str(small_cache_path),
            "dataset": "dielectric",
            "fraction": 0.7,
            "seed": 1,
            "mode": mode,
            **extra,
            **finetune_settings(config, "dielectric", mode),
            "accelerator": "cpu",
            "metrics_json": str(out / "metrics.json"),
            "predictions_csv": str(out / "predictions.csv"),
            "history_csv": str(out / "history.csv"),
            "ckpt_dir": str(out / "ckpt"),
        }
    _run("finetune", runs["clean"], tmp_path / "clean.log")
    killed = tmp_path / "killed"
    _kill_after(_start("finetune", runs["killed"], tmp_path / "first.log"), killed / "history.csv", 3, signal.SIGKILL)
    assert not (killed / "metrics.json").exists()
    _run("finetune", runs["killed"], tmp_path / "second.log")
    assert "resuming from" in (tmp_path / "second.log").read_text()
    _same_history(tmp_path / "clean" / "history.csv", killed / "history.csv")
    a, b = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("clean", "killed"))
    for key in ("test_mae", "val_mae", "best_epoch"):
        assert a[key] == b[key], key
    assert (tmp_path / "clean" / "predictions.csv").read_bytes() == (killed / "predictions.csv").read_bytes()


def test_ddp_on_cpu_with_two_processes(tmp_path, small_cache_path, config):
    from cdssl.pretrain import run_pretraining

    config["pretrain"].update(epochs=1, batch_size=8, devices=2, strategy="ddp")
    run_pretraining(**_pretrain_kwargs(config, small_cache_path, tmp_path))
    rows = pd.read_csv(tmp_path / "history.csv")
    assert rows["epoch"].tolist() == [0]
    assert rows[["train_loss", "val_loss", "grad_norm"]].notna().all().all()
    assert (tmp_path / "ckpt" / "last.ckpt").exists() and (tmp_path / "ckpt" / "best.ckpt").exists()


@pytest.mark.parametrize(
    "change",
    [
        lambda s, i: s.update(epochs=s["epochs"] + 1),
        lambda s, i: s.update(sizes={**s["sizes"], "nblocks": 2}),
        lambda s, i: s.update(lr=s["lr"] * 2),
        lambda s, i: i.write_bytes(i.read_bytes() + b"\0"),
    ],
    ids=["epochs", "model sizes", "lr", "input content"],
)
def test_checkpoints_of_another_identity_are_discarded_with_the_reason(tmp_path, config, change, caplog):
    import logging

    from cdssl.training import job_identity, prepare_checkpoint_dir, resume_checkpoint

    data = tmp_path / "graphs.pt"
    data.write_bytes(b"graphs")
    settings = pretrain_settings(config)
    ckpt = tmp_path / "ckpt"
    assert resume_checkpoint(ckpt, job_identity(settings, {"graphs": data})) is None
    assert prepare_checkpoint_dir(ckpt, job_identity(settings, {"graphs": data})) is None
    (ckpt / "last.ckpt").write_bytes(b"x")
    assert prepare_checkpoint_dir(ckpt, job_identity(settings, {"graphs": data})) == str(ckpt / "last.ckpt")
    # what ranks other than 0 ask: the same answer, and the folder left as it is
    assert resume_checkpoint(ckpt, job_identity(settings, {"graphs": data})) == str(ckpt / "last.ckpt")
    change(settings, data)
    assert resume_checkpoint(ckpt, job_identity(settings, {"graphs": data})) is None
    assert (ckpt / "last.ckpt").exists()
    logging.getLogger("cdssl").propagate = True
    with caplog.at_level(logging.WARNING, logger="cdssl"):
        assert prepare_checkpoint_dir(ckpt, job_identity(settings, {"graphs": data})) is None
    assert not (ckpt / "last.ckpt").exists()
    assert f"discarding checkpoints in {ckpt}" in caplog.text and "changed:" in caplog.text


def test_several_nodes_without_slurm_stop_with_a_clear_error(monkeypatch, tmp_path):
    from cdssl.distributed import needs_srun

    for var in ("SLURM_JOB_ID", "SLURM_JOBID", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(var, raising=False)
    # the decision depends on whether srun is on PATH, which differs between machines
    # (a fresh one has no SLURM): each case below sets PATH itself
    no_srun, with_srun = tmp_path / "empty", tmp_path / "bin"
    no_srun.mkdir()
    with_srun.mkdir()
    (with_srun / "srun").write_text("#!/bin/sh\nexit 1\n")  # only looked up, never run
    (with_srun / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", str(no_srun))
    assert not needs_srun(1, 1) and not needs_srun(1, 2)  # one machine: Lightning forks the ranks
    with pytest.raises(RuntimeError, match="needs a SLURM allocation of 2 nodes"):
        needs_srun(2, 1)
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    with pytest.raises(RuntimeError, match="srun is not on PATH"):
        needs_srun(1, 2)
    monkeypatch.setenv("PATH", str(with_srun))
    assert needs_srun(1, 2) and needs_srun(2, 4)
    # a rank that srun started does not start ranks again
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_NNODES", "2")
    assert not needs_srun(2, 4)


def test_ranks_whose_meeting_node_does_not_resolve_stop_at_once(monkeypatch):
    import socket

    from cdssl.distributed import check_meeting_node

    for var in ("MASTER_ADDR", "SLURM_JOB_NODELIST"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_NODELIST", "localhost")
    check_meeting_node()  # a name that resolves: the ranks go on
    looked_up = []

    def unknown(host, *args, **kwargs):
        looked_up.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    # the lookup fails as on a machine whose name is in neither DNS nor /etc/hosts
    monkeypatch.setattr(socket, "getaddrinfo", unknown)
    monkeypatch.setenv("SLURM_NODELIST", "gpu[07-08]")
    with pytest.raises(RuntimeError, match=r"meet at node 'gpu07'.*cannot resolve that name"):
        check_meeting_node()
    assert looked_up == ["gpu07"]
    # one rank meets nobody, and a MASTER_ADDR the user set is theirs to get right
    monkeypatch.setenv("SLURM_NTASKS", "1")
    check_meeting_node()
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    check_meeting_node()
    assert looked_up == ["gpu07"]
