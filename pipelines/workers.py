"""The local worker: pydra's concurrent-futures worker with processes that start clean.

pydra 1.0a12's ``cf`` worker forks its pool processes (Linux's default start method). A process
forked from a parent that has already run torch (or any OpenMP/ITK thread pool) can deadlock in the
child's first parallel region: the child inherits the parent's locks but not its threads. This was
seen for real: a segmentation job hung for ever in a forked worker after the parent had run torch.
:class:`LocalWorker` starts its processes with ``forkserver`` instead (a clean server process forks
the workers), at the price of importing modules once per worker process.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp

import attrs
from pydra.workers.cf import ConcurrentFuturesWorker


def _pool(n_procs: int) -> cf.ProcessPoolExecutor:
    return cf.ProcessPoolExecutor(n_procs, mp_context=mp.get_context("forkserver"))


@attrs.define
class LocalWorker(ConcurrentFuturesWorker):
    """``cf`` with a ``forkserver`` process pool (see the module docstring)."""

    @classmethod
    def plugin_name(cls) -> str:
        return "cf"

    def __attrs_post_init__(self):
        self.pool.shutdown(wait=False)  # the parent's forking pool, never used (no process started)
        self.pool = _pool(self.n_procs)

    def __setstate__(self, state) -> None:
        super().__setstate__(state)
        self.pool.shutdown(wait=False)
        self.pool = _pool(self.n_procs)
