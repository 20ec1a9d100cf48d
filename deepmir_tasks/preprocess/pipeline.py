"""The preprocessing report, and the derivative names ``preprocess_subject`` gives its outputs.

The steps themselves run in one graph, :func:`workflows.preprocess.PreprocessSubject`, whether
for a cohort (``deepmir run``) or for one subject from Python
(:func:`workflows.preprocess.preprocess_subject`, which training and the nipype interface call).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from deepmir_tasks.bids_names import MODALITY_NAMES, MODALITY_SUFFIX, job_file_name, space_label
from deepmir_tasks.io import load_image, write_json

__all__ = ["output_names", "summarise"]


def output_names(reference_file, space: str = "T2w") -> dict[str, str]:
    """BIDS-derivative file names for the outputs in the reference ``space`` (a
    :func:`~deepmir_tasks.bids_names.space_label`), prefixed by the reference image's entities
    (``sub-01_ses-1``)."""
    name = Path(reference_file).name
    stem = re.sub(r"\.nii(\.gz)?$", "", name)
    suffixes = "|".join(MODALITY_SUFFIX.values())
    prefix = re.sub(rf"_({suffixes})$", "", stem) or "deepmir"
    names = {k: k for k in ("t2", "swi", "qsm", "mask", "swi_to_t2", "qsm_to_t2", "t2_to_mni")}
    names["report"] = "preproc_report"
    return {k: job_file_name(name, prefix, space) for k, name in names.items()}


def summarise(checks, mask_file, swi_file, qsm_file, swi_to_t2, qsm_to_t2, t2_to_mni, out_file, *,
              user_mask=None, settings: dict | None = None, registration_qc: dict | None = None,
              reference: str = "t2") -> Path:
    """Write the preprocessing report: input checks (a dict or its JSON file) + the reference image
    (``reference``: ``t2``, ``swi`` or ``qsm``) and its ``space`` label, the mask's source, the
    settings, grid, coverage, transforms (to the reference; ``None`` for an image that is missing)
    and the registrations' alignment checks (``registration_qc``, by image). ``user_mask`` is the
    user's own mask, if one was given."""
    import json

    from deepmir_tasks import __version__
    from deepmir_tasks.preprocess.checks import input_flags
    from deepmir_tasks.preprocess.normalise import QSM_RANGE_PPM
    from deepmir_tasks.preprocess.register import transform_to_ras
    from deepmir_tasks.preprocess.resample import coverage_fraction
    from deepmir_tasks.preprocess.template import read_matrix

    report = dict(checks) if isinstance(checks, dict) else json.loads(Path(checks).read_text())
    ref_name = MODALITY_NAMES[reference]
    report["reference"] = ref_name
    report["space"] = space_label(reference)
    report["modalities"] = [MODALITY_NAMES[m] for m in ("t2", "swi", "qsm") if report.get(f"{m}_file", "") is not None]
    report["mask_source"] = (f"user: {user_mask}" if user_mask is not None
                             else f"extract_brain ({ref_name}: the QSM's support)" if reference == "qsm"
                             else f"extract_brain (MNI prior + {ref_name} intensity refinement)")
    registration_qc = registration_qc or {}
    report["swi_transform"] = ("the reference" if reference == "swi" else "no SWI" if swi_to_t2 is None
                               else "registered to the T2w")
    report["qsm_transform"] = _qsm_transform(qsm_to_t2, swi_to_t2, registration_qc.get("qsm"), reference)
    report["registration_qc"] = registration_qc
    report.setdefault("warnings", [])
    report["warnings"] += [qc["suspect"] for qc in report["registration_qc"].values() if qc and qc.get("suspect")]
    report.update(settings or {})
    mask_img = load_image(mask_file, what="brain mask")
    mask = np.asarray(mask_img.dataobj) > 0
    zooms = np.linalg.norm(mask_img.affine[:3, :3], axis=0)
    report["coverage"] = {
        k: round(coverage_fraction(load_image(f, allow_empty=True), mask_img, mask, t), 4)
        for k, f, t in (("swi", swi_file, swi_to_t2), ("qsm", qsm_file, qsm_to_t2)) if f is not None}
    report.update({
        "deepmir_version": __version__,
        "grid": {"shape": list(mask_img.shape), "affine": np.round(mask_img.affine, 6).tolist()},
        "brain_volume_ml": round(float(mask.sum()) * float(np.prod(zooms)) / 1000.0, 2),
        "swi_to_t2_ras": None if swi_to_t2 is None else np.round(transform_to_ras(swi_to_t2), 6).tolist(),
        "qsm_to_t2_ras": None if qsm_to_t2 is None else np.round(transform_to_ras(qsm_to_t2), 6).tolist(),
        "t2_to_mni_ras": np.round(read_matrix(t2_to_mni), 6).tolist(),
        "qsm_range_ppm": list(QSM_RANGE_PPM),
    })
    report["flags"] = input_flags(report)  # what the lesion tables carry (ExtractLesions reads it here)
    return write_json(report, out_file)


def _qsm_transform(qsm_to_t2, swi_to_t2, qc, reference: str) -> str:
    """How the QSM was brought into the reference space, in words for the report."""
    if reference == "qsm":
        return "the reference"
    if qsm_to_t2 is None:
        return "no QSM"
    by, dices = (qc or {}).get("aligned_by"), (qc or {}).get("support_dice") or {}
    fit = ", ".join(f"{k} {v:.3f}" for k, v in dices.items())
    moved = (qc or {}).get("displacement_mm")
    if by == "header":
        return ("aligned by its header (no SWI to register it by: a QSM is not registered by its signed "
                "values" + (f"; registering its brain support to the brain mask moved it {moved} mm on "
                            f"average, Dice {fit})" if moved is not None else ")"))
    if by == "support":
        return (f"registered by its brain support to the brain mask (no SWI; it moved {moved} mm on "
                f"average; Dice {fit})")
    if swi_to_t2 is not None and _same_bytes(qsm_to_t2, swi_to_t2):
        return "reused the SWI transform (same scanner space)"
    return "registered on its own"


def _same_bytes(a, b) -> bool:
    return Path(a).read_bytes() == Path(b).read_bytes()
