"""How many threads a step may use.

Thread counts must not be task inputs: pydra hashes every input, so a different ``--n-procs``
would turn a finished subject into a cache miss. Steps read the count from the environment
instead: ``DEEPMIR_THREADS`` (set by the cohort runner), else ``SLURM_CPUS_PER_TASK``, else all
cores.
"""

from __future__ import annotations

import os


def n_threads() -> int:
    for var in ("DEEPMIR_THREADS", "SLURM_CPUS_PER_TASK"):
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return os.cpu_count() or 1


def apply_thread_limits(threads: int | None = None) -> int:
    """Set torch's and ITK's thread counts (ITK reads its variable when ANTs starts)."""
    threads = threads or n_threads()
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(threads)
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return threads
