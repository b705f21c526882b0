"""Killed or preempted training resumes from its last checkpoint; DDP runs on the CPU."""

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

RUN = textwrap.dedent(
    """
    import json, sys
    from cdssl.pretrain import run_pretraining
    from cdssl.utils import setup_logging
    setup_logging(sys.argv[3])
    config = json.loads(open(sys.argv[2]).read())
    run_pretraining(sys.argv[1], config, sys.argv[4] + "/history.csv", sys.argv[4] + "/split.csv", sys.argv[4] + "/ckpt")
    """
)


def _start(cache, cfg, log, out):
    return subprocess.Popen([sys.executable, "-c", RUN, str(cache), str(cfg), str(log), str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_pretraining_resumes_after_kill(tmp_path, small_cache_path, config, sig):
    epochs = 5
    config["pretrain"].update(epochs=epochs, batch_size=8)
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(config))
    history = tmp_path / "history.csv"
    proc = _start(small_cache_path, cfg, tmp_path / "first.log", tmp_path)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if history.exists() and len(history.read_text().splitlines()) >= 3:  # header + 2 epochs
            break
        time.sleep(0.05)
    assert proc.poll() is None, "pretraining finished before it could be killed; raise epochs"
    proc.send_signal(sig)
    proc.wait(timeout=120)
    last = tmp_path / "ckpt" / "last.ckpt"
    last_done = torch.load(last, weights_only=False)["epoch"]  # index of the last finished epoch
    assert 0 <= last_done < epochs - 1

    proc = _start(small_cache_path, cfg, tmp_path / "second.log", tmp_path)
    assert proc.wait(timeout=600) == 0
    second = (tmp_path / "second.log").read_text()
    assert "resuming from" in second
    trained = [int(e) for e in re.findall(r"epoch (\d+):", second)]
    assert trained == list(range(last_done + 1, epochs)), "the rerun continues right after the last checkpoint"
    rows = pd.read_csv(history)
    assert rows["epoch"].tolist() == list(range(epochs)), "one log row per epoch, none lost or doubled"


def test_ddp_on_cpu_with_two_processes(tmp_path, small_cache_path, config):
    from cdssl.pretrain import run_pretraining

    config["pretrain"].update(epochs=1, batch_size=8, devices=2, strategy="ddp")
    run_pretraining(small_cache_path, config, tmp_path / "h.csv", tmp_path / "s.csv", tmp_path / "ckpt")
    rows = pd.read_csv(tmp_path / "h.csv")
    assert rows["epoch"].tolist() == [0]
    assert rows[["train_loss", "val_loss", "grad_norm"]].notna().all().all()
    assert (tmp_path / "ckpt" / "last.ckpt").exists()
