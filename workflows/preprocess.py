"""The preprocessing workflow: one subject's T2w, SWI and QSM into one working grid.

:func:`PreprocessSubject` is the one graph of the steps; :func:`preprocess_subject` runs that same
graph for one subject in this process (training, the nipype interface, notebooks) and copies its
outputs out under BIDS-derivative names.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from fileformats.medimage import NiftiGz
from pydra.compose import workflow
from pydra.workers.debug import DebugWorker

from deepmir_tasks.preprocess.tasks import (CheckInputs, ExtractBrain, MakeGrid, N4BiasCorrect,
                                            NormaliseIntensity, RegisterToT2, RegisterToTemplate,
                                            ResampleToGrid, WritePreprocReport)

__all__ = ["PreprocessSubject", "preprocess_subject"]


@workflow.define(outputs=["t2", "swi", "qsm", "mask", "swi_to_t2", "t2_to_mni", "report"])
def PreprocessSubject(t2: NiftiGz, swi: NiftiGz, qsm: NiftiGz | None = None, mask: NiftiGz | None = None,
                      voxel_size: float = 1.0, interpolation: str = "bspline",
                      registration: str = "fast", margin_mm: float = 8.0, qsm_units: str = "auto",
                      allow_resolution: bool = False):
    """Preprocess one subject for DEEPMIR.

    The inputs are checked first (:mod:`deepmir_tasks.preprocess.checks`): a QSM that is not in ppm
    fails unless ``qsm_units`` says how to take it ("ppm": as it is, "ppb": divided by 1000), and a
    resolution outside the supported range fails unless ``allow_resolution``.

    The T2w is N4 bias-corrected (ANTs; fit inside an Otsu head mask) and affinely registered to the
    MNI152 2009a template (Mattes MI, 2 mm); the brain is the template's brain probability carried
    through that affine and refined by T2w intensity (or the user's mask). SWI magnitude is
    registered rigidly to the T2w (Mattes MI, three-level pyramid) and the result checked (a
    header flipped or rotated against the T2w's fails the subject, the SWI named); QSM reuses that
    transform when it lies in the SWI's scanner space (its grid, or its own grid over the same
    place). All images are resampled into the T2w space at ``voxel_size`` mm isotropic, cropped to the brain plus ``margin_mm`` (B-spline for images, linear-thresholded for
    the mask); the SWI is N4-corrected in that grid; T2w and SWI become robust z-scores inside the
    brain (median, IQR/1.349) and QSM stays in ppm, clipped to [-1, 2], 0 outside the brain.
    Without a QSM (``qsm=None``: a T2w + SWI subject) the QSM steps are left out and the ``qsm``
    output is None.
    """
    has_qsm = qsm is not None  # a T2w + SWI subject has no QSM branch (its qsm output is None)
    chk = workflow.add(CheckInputs(t2_file=t2, swi_file=swi, qsm_file=qsm, mask_file=mask, qsm_units=qsm_units,
                                   allow_resolution=allow_resolution), name="check_inputs")
    t2, swi, qsm, mask = chk.t2_file, chk.swi_file, chk.qsm_file, chk.mask_file  # wait for the checks
    n4_t2 = workflow.add(N4BiasCorrect(in_file=t2), name="n4_t2")
    mni = workflow.add(RegisterToTemplate(t2_file=n4_t2.out_file), name="register_to_template")
    brain = workflow.add(ExtractBrain(t2_file=n4_t2.out_file, t2_to_mni=mni.t2_to_mni, mask_file=mask),
                         name="extract_brain")
    reg_swi = workflow.add(RegisterToT2(moving_file=swi, t2_file=n4_t2.out_file, mask_file=brain.mask,
                                        preset=registration), name="register_swi")
    reg_qsm = qsm_qc = None
    if has_qsm:
        reg_qsm = workflow.add(RegisterToT2(moving_file=qsm, t2_file=n4_t2.out_file, mask_file=brain.mask,
                                            same_session_file=swi, same_session_transform=reg_swi.transform,
                                            preset=registration, what="QSM"), name="register_qsm")
        qsm_qc = reg_qsm.qc
    grid = workflow.add(MakeGrid(t2_file=n4_t2.out_file, mask_file=brain.mask, voxel_size=voxel_size,
                                 margin_mm=margin_mm), name="grid")
    mask_g = workflow.add(ResampleToGrid(in_file=brain.mask, reference_file=grid.grid,
                                         interpolation="mask"), name="mask_grid")
    t2_g = workflow.add(ResampleToGrid(in_file=n4_t2.out_file, reference_file=grid.grid,
                                       interpolation=interpolation), name="t2_grid")
    swi_g = workflow.add(ResampleToGrid(in_file=swi, reference_file=grid.grid, transform_file=reg_swi.transform,
                                        interpolation=interpolation, mask_file=mask_g.out_file), name="swi_grid")
    n4_swi = workflow.add(N4BiasCorrect(in_file=swi_g.out_file, mask_file=mask_g.out_file), name="n4_swi")
    t2_n = workflow.add(NormaliseIntensity(in_file=t2_g.out_file, mask_file=mask_g.out_file), name="t2_norm")
    swi_n = workflow.add(NormaliseIntensity(in_file=n4_swi.out_file, mask_file=mask_g.out_file), name="swi_norm")
    qsm_out = qsm_to_t2 = None
    if has_qsm:
        qsm_g = workflow.add(ResampleToGrid(in_file=qsm, reference_file=grid.grid, transform_file=reg_qsm.transform,
                                            interpolation=interpolation, mask_file=mask_g.out_file), name="qsm_grid")
        qsm_out = workflow.add(NormaliseIntensity(in_file=qsm_g.out_file, mask_file=mask_g.out_file, kind="qsm"),
                               name="qsm_norm").out_file
        qsm_to_t2 = reg_qsm.transform
    rep = workflow.add(WritePreprocReport(
        checks=chk.report, mask_file=mask_g.out_file, swi_file=swi, qsm_file=qsm if has_qsm else None,
        swi_to_t2=reg_swi.transform, qsm_to_t2=qsm_to_t2, t2_to_mni=mni.t2_to_mni, user_mask=mask,
        swi_qc=reg_swi.qc, qsm_qc=qsm_qc, interpolation=interpolation,
        registration=registration, voxel_size=voxel_size, margin_mm=margin_mm), name="report")
    return (t2_n.out_file, swi_n.out_file, qsm_out, mask_g.out_file, reg_swi.transform,
            mni.t2_to_mni, rep.report)


#: steps whose times the report adds up under one name (the others keep their node's name)
_TIMING_GROUPS = {"grid": "resample", "mask_grid": "resample", "t2_grid": "resample", "swi_grid": "resample",
                  "qsm_grid": "resample", "t2_norm": "normalise", "swi_norm": "normalise",
                  "qsm_norm": "normalise"}
#: intermediate files kept by ``keep_intermediate``: node, output -> file name
_INTERMEDIATE = {("n4_t2", "out_file"): "t2_n4.nii.gz", ("extract_brain", "mask"): "mask_native.nii.gz",
                 ("grid", "grid"): "grid.nii.gz", ("n4_swi", "out_file"): "swi_n4.nii.gz"}


class _TimedWorker(DebugWorker):
    """pydra's debug worker (in this process, one job at a time), noting each job's time and result.

    A plain subclass, not an attrs one: it keeps pydra's ``__getstate__``, which leaves the event
    loop out when a job is pickled into the cache (the notes are not pickled either).
    """

    _plugin_name = "debug"

    def __init__(self):
        super().__init__()
        self.seconds: dict[str, float] = {}
        self.results: dict = {}

    def run(self, job, rerun: bool = False):
        t0 = time.perf_counter()
        result = super().run(job, rerun=rerun)
        if not job.is_async:  # a step, not the workflow around the steps
            self.seconds[job.name] = time.perf_counter() - t0
            self.results[job.name] = result
        return result


def preprocess_subject(t2_file, swi_file, qsm_file, out_dir, *, mask_file=None, voxel_size=1.0,
                       margin_mm: float = 8.0, interpolation: str = "bspline",
                       registration: str = "fast", keep_intermediate: bool = False, qsm_units: str = "auto",
                       allow_resolution: bool = False) -> dict[str, Path]:
    """Run :func:`PreprocessSubject` on one subject in this process; copy its outputs into ``out_dir``.

    Returns paths keyed ``t2``, ``swi``, ``qsm``, ``mask`` (uint8) in the working grid,
    ``swi_to_t2`` (ANTs/ITK ``.mat``: use with ``ants.apply_transforms``; ``transform_to_ras`` gives
    the RAS SWI-world → T2w-world 4×4), ``t2_to_mni`` (text 4×4, RAS T2w world mm → MNI world mm)
    and ``report`` (JSON: checks, warnings, grid, coverage, transforms, settings, timings). Output
    names are BIDS-derivative names prefixed by the T2w's entities
    (``sub-01_space-T2w_desc-preproc_T2w.nii.gz``). With ``keep_intermediate`` the bias-corrected
    T2w, native-grid brain mask, grid and bias-corrected SWI stay in ``out_dir/.preproc_*``. Bad
    input raises :class:`~deepmir_tasks.io.InputError` naming the file.
    """
    from deepmir_tasks.io import as_path, write_json
    from deepmir_tasks.preprocess.pipeline import output_names

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".preproc_", dir=out_dir))
    worker = _TimedWorker()
    t0 = time.perf_counter()
    try:
        outputs = PreprocessSubject(t2=t2_file, swi=swi_file, qsm=qsm_file, mask=mask_file, voxel_size=voxel_size,
                                    interpolation=interpolation, registration=registration,
                                    margin_mm=margin_mm, qsm_units=qsm_units,
                                    allow_resolution=allow_resolution)(worker=worker, cache_root=work / "cache")
        names = output_names(t2_file)
        out = {k: shutil.copyfile(as_path(getattr(outputs, k)), out_dir / names[k])
               for k in ("t2", "swi", "qsm", "mask", "swi_to_t2", "t2_to_mni", "report")
               if getattr(outputs, k) is not None}
        report = _with_timings(out["report"], worker.seconds, time.perf_counter() - t0)
        write_json(report, out["report"])
        if keep_intermediate:
            for (node, field), name in _INTERMEDIATE.items():
                shutil.copyfile(as_path(getattr(worker.results[node].outputs, field)), work / name)
    finally:
        shutil.rmtree(work / "cache", ignore_errors=True)
        if not keep_intermediate:
            shutil.rmtree(work, ignore_errors=True)
    return {k: Path(v) for k, v in out.items()}  # no "qsm" for a T2w + SWI subject


def _with_timings(report_file, seconds: dict, total: float) -> dict:
    """The report with ``timings_s``: seconds per step (resampling and normalisation summed)."""
    import json

    report = json.loads(Path(report_file).read_text())
    timings: dict[str, float] = {}
    for node, sec in seconds.items():
        key = _TIMING_GROUPS.get(node, node)
        timings[key] = round(timings.get(key, 0.0) + sec, 3)
    report["timings_s"] = {**timings, "total": round(total, 3)}
    return report
