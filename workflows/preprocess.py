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

from deepmir_tasks.bids_names import MODALITY_NAMES, reference_modality, space_label
from deepmir_tasks.preprocess.tasks import (AlignByHeader, AlignQsm, CheckInputs, ExtractBrain, MakeGrid,
                                            N4BiasCorrect, NormaliseIntensity, RegisterToT2, RegisterToTemplate,
                                            ResampleToGrid, WritePreprocReport)

__all__ = ["PreprocessSubject", "preprocess_subject"]


def _transforms_to_reference(ref: str, checked: dict, ref_img, brain_mask, registration: str):
    """``({modality: transform to the reference}, {modality: registration QC})`` for the images
    other than the reference, added to the workflow under construction. An SWI that is the
    reference has the identity, which a QSM in its scanner space shares."""
    ref_name = MODALITY_NAMES[ref]
    swi, qsm = checked["swi"], checked["qsm"]
    xfm, qc = {}, {}
    if ref == "swi" and qsm is not None:
        xfm["swi"] = workflow.add(AlignByHeader(moving_file=swi, reference_file=swi,
                                                what="SWI", reference="SWI"), name="reference_identity").transform
    if swi is not None and ref == "t2":
        reg_swi = workflow.add(RegisterToT2(moving_file=swi, t2_file=ref_img, mask_file=brain_mask,
                                            preset=registration, t2_source=checked["t2"]), name="register_swi")
        xfm["swi"], qc["swi"] = reg_swi.transform, reg_swi.qc
    if qsm is not None and ref != "qsm":
        if swi is not None:  # by the SWI: its transform when the QSM lies in its scanner space
            reg_qsm = workflow.add(RegisterToT2(moving_file=qsm, t2_file=ref_img, mask_file=brain_mask,
                                                same_session_file=swi, same_session_transform=xfm["swi"],
                                                preset=registration, what="QSM", t2_source=checked[ref]),
                                   name="register_qsm")
        else:  # no SWI: its header or its brain support (a QSM is not registered by its signed values)
            reg_qsm = workflow.add(AlignQsm(moving_file=qsm, reference_file=checked[ref], mask_file=brain_mask,
                                            reference=ref_name, preset=registration), name="register_qsm")
        xfm["qsm"], qc["qsm"] = reg_qsm.transform, reg_qsm.qc
    return xfm, qc


