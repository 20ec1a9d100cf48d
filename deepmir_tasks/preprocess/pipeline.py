"""``preprocess_subject``: every step in order, without Pydra (the training code calls this)."""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from deepmir_tasks.bids_names import job_file_name
from deepmir_tasks.io import load_image, write_json

__all__ = ["preprocess_subject", "output_names", "summarise"]


def output_names(t2_file) -> dict[str, str]:
    """BIDS-derivative file names for the outputs, prefixed by the T2w's entities (``sub-01_ses-1``)."""
    name = Path(t2_file).name
    stem = re.sub(r"\.nii(\.gz)?$", "", name)
    prefix = re.sub(r"_T2w$", "", stem) or "t2"
    names = {k: k for k in ("t2", "swi", "qsm", "mask", "swi_to_t2", "qsm_to_t2", "t2_to_mni")}
    names["report"] = "preproc_report"
    return {k: job_file_name(name, prefix) for k, name in names.items()}


def preprocess_subject(t2_file, swi_file, qsm_file, out_dir, *, mask_file=None, voxel_size=1.0,
                       margin_mm: float = 8.0, interpolation: str = "bspline",
                       registration: str = "fast", keep_intermediate: bool = False) -> dict[str, Path]:
    """Bring one subject's T2w, SWI and QSM into one working grid.

    Steps: input checks; N4 of the T2w (Otsu head mask); affine T2w → MNI152 2009a; brain mask
    (``mask_file`` if given, on the T2w grid, else the MNI prior trimmed by intensity); rigid
    Mattes-MI registration of the SWI magnitude to the T2w (``registration`` preset), reused for the
    QSM when it shares the SWI grid; the working grid (T2w axes, ``voxel_size`` mm isotropic, brain
    bounding box + ``margin_mm``); B-spline resampling of T2w/SWI/QSM (``interpolation``), the mask
    linearly then thresholded at 0.5, with a check that SWI and QSM cover >= 90 % of the brain;
    N4 of the SWI in the working grid inside the brain; robust z-scores (T2w, SWI) and clipped ppm
    (QSM, [-1, 2]), all 0 outside the brain.

    Returns paths keyed ``t2``, ``swi``, ``qsm``, ``mask`` (uint8) in the working grid,
    ``swi_to_t2`` (ANTs/ITK ``.mat``: use with ``ants.apply_transforms``; ``transform_to_ras`` gives
    the RAS SWI-world → T2w-world 4×4), ``t2_to_mni`` (text 4×4, RAS T2w world mm → MNI world mm)
    and ``report`` (JSON: checks, warnings, grid, coverage, transforms, timings). Output names are
    BIDS-derivative names prefixed by the T2w's entities (``sub-01_space-T2w_desc-preproc_T2w.nii.gz``).
    Bad input raises :class:`~deepmir_tasks.io.InputError` naming the file.
    """
    from deepmir_tasks.preprocess.bias import n4_correct
    from deepmir_tasks.preprocess.brain import extract_brain
    from deepmir_tasks.preprocess.checks import check_inputs
    from deepmir_tasks.preprocess.normalise import normalise_intensity
    from deepmir_tasks.preprocess.register import register_to_t2
    from deepmir_tasks.preprocess.resample import make_grid, resample_to_grid
    from deepmir_tasks.preprocess.template import register_to_template

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = output_names(t2_file)
    out = {k: out_dir / v for k, v in names.items()}
    work = Path(tempfile.mkdtemp(prefix=".preproc_", dir=out_dir))
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    def step(name):
        timings[name] = round(time.perf_counter() - step.t0, 3)
        step.t0 = time.perf_counter()

    step.t0 = time.perf_counter()
    report = check_inputs(t2_file, swi_file, qsm_file, mask_file)
    step("check_inputs")
    t2_n4 = n4_correct(t2_file, work / "t2_n4.nii.gz", what="T2w")
    step("n4_t2")
    register_to_template(t2_n4, out["t2_to_mni"])
    step("register_to_template")
    if mask_file is None:
        mask_native = extract_brain(t2_n4, work / "mask_native.nii.gz", t2_to_mni_file=out["t2_to_mni"])
        report["mask_source"] = "extract_brain (MNI prior + T2w intensity refinement)"
    else:
        mask_native = Path(mask_file)
        report["mask_source"] = f"user: {mask_file}"
    step("extract_brain")
    register_to_t2(swi_file, t2_n4, out["swi_to_t2"], mask_file=mask_native, preset=registration,
                   what="SWI")
    step("register_swi")
    register_to_t2(qsm_file, t2_n4, out["qsm_to_t2"], mask_file=mask_native, preset=registration,
                   same_session_file=swi_file, same_session_transform=out["swi_to_t2"], what="QSM")
    report["qsm_transform"] = ("reused the SWI transform (same grid)"
                               if _same_bytes(out["qsm_to_t2"], out["swi_to_t2"]) else "registered on its own")
    step("register_qsm")
    grid = make_grid(t2_file, work / "grid.nii.gz", mask_file=mask_native, voxel_size=voxel_size,
                     margin_mm=margin_mm)
    resample_to_grid(mask_native, grid, out["mask"], interpolation="mask", what="brain mask")
    resample_to_grid(t2_n4, grid, work / "t2_grid.nii.gz", interpolation=interpolation, what="T2w")
    swi_grid = resample_to_grid(swi_file, grid, work / "swi_grid.nii.gz", transform_file=out["swi_to_t2"],
                                interpolation=interpolation, mask_file=out["mask"], what="SWI")
    resample_to_grid(qsm_file, grid, work / "qsm_grid.nii.gz", transform_file=out["qsm_to_t2"],
                     interpolation=interpolation, mask_file=out["mask"], what="QSM")
    step("resample")
    swi_n4 = n4_correct(swi_grid, work / "swi_n4.nii.gz", mask_file=out["mask"], what="SWI")
    step("n4_swi")
    normalise_intensity(work / "t2_grid.nii.gz", out["mask"], out["t2"], kind="zscore", what="T2w")
    normalise_intensity(swi_n4, out["mask"], out["swi"], kind="zscore", what="SWI")
    normalise_intensity(work / "qsm_grid.nii.gz", out["mask"], out["qsm"], kind="qsm", what="QSM")
    step("normalise")

    report.update({"interpolation": interpolation, "registration_preset": registration,
                   "voxel_size_mm": float(voxel_size), "margin_mm": float(margin_mm)})
    report["timings_s"] = {**timings, "total": round(time.perf_counter() - t_all, 3)}
    summarise(report, out["mask"], swi_file, qsm_file, out["swi_to_t2"], out["qsm_to_t2"],
              out["t2_to_mni"], out["report"])
    if not keep_intermediate:
        shutil.rmtree(work, ignore_errors=True)
    return {k: out[k] for k in ("t2", "swi", "qsm", "mask", "swi_to_t2", "t2_to_mni", "report")}


