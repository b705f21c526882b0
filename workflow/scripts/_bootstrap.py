"""Shared start of every rule script: import path, rule log, threads.

Snakemake runs a copy of each script from .snakemake/scripts, so the library is found
through ``snakemake.scriptdir`` rather than ``__file__``; this also serves ``--use-conda``
environments, where the package is not pip-installed.
"""

import os
import platform
import sys
from pathlib import Path


def start(smk):
    # scriptdir is workflow/rules/../scripts: resolve the ".." before going up, or the
    # path points into workflow/rules and the installed package is imported instead
    src = Path(smk.scriptdir).resolve().parents[1] / "src"
    if not (src / "cdssl" / "__init__.py").exists():
        raise RuntimeError(f"the checkout's source folder {src} holds no cdssl package")
    sys.path.insert(0, str(src))
    import cdssl
    from cdssl.utils import set_threads, setup_logging

    log = setup_logging(smk.log[0] if smk.log else None)
    set_threads(smk.threads)
    log.info("cdssl from %s", Path(cdssl.__file__).parent)
    log.info("rule %s on %s, %d thread(s), SLURM job %s", smk.rule, platform.node(), smk.threads, slurm_job_id())
    return log


def slurm_job_id():
    """The SLURM job id, or 'none' for a local run; the SLURM test reads it from the logs."""
    return os.environ.get("SLURM_JOB_ID") or os.environ.get("SLURM_JOBID") or "none"
