"""Checks of the input images before any computation.

Every hard failure is an :class:`~deepmir_tasks.io.InputError` naming the file and the problem in
one line (missing file, unreadable gzip, 4-D, NaNs, empty image, implausible voxel size or field of
view, a mask that does not match the T2w). Soft problems (a QSM map that looks scaled) are warnings
naming the file and what the values look like. Overlap of SWI/QSM with the T2w brain is checked after
registration by :func:`deepmir_tasks.preprocess.resample.resample_to_grid`.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np

from deepmir_tasks.io import InputError, load_image

__all__ = ["QsmScaleWarning", "check_image", "guess_qsm_units", "check_inputs"]

log = logging.getLogger(__name__)

MAX_VOXEL_MM = 10.0
MIN_VOXEL_MM = 0.05
MAX_FOV_MM = 600.0


class QsmScaleWarning(UserWarning):
    """The QSM map's values do not look like ppm."""


def check_image(path, what: str, *, allow_empty: bool = False):
    """Load ``path`` with :func:`load_image` and check its geometry; return ``(image, info dict)``."""
    img = load_image(path, what=what, allow_empty=allow_empty)
    aff = img.affine
    zooms = np.linalg.norm(aff[:3, :3], axis=0)
    if np.any(zooms < MIN_VOXEL_MM) or np.any(zooms > MAX_VOXEL_MM):
        raise InputError(path, f"{what} voxel sizes {tuple(np.round(zooms, 3))} mm are outside "
                               f"[{MIN_VOXEL_MM}, {MAX_VOXEL_MM}] mm; check the header")
    fov = zooms * np.asarray(img.shape[:3])
    if np.any(fov > MAX_FOV_MM):
        raise InputError(path, f"{what} field of view {tuple(np.round(fov))} mm is implausible for a head")
    if np.any(np.abs(aff[:3, 3]) > 5000):
        raise InputError(path, f"{what} affine places the image more than 5 m from the scanner origin")
    dirs = aff[:3, :3] / zooms
    gram = dirs.T @ dirs
    shear = float(np.abs(gram - np.eye(3)).max())
    if shear > 1e-3:
        raise InputError(path, f"{what} affine has sheared axes (max |cos| between axes {shear:.3f}); "
                               "re-slice the image first")
    obliquity = float(np.degrees(np.arccos(np.clip(np.abs(dirs).max(axis=0), -1, 1))).max())
    info = {"file": str(path), "shape": list(img.shape[:3]), "voxel_size_mm": np.round(zooms, 4).tolist(),
            "obliquity_deg": round(obliquity, 2), "orientation": "".join(_axcodes(aff))}
    return img, info


def _axcodes(aff):
    import nibabel as nib

    return nib.aff2axcodes(aff)


def guess_qsm_units(data: np.ndarray) -> str | None:
    """Return a sentence describing what a susceptibility map's scale looks like, or None if ppm.

    Judged on non-zero voxels: ppm maps of the head mostly lie within about ±1 ppm with a few
    voxels reaching several ppm.
    """
    vals = np.asarray(data, float)
    vals = vals[vals != 0]
    if vals.size < 100:
        return None
    a = np.abs(vals)
    p999 = float(np.percentile(a, 99.9))
    p99 = float(np.percentile(a, 99))
    if p999 > 50:
        return (f"values look like ppb (99.9th percentile of |chi| = {p999:.0f}, ~1000x ppm); "
                "divide by 1000")
    amax = float(a.max())
    if 2.8 < amax <= 3.2 and p99 > 2.0:
        return (f"values fill [-pi, pi] (max |value| = {amax:.3f}): this looks like a phase image in "
                "radians, not a susceptibility map")
    if p999 > 8:
        return f"values are large for ppm (99.9th percentile of |chi| = {p999:.1f}); check the scaling"
    if p999 < 1e-3:
        return (f"values are tiny (99.9th percentile of |chi| = {p999:.2g}): this looks like "
                "dimensionless susceptibility (multiply by 1e6 for ppm)")
    return None


def check_inputs(t2_file, swi_file, qsm_file, mask_file=None) -> dict:
    """Check the three inputs (and an optional T2w-grid brain mask); return a report dict.

    Raises :class:`InputError` on the first hard failure; emits a :class:`QsmScaleWarning` naming
    the QSM file when its values do not look like ppm.
    """
    report = {"warnings": []}
    t2, report["t2"] = check_image(t2_file, "T2w")
    swi, report["swi"] = check_image(swi_file, "SWI")
    sd = np.asarray(swi.dataobj)
    if np.count_nonzero(sd < 0) > 0.2 * max(np.count_nonzero(sd), 1):
        raise InputError(swi_file, "SWI magnitude is negative in over 20% of voxels; is this a phase or QSM image?")
    qsm, report["qsm"] = check_image(qsm_file, "QSM", allow_empty=False)
    verdict = guess_qsm_units(np.asarray(qsm.dataobj))
    report["qsm"]["units_check"] = verdict or "ppm (plausible)"
    if verdict:
        msg = f"{qsm_file}: QSM {verdict}"
        warnings.warn(msg, QsmScaleWarning, stacklevel=2)
        log.warning(msg)
        report["warnings"].append(msg)
    if mask_file is not None:
        mask, report["mask"] = check_image(mask_file, "brain mask")
        if mask.shape[:3] != t2.shape[:3] or not np.allclose(mask.affine, t2.affine, atol=1e-3):
            raise InputError(mask_file, f"brain mask grid {mask.shape[:3]} does not match the T2w grid "
                                        f"{t2.shape[:3]} (same shape and affine needed)")
        vals = np.unique(np.asarray(mask.dataobj))
        if vals.size > 2:
            raise InputError(mask_file, f"brain mask is not binary ({vals.size} distinct values)")
    return report
