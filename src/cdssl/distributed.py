"""Starting and naming the ranks of a multi-process training: srun under SLURM, one process otherwise.

Under SLURM a job of ``nodes x devices`` ranks is one allocation; the rule's process
starts the ranks itself with ``srun`` (one task per device, ``--ntasks-per-node`` as
Lightning's SLURM environment expects), each rank running :func:`main` on a JSON spec
that names the library function and its keyword arguments. Lightning then reads each
rank's place from SLURM's variables (``SLURM_PROCID``, ``SLURM_LOCALID``,
``SLURM_NODELIST``) and joins them with NCCL on GPUs or gloo on CPUs.

    python -m cdssl.distributed spec.json     # what srun runs on every rank
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from .utils import LOG, set_threads, setup_logging, write_json


def world_size(nodes: int, devices: int) -> int:
    return int(nodes) * int(devices)


def in_slurm_allocation() -> bool:
    return bool(os.environ.get("SLURM_JOB_ID") or os.environ.get("SLURM_JOBID"))


def started_by_srun(nodes: int, devices: int) -> bool:
    """True in a rank that srun started as one of exactly ``nodes x devices`` tasks."""
    return (
        "SLURM_PROCID" in os.environ
        and int(os.environ.get("SLURM_NTASKS", "1")) == world_size(nodes, devices) > 1
        and int(os.environ.get("SLURM_NNODES", nodes)) == int(nodes)
    )


def needs_srun(nodes: int, devices: int) -> bool:
    """Whether this process must start the ranks with srun before training.

    Several ranks inside a SLURM allocation: srun starts them (unless this process is
    already one of them). Several nodes outside SLURM cannot work; several devices on one
    machine without SLURM are forked by Lightning instead (see training.make_trainer).
    """
    if world_size(nodes, devices) <= 1 or started_by_srun(nodes, devices):
        return False
    if in_slurm_allocation():
        if shutil.which("srun") is None:
            raise RuntimeError("inside a SLURM allocation but srun is not on PATH: cannot start the ranks")
        return True
    if int(nodes) > 1:
        raise RuntimeError(
            f"pretrain.nodes={nodes} needs a SLURM allocation of {nodes} nodes: run the workflow with "
            "--profile profiles/slurm (docs/scale.md), or set pretrain.nodes: 1"
        )
    return False


def rank_line() -> str:
    """Where this process sits: global rank, world size, node and local rank, host, SLURM job and step."""
    env = os.environ
    rank = env.get("SLURM_PROCID", env.get("RANK", "0"))
    world = env.get("SLURM_NTASKS", env.get("WORLD_SIZE", "1"))
    node = env.get("SLURM_NODEID", env.get("NODE_RANK", "0"))
    local = env.get("SLURM_LOCALID", env.get("LOCAL_RANK", "0"))
    job = env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID") or "none"
    step = env.get("SLURM_STEP_ID", "none")
    return (
        f"rank {rank} of {world} (node {node}, local rank {local}) on {platform.node()}, pid {os.getpid()}, "
        f"SLURM job {job} step {step}"
    )


def srun_command(nodes: int, devices: int, cpus_per_rank: int, spec: str | Path) -> list[str]:
    """srun for one step of ``nodes x devices`` tasks, each running :func:`main` on ``spec``.

    Explicit geometry, since the Snakemake job step removes the allocation's SLURM_*
    variables; ``--kill-on-bad-exit`` ends every rank when one fails, or the others would
    wait forever in a collective; ``--export=ALL`` passes the import path on.
    """
    return [
        "srun",
        f"--nodes={int(nodes)}",
        f"--ntasks-per-node={int(devices)}",
        f"--ntasks={world_size(nodes, devices)}",
        f"--cpus-per-task={max(1, int(cpus_per_rank))}",
        "--kill-on-bad-exit=1",
        "--export=ALL",
        sys.executable,
        "-m",
        "cdssl.distributed",
        str(spec),
    ]


def launch(
    target: str,
    kwargs: dict[str, Any],
    *,
    nodes: int,
    devices: int,
    cpus_per_rank: int,
    spec_path: str | Path,
    log_path: str | Path | None,
) -> None:
    """Run ``target(**kwargs)`` on ``nodes x devices`` ranks started by srun and wait for them all.

    ``target`` is ``"module:function"``; ``kwargs`` must be JSON (paths are written as strings). Each
    rank appends to ``log_path``, the rule's log, with its rank in the first line.
    """
    spec = {"target": target, "kwargs": kwargs, "log": str(log_path) if log_path else None, "threads": cpus_per_rank}
    write_json(spec, spec_path)
    env = dict(os.environ)
    # the ranks import this very checkout, as the rule script does
    src = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    cmd = srun_command(nodes, devices, cpus_per_rank, spec_path)
    LOG.info("starting %d ranks: %s", world_size(nodes, devices), " ".join(cmd))
    # flush our handlers: the ranks append to the same log file
    for handler in LOG.handlers:
        handler.flush()
    proc = subprocess.run(cmd, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"srun ranks of {target} exited with status {proc.returncode}; each rank's lines are above")
    LOG.info("all %d ranks finished", world_size(nodes, devices))


def check_meeting_node() -> None:
    """Stop at once when the ranks' meeting node does not resolve here.

    Lightning's SLURM environment has every rank meet at the first node of
    ``SLURM_NODELIST``; a name this machine cannot look up leaves the ranks retrying until
    torch's rendezvous gives up (30 minutes), with nothing in the log but socket warnings.
    """
    nodelist = os.environ.get("SLURM_NODELIST") or os.environ.get("SLURM_JOB_NODELIST")
    if not nodelist or os.environ.get("MASTER_ADDR") or int(os.environ.get("SLURM_NTASKS", "1")) < 2:
        return
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    node = SLURMEnvironment.resolve_root_node_address(nodelist)
    try:
        socket.getaddrinfo(node, None)
    except socket.gaierror as err:
        raise RuntimeError(
            f"the ranks meet at node {node!r}, the first of SLURM_NODELIST={nodelist}, but {platform.node()} "
            f"cannot resolve that name ({err}); give the node a DNS or /etc/hosts entry"
        ) from err


def _function(target: str):
    module_name, func_name = target.split(":")
    return getattr(importlib.import_module(module_name), func_name)


def run_ranks(target: str, kwargs: dict[str, Any], **launch_args: Any) -> None:
    """``target(**kwargs)``: here, or, where the run needs ranks this process must start
    (:func:`needs_srun`), on every rank through :func:`launch`, whose keywords
    ``launch_args`` are (nodes, devices, cpus_per_rank, spec_path, log_path)."""
    if needs_srun(launch_args["nodes"], launch_args["devices"]):
        launch(target, kwargs, **launch_args)
    else:
        _function(target)(**kwargs)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit("usage: python -m cdssl.distributed SPEC.json")
    spec = json.loads(Path(argv[0]).read_text())
    log = setup_logging(spec.get("log"))
    set_threads(spec.get("threads", 1))
    log.info("%s", rank_line())
    try:
        check_meeting_node()
        _function(spec["target"])(**spec["kwargs"])
    except Exception:
        log.exception("%s failed on %s", spec["target"], rank_line())
        raise


if __name__ == "__main__":
    main()
