"""The GRE workflow: QSM and SWI of one subject from its raw multi-echo GRE magnitude and phase."""

from __future__ import annotations

from fileformats.medimage import NiftiGz
from pydra.compose import workflow

from deepmir_tasks.qsm.tasks import ComputeSwi, EstimateField, InvertDipole, ReadMegre, RemoveBackground

__all__ = ["QsmSwiFromGre"]


@workflow.define(outputs=["qsm", "swi", "mask"])
def QsmSwiFromGre(mag_files: list[NiftiGz], phase_files: list[NiftiGz], key: str = "sub-01",
                  phase_units: str = "auto"):
    """QSM (ppm) and SWI on the GRE grid from ``*_part-mag_MEGRE`` / ``*_part-phase_MEGRE`` files.

    Phase to radians (units detected) -> Laplacian unwrapping and weighted multi-echo field fit
    (phase offset removed) -> brain mask from the magnitude -> V-SHARP -> TV-ADMM dipole inversion
    (B0 from the affine) -> QSM; CLEAR-SWI-style SWI from the echoes and the field. The steps are
    the tasks of :mod:`deepmir_tasks.qsm.tasks`; a missing sidecar fact (``EchoTime``,
    ``MagneticFieldStrength``) fails with the file and the key named.
    """
    read = workflow.add(ReadMegre(mag_files=mag_files, phase_files=phase_files, key=key,
                                  phase_units=phase_units), name="read_megre")
    field = workflow.add(EstimateField(magnitude=read.magnitude, phase=read.phase, echo_times_s=read.echo_times_s,
                                       b0_tesla=read.b0_tesla, key=key), name="estimate_field")
    local = workflow.add(RemoveBackground(fieldmap=field.fieldmap, mask_file=field.mask, key=key),
                         name="remove_background")
    chi = workflow.add(InvertDipole(local_field=local.local_field, mask_file=local.qsm_mask, key=key),
                       name="invert_dipole")
    swi = workflow.add(ComputeSwi(magnitude=read.magnitude, fieldmap=field.fieldmap, mask_file=field.mask,
                                  echo_times_s=read.echo_times_s, b0_tesla=read.b0_tesla, key=key),
                       name="compute_swi")
    return chi.qsm, swi.swi, field.mask
