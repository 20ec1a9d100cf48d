"""Pydra task around :func:`~deepmir_tasks.simulate.bids.write_subject`: one simulated subject."""

from __future__ import annotations

from pathlib import Path

from fileformats.generic import File
from fileformats.medimage import NiftiGz
from pydra.compose import python

from deepmir_tasks import __version__

__all__ = ["SimulateSubject"]


@python.define
class SimulateSubject(python.Task["SimulateSubject.Outputs"]):
    """Simulate one subject and write it in the BIDS layout of ``write_bids_cohort``.

    Args:
        seed: simulator seed (same seed, same images)
        size: "full" or "small"
        label: participant label without 'sub-'
        n_cmb_min: lowest number of microbleeds (with n_cmb_max; both None = simulator default)
        n_cmb_max: highest number of microbleeds
        profile: one of ``subject.PROFILES`` ("default", "randomised", ...; see ``simulate_subject``)
        version: package version, so that a new release is a new cache entry
    """

    seed: int
    size: str = "full"
    label: str = "01"
    n_cmb_min: int | None = None
    n_cmb_max: int | None = None
    profile: str = "default"
    version: str = __version__

    class Outputs(python.Outputs):
        t2: NiftiGz
        swi: NiftiGz
        qsm: NiftiGz
        dseg: NiftiGz
        mask: NiftiGz
        lesions: File
        xfm: File

    @staticmethod
    def function(seed, size, label, n_cmb_min, n_cmb_max, profile, version):
        from deepmir_tasks.simulate.bids import write_subject
        from deepmir_tasks.simulate.subject import simulate_subject

        counts = None
        if n_cmb_min is not None or n_cmb_max is not None:
            lo = n_cmb_min if n_cmb_min is not None else n_cmb_max
            counts = {"cmb": (lo, n_cmb_max if n_cmb_max is not None else lo)}
        subject = simulate_subject(seed, size, lesion_counts=counts, profile=profile)
        out = write_subject(subject, Path.cwd() / "bids", label)
        return out["t2"], out["swi"], out["qsm"], out["dseg"], out["mask"], out["lesions"], out["xfm"]
