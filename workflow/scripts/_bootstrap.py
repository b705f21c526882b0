"""Shared start of every rule script: import path, rule log, threads, a quiet console.

A rule script is its docstring, ``start(snakemake)``, the import of its library function
and one call to it (plus :func:`finish` with the job's key number). Snakemake runs a copy
of each script from .snakemake/scripts and appends the script's own folder to
``sys.path`` (so ``from _bootstrap import start`` works); the library is found through
``snakemake.scriptdir`` rather than ``__file__``, which also serves ``--use-conda``
environments, where the package is not pip-installed. An exception needs no handler in
the script: with a log, the traceback goes to the log and the console (below).

The console belongs to Snakemake's progress: a job with a ``log:`` sends everything it
prints (Lightning's banners, library warnings, our own log lines) to that file, and
writes one line to the console when it ends: what ran, how long, and the key number the
script gave to :func:`finish`. A failing job still prints its traceback to the console
in full, and to the log.
"""

import atexit
import os
import platform
import sys
import time
import traceback
from pathlib import Path

_job = {"failed": False, "summary": ""}


def start(smk):
    # scriptdir is workflow/rules/../scripts: resolve the ".." before going up, or the
    # path points into workflow/rules and the installed package is imported instead
    src = Path(smk.scriptdir).resolve().parents[1] / "src"
    if not (src / "cdssl" / "__init__.py").exists():
        raise RuntimeError(f"the checkout's source folder {src} holds no cdssl package")
    sys.path.insert(0, str(src))
    import cdssl
    from cdssl.utils import set_threads, setup_logging

    if smk.log:
        _quiet(smk, smk.log[0])
    log = setup_logging(smk.log[0] if smk.log else None, console=not smk.log)
    set_threads(smk.threads)
    log.info("cdssl from %s", Path(cdssl.__file__).parent)
    log.info("rule %s on %s, %d thread(s), SLURM job %s", smk.rule, platform.node(), smk.threads, slurm_job_id())
    return log


def finish(summary: str) -> None:
    """The key number of this job, for its one console line."""
    _job["summary"] = summary


def _quiet(smk, log_path: str) -> None:
    """Point this process's stdout and stderr (file descriptors, so C libraries and child
    processes follow) at the log; keep the console for one line at the end, or the error."""
    sys.stdout.flush()
    sys.stderr.flush()
    console = os.fdopen(os.dup(2), "w", buffering=1)
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    began = time.monotonic()
    wildcards = ", ".join(f"{k}={v}" for k, v in smk.wildcards.items())
    what = f"{smk.rule}" + (f" ({wildcards})" if wildcards else "")

    def on_error(kind, value, tb):
        _job["failed"] = True
        text = "".join(traceback.format_exception(kind, value, tb))
        sys.stderr.write(text)
        console.write(f"{what} failed; log: {log_path}\n{text}")

    def on_exit():
        if not _job["failed"]:
            summary = f": {_job['summary']}" if _job["summary"] else ""
            console.write(f"{what} done in {time.monotonic() - began:.0f} s{summary}\n")

    sys.excepthook = on_error
    atexit.register(on_exit)


def slurm_job_id():
    """The SLURM job id, or 'none' for a local run; the SLURM test reads it from the logs."""
    return os.environ.get("SLURM_JOB_ID") or os.environ.get("SLURM_JOBID") or "none"
