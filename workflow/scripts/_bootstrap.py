"""Shared start of every rule script: import path, rule log, threads.

Snakemake runs a copy of each script from .snakemake/scripts, so the library is found
through ``snakemake.scriptdir`` rather than ``__file__``; this also serves ``--use-conda``
environments, where the package is not pip-installed.
"""

import sys
from pathlib import Path


def start(smk):
    sys.path.insert(0, str(Path(smk.scriptdir).parents[1] / "src"))
    from cdssl.utils import set_threads, setup_logging

    log = setup_logging(smk.log[0] if smk.log else None)
    set_threads(smk.threads)
    return log
