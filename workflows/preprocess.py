"""The preprocessing workflow: one subject's T2w, SWI and QSM into one working grid."""

from __future__ import annotations

from fileformats.generic import File
from fileformats.medimage import NiftiGz
from pydra.compose import workflow

from deepmir_tasks.preprocess.tasks import (CheckInputs, ExtractBrain, MakeGrid, N4BiasCorrect,
                                            NormaliseIntensity, RegisterToT2, RegisterToTemplate,
                                            ResampleToGrid, WritePreprocReport)

__all__ = ["PreprocessSubject"]


@workflow.define(outputs=["t2", "swi", "qsm", "mask", "swi_to_t2", "t2_to_mni", "report"])
def PreprocessSubject(t2: NiftiGz, swi: NiftiGz, qsm: NiftiGz, mask: NiftiGz | None = None,
                      voxel_size: float = 1.0, interpolation: str = "bspline",
                      registration: str = "fast"):
    """Preprocess one subject for DEEPMIR.

    The T2w is N4 bias-corrected (ANTs; fit inside an Otsu head mask) and affinely registered to the
    MNI152 2009a template (Mattes MI, 2 mm); the brain is the template's brain probability carried
    through that affine and refined by T2w intensity (or the user's mask). SWI magnitude is
    registered rigidly to the T2w (Mattes MI, three-level pyramid); QSM reuses that transform when
    it shares the SWI grid. All images are resampled into the T2w space at ``voxel_size`` mm
    isotropic, cropped to the brain plus 8 mm (B-spline for images, linear-thresholded for the
    mask); the SWI is N4-corrected in that grid; T2w and SWI become robust z-scores inside the brain
    (median, IQR/1.349) and QSM stays in ppm, clipped to [-1, 2], 0 outside the brain.
    """
    chk = workflow.add(CheckInputs(t2_file=t2, swi_file=swi, qsm_file=qsm, mask_file=mask))
    t2, swi, qsm, mask = chk.t2_file, chk.swi_file, chk.qsm_file, chk.mask_file  # wait for the checks
    n4_t2 = workflow.add(N4BiasCorrect(in_file=t2), name="n4_t2")
    mni = workflow.add(RegisterToTemplate(t2_file=n4_t2.out_file))
    brain = workflow.add(ExtractBrain(t2_file=n4_t2.out_file, t2_to_mni=mni.t2_to_mni, mask_file=mask))
    reg_swi = workflow.add(RegisterToT2(moving_file=swi, t2_file=n4_t2.out_file, mask_file=brain.mask,
                                        preset=registration), name="reg_swi")
    reg_qsm = workflow.add(RegisterToT2(moving_file=qsm, t2_file=n4_t2.out_file, mask_file=brain.mask,
                                        same_session_file=swi, same_session_transform=reg_swi.transform,
                                        preset=registration), name="reg_qsm")
    grid = workflow.add(MakeGrid(t2_file=n4_t2.out_file, mask_file=brain.mask, voxel_size=voxel_size))
    mask_g = workflow.add(ResampleToGrid(in_file=brain.mask, reference_file=grid.grid,
                                         interpolation="mask"), name="mask_grid")
    t2_g = workflow.add(ResampleToGrid(in_file=n4_t2.out_file, reference_file=grid.grid,
                                       interpolation=interpolation), name="t2_grid")
    swi_g = workflow.add(ResampleToGrid(in_file=swi, reference_file=grid.grid, transform_file=reg_swi.transform,
                                        interpolation=interpolation, mask_file=mask_g.out_file), name="swi_grid")
    qsm_g = workflow.add(ResampleToGrid(in_file=qsm, reference_file=grid.grid, transform_file=reg_qsm.transform,
                                        interpolation=interpolation, mask_file=mask_g.out_file), name="qsm_grid")
    n4_swi = workflow.add(N4BiasCorrect(in_file=swi_g.out_file, mask_file=mask_g.out_file), name="n4_swi")
    t2_n = workflow.add(NormaliseIntensity(in_file=t2_g.out_file, mask_file=mask_g.out_file), name="t2_norm")
    swi_n = workflow.add(NormaliseIntensity(in_file=n4_swi.out_file, mask_file=mask_g.out_file), name="swi_norm")
    qsm_n = workflow.add(NormaliseIntensity(in_file=qsm_g.out_file, mask_file=mask_g.out_file, kind="qsm"),
                         name="qsm_norm")
    rep = workflow.add(WritePreprocReport(checks=chk.report, mask_file=mask_g.out_file, swi_file=swi,
                                          qsm_file=qsm, swi_to_t2=reg_swi.transform,
                                          qsm_to_t2=reg_qsm.transform, t2_to_mni=mni.t2_to_mni))
    return (t2_n.out_file, swi_n.out_file, qsm_n.out_file, mask_g.out_file, reg_swi.transform,
            mni.t2_to_mni, rep.report)
