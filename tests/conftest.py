"""Shared fixtures: small simulated subjects and cohorts with known truth, and the worker matrix.

Plain helper functions and constants (no fixtures) live in the ``helpers`` package beside this file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

# Tests share two cores with whatever else runs: keep every library to one thread unless a test
# says otherwise.
os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
os.environ.setdefault("DEEPMIR_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture
def one_torch_thread():
    """Torch on one thread for the test (small volumes gain nothing from more), restored after."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def small_subject():
    """One small simulated subject (``deepmir_tasks.simulate.SimulatedSubject``), seed 11."""
    from deepmir_tasks.simulate import simulate_subject

    return simulate_subject(11, size="small")


@pytest.fixture(scope="session")
def sim_all_kinds():
    """A small simulated subject with 6 CMBs, 2 iron deposits, 2 calcifications and 3 veins."""
    from deepmir_tasks.simulate import simulate_subject
    from helpers.simulate import ALL_KINDS, SEED_ALL_KINDS

    return simulate_subject(SEED_ALL_KINDS, size="small", lesion_counts=ALL_KINDS)


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory):
    """A BIDS dataset of two small simulated subjects with annotations; returns its folder."""
    from deepmir_tasks.simulate import write_bids_cohort

    root = tmp_path_factory.mktemp("bids_small") / "bids"
    write_bids_cohort(root, 2, seed=101, size="small")
    return root


@pytest.fixture
def copy_cohort(small_cohort, tmp_path):
    """A private, writable copy of :func:`small_cohort` (for tests that break inputs)."""
    dst = tmp_path / "bids"
    shutil.copytree(small_cohort, dst)
    return dst


def _workers():
    params = ["debug", "cf"]
    params.append(pytest.param("slurm", marks=[pytest.mark.slurm, pytest.mark.skipif(
        shutil.which("sbatch") is None, reason="sbatch not on PATH: start scripts/slurm/start_cluster.sh")]))
    return params


@pytest.fixture(params=_workers())
def worker(request):
    """Run a test under each pydra worker: debug, cf and (where sbatch exists) slurm."""
    return request.param


@pytest.fixture(scope="module")
def chromium():
    """The system Chromium for the browser tests, installed with ``scripts/install_chromium.sh``
    when missing; the test is skipped, with the reason, only when that is impossible."""
    for name in ("chromium", "chromium-browser"):
        exe = shutil.which(name)
        if exe:
            return exe
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(["bash", str(root / "scripts" / "install_chromium.sh")], capture_output=True,
                          text=True, timeout=1200)
    exe = shutil.which("chromium")
    if exe is None:
        reason = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["unknown reason"]
        pytest.skip(f"chromium is absent and scripts/install_chromium.sh could not install it: {reason[0]}")
    return exe