@workflow.define(outputs=["t2", "swi", "qsm", "mask", "swi_to_t2", "qsm_to_t2", "t2_to_mni", "report"])
def PreprocessSubject(t2: NiftiGz | None = None, swi: NiftiGz | None = None, qsm: NiftiGz | None = None,
                      mask: NiftiGz | None = None, voxel_size: float = 1.0, interpolation: str = "bspline",
                      registration: str = "fast", margin_mm: float = 8.0, qsm_units: str = "auto",
                      allow_resolution: bool = False):
    """Preprocess one subject for DEEPMIR: any non-empty subset of T2w, SWI and QSM.

    The inputs are checked first (:mod:`deepmir_tasks.preprocess.checks`): a QSM that is not in ppm
    fails unless ``qsm_units`` says how to take it ("ppm": as it is, "ppb": divided by 1000), and a
    resolution outside the supported range fails unless ``allow_resolution``.

    The subject is processed in its **reference** space: the T2w's, else the SWI's, else the QSM's
    (:func:`~deepmir_tasks.bids_names.reference_modality`; the report's ``space``). The reference is
    N4 bias-corrected (ANTs; fit inside an Otsu head mask; never a QSM) and affinely registered to
    the MNI152 2009a template (Mattes MI, 2 mm; a QSM by its brain support); the brain is the
    template's brain probability carried through that affine and refined by the reference's
    intensity (a T2w: skull-dark voxels trimmed; an SWI: not, as microbleeds are dark on it; a QSM:
    the map's support), or the user's mask. SWI magnitude is registered rigidly to a T2w (Mattes MI,
    three-level pyramid) and the result checked (a header flipped or rotated against the T2w's
    fails the subject, the SWI named); QSM reuses the SWI's transform when it lies in the SWI's
    scanner space (its grid, or its own grid over the same place). Without an SWI, a QSM is aligned
    to the T2w by its brain support registered to the T2w's brain mask, or by its header when that
    registration barely moves it (:func:`~deepmir_tasks.preprocess.reference.align_qsm`: a QSM is
    not registered by its signed values). All images are resampled into the reference space at
    ``voxel_size`` mm isotropic, cropped to the brain plus ``margin_mm`` (B-spline for images,
    linear-thresholded for the mask); an SWI that is not the reference is N4-corrected in that grid;
    T2w and SWI become robust z-scores inside the brain (median, IQR/1.349) and QSM stays in ppm,
    clipped to [-1, 2], 0 outside the brain. A missing modality's steps are left out and its
    outputs (image, transform) are None; so is the reference's own transform.
    """
    given = {"t2": t2, "swi": swi, "qsm": qsm}
    ref = reference_modality([m for m, f in given.items() if f is not None])
    ref_name = MODALITY_NAMES[ref]
    chk = workflow.add(CheckInputs(t2_file=t2, swi_file=swi, qsm_file=qsm, mask_file=mask, qsm_units=qsm_units,
                                   allow_resolution=allow_resolution), name="check_inputs")
    # wait for the checks: every later step takes the images from them
    checked = {"t2": chk.t2_file if t2 is not None else None, "swi": chk.swi_file if swi is not None else None,
               "qsm": chk.qsm_file if qsm is not None else None}
    mask = chk.mask_file
    if ref == "qsm":  # never bias-corrected: a QSM is not a magnitude image
        ref_img = checked["qsm"]
    else:
        ref_img = workflow.add(N4BiasCorrect(in_file=checked[ref]), name=f"n4_{ref}").out_file
    mni = workflow.add(RegisterToTemplate(t2_file=ref_img, contrast=ref_name), name="register_to_template")
    brain = workflow.add(ExtractBrain(t2_file=ref_img, t2_to_mni=mni.t2_to_mni, mask_file=mask, contrast=ref_name),
                         name="extract_brain")
    xfm, qc = _transforms_to_reference(ref, checked, ref_img, brain.mask, registration)
    grid = workflow.add(MakeGrid(t2_file=ref_img, mask_file=brain.mask, voxel_size=voxel_size,
                                 margin_mm=margin_mm), name="grid")
    mask_g = workflow.add(ResampleToGrid(in_file=brain.mask, reference_file=grid.grid,
                                         interpolation="mask"), name="mask_grid")
    out = {"t2": None, "swi": None, "qsm": None}
    for m in ("t2", "swi", "qsm"):
        if given[m] is None:
            continue
        src = ref_img if m == ref else checked[m]
        img = workflow.add(ResampleToGrid(in_file=src, reference_file=grid.grid,
                                          transform_file=None if m == ref else xfm[m], interpolation=interpolation,
                                          mask_file=None if m == ref else mask_g.out_file), name=f"{m}_grid").out_file
        if m == "swi" and ref != "swi":  # the reference was corrected in its own grid
            img = workflow.add(N4BiasCorrect(in_file=img, mask_file=mask_g.out_file), name="n4_swi").out_file
        out[m] = workflow.add(NormaliseIntensity(in_file=img, mask_file=mask_g.out_file,
                                                 kind="qsm" if m == "qsm" else "zscore"), name=f"{m}_norm").out_file
    rep = workflow.add(WritePreprocReport(
        checks=chk.report, mask_file=mask_g.out_file, swi_file=checked["swi"], qsm_file=checked["qsm"],
        swi_to_t2=xfm.get("swi"), qsm_to_t2=xfm.get("qsm"), t2_to_mni=mni.t2_to_mni, reference=ref,
        user_mask=mask, swi_qc=qc.get("swi"), qsm_qc=qc.get("qsm"), interpolation=interpolation,
        registration=registration, voxel_size=voxel_size, margin_mm=margin_mm), name="report")
    published = {m: None if m == ref else xfm.get(m) for m in ("swi", "qsm")}  # no transform to itself
    return (out["t2"], out["swi"], out["qsm"], mask_g.out_file, published["swi"], published["qsm"],
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

    Any one or two of ``t2_file``, ``swi_file``, ``qsm_file`` may be ``None``: the subject is then
    processed in the space of its T2w, else SWI, else QSM (the reference). Returns paths keyed
    ``t2``, ``swi``, ``qsm``, ``mask`` (uint8) in the working grid, ``swi_to_t2`` and ``qsm_to_t2``
    (to the reference; ANTs/ITK ``.mat``: use with ``ants.apply_transforms``; ``transform_to_ras``
    gives the RAS moving-world → reference-world 4×4), ``t2_to_mni`` (text 4×4, RAS reference world
    mm → MNI world mm) and ``report`` (JSON: reference and space, checks, warnings, grid, coverage,
    transforms, settings, timings); a key is absent for what the subject lacks. Output names are
    BIDS-derivative names in the reference space, prefixed by the reference's entities
    (``sub-01_space-T2w_desc-preproc_T2w.nii.gz``, ``sub-01_space-swi_desc-preproc_swi.nii.gz``). With ``keep_intermediate`` the bias-corrected
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
        ref = reference_modality([m for m, f in (("t2", t2_file), ("swi", swi_file), ("qsm", qsm_file))
                                  if f is not None])
        names = output_names({"t2": t2_file, "swi": swi_file, "qsm": qsm_file}[ref], space_label(ref))
        out = {k: shutil.copyfile(as_path(getattr(outputs, k)), out_dir / names[k])
               for k in ("t2", "swi", "qsm", "mask", "swi_to_t2", "qsm_to_t2", "t2_to_mni", "report")
               if getattr(outputs, k) is not None}
        report = _with_timings(out["report"], worker.seconds, time.perf_counter() - t0)
        write_json(report, out["report"])
        if keep_intermediate:
            for (node, field), name in _INTERMEDIATE.items():
                if node not in worker.results:  # a step the subject's modalities left out
                    continue
                shutil.copyfile(as_path(getattr(worker.results[node].outputs, field)), work / name)
    finally:
        shutil.rmtree(work / "cache", ignore_errors=True)
        if not keep_intermediate:
            shutil.rmtree(work, ignore_errors=True)
    return {k: Path(v) for k, v in out.items()}  # no key for what the subject lacks


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
