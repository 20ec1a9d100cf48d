"""How many threads a step may use: one path, from the cohort runner to every step.

Thread counts must not be task inputs: pydra hashes every input, so a different ``--n-procs``
would turn a finished subject into a cache miss. The cohort runner sets the count once
(:func:`set_subject_threads`, into ``DEEPMIR_THREADS``); every step reads it with
:func:`n_threads` (else ``SLURM_CPUS_PER_TASK``, else all cores).
"""

from __future__ import annotations

import os


def n_threads() -> int:
    for var in ("DEEPMIR_THREADS", "SLURM_CPUS_PER_TASK"):
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return os.cpu_count() or 1


def set_subject_threads(n_procs: int, side_by_side: int = 1) -> int:
    """Share ``n_procs`` cores between ``side_by_side`` subjects; set and return the count per subject."""
    threads = max(1, n_procs // max(1, min(side_by_side, n_procs)))
    os.environ["DEEPMIR_THREADS"] = str(threads)
    return threads