def _same_bytes(a, b) -> bool:
    return Path(a).read_bytes() == Path(b).read_bytes()


def summarise(checks, mask_file, swi_file, qsm_file, swi_to_t2, qsm_to_t2, t2_to_mni, out_file) -> Path:
    """Write the preprocessing report: input checks (a dict or its JSON file) + grid, coverage, transforms."""
    import json

    from deepmir_tasks import __version__
    from deepmir_tasks.preprocess.normalise import QSM_RANGE_PPM
    from deepmir_tasks.preprocess.register import transform_to_ras
    from deepmir_tasks.preprocess.resample import coverage_fraction
    from deepmir_tasks.preprocess.template import read_matrix

    report = dict(checks) if isinstance(checks, dict) else json.loads(Path(checks).read_text())
    mask_img = load_image(mask_file, what="brain mask")
    mask = np.asarray(mask_img.dataobj) > 0
    zooms = np.linalg.norm(mask_img.affine[:3, :3], axis=0)
    report["coverage"] = {
        k: round(coverage_fraction(load_image(f, allow_empty=True), mask_img, mask, t), 4)
        for k, f, t in (("swi", swi_file, swi_to_t2), ("qsm", qsm_file, qsm_to_t2))}
    report.update({
        "deepmir_version": __version__,
        "grid": {"shape": list(mask_img.shape), "affine": np.round(mask_img.affine, 6).tolist()},
        "brain_volume_ml": round(float(mask.sum()) * float(np.prod(zooms)) / 1000.0, 2),
        "swi_to_t2_ras": np.round(transform_to_ras(swi_to_t2), 6).tolist(),
        "qsm_to_t2_ras": np.round(transform_to_ras(qsm_to_t2), 6).tolist(),
        "t2_to_mni_ras": np.round(read_matrix(t2_to_mni), 6).tolist(),
        "qsm_range_ppm": list(QSM_RANGE_PPM),
    })
    return write_json(report, out_file)
