"""Checks of the input images before any computation.

Every hard failure is an :class:`~deepmir_tasks.io.InputError` naming the file and the problem in
one line (missing file, unreadable gzip, 4-D, complex values, NaNs, empty image, a broken header,
implausible voxel size, an image too small to hold a brain, a resolution outside what the model
supports (:data:`SUPPORTED_RESOLUTION`), a QSM map whose values are not ppm, a phase image given as
SWI, a mask that does not match the T2w). Two of them can be overridden, and are then recorded as
warnings: ``qsm_units="ppm"`` trusts the QSM's scale, ``qsm_units="ppb"`` divides it by 1000, and
``allow_resolution`` runs an unsupported resolution. Overlap of SWI/QSM with the T2w brain is checked
after registration by :func:`deepmir_tasks.preprocess.resample.resample_to_grid`, their alignment
by :mod:`deepmir_tasks.preprocess.regqc`.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np

from deepmir_tasks.io import InputError, load_image

__all__ = ["QsmScaleWarning", "QSM_UNITS", "input_flags", "SUPPORTED_RESOLUTION", "MIN_FOV_MM", "check_image",
           "guess_qsm_units", "check_resolution", "check_inputs"]

log = logging.getLogger(__name__)

MAX_VOXEL_MM = 10.0
MIN_VOXEL_MM = 0.05
MAX_FOV_MM = 600.0
#: smallest field of view (mm) of an image that can hold a brain: (two largest axes, smallest axis);
#: SWI and QSM may be slabs (partial coverage)
MIN_FOV_MM = {"T2w": (100.0, 40.0), "SWI": (80.0, 20.0), "QSM": (80.0, 20.0)}
#: supported voxel sizes (mm) by role: (largest in-plane, i.e. the two finer axes; largest slice).
#: A microbleed (2-10 mm) spans few voxels beyond these; the model was trained on T2w of 0.8-1 mm
#: in-plane and 2.5-4 mm slices and SWI/QSM of 0.5-0.9 mm in-plane and 1-2 mm slices (simulated).
SUPPORTED_RESOLUTION = {"T2w": (1.5, 6.5), "SWI": (1.25, 3.5), "QSM": (1.25, 3.5)}
#: how the QSM's values are taken: "auto" (must look like ppm, else the subject fails), "ppm"
#: (trusted as they are), "ppb" (divided by 1000)
QSM_UNITS = ("auto", "ppm", "ppb")


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
    need_long, need_short = MIN_FOV_MM.get(what, (0.0, 0.0))
    fov_sorted = np.sort(fov)
    if fov_sorted[1] < need_long or fov_sorted[0] < need_short:
        raise InputError(path, f"{what} field of view {tuple(int(round(f)) for f in fov)} mm "
                               f"({'x'.join(str(n) for n in img.shape[:3])} voxels) is too small to hold a "
                               f"brain (needs at least {need_long:.0f} mm in two axes and {need_short:.0f} mm "
                               "in the third)")
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


def input_flags(checks: dict) -> str:
    """The flags a subject's results carry from its input checks (``;``-separated, ``""`` if none):
    ``no_t2w``, ``no_swi`` and ``no_qsm`` (the image was missing; without QSM a calcification cannot
    be told from a CMB by its sign, without SWI the SWI contrast of each call is not known),
    ``outside_supported_resolution`` (run with ``allow_resolution``) and ``qsm_units_unverified``
    (a QSM that did not look like ppm, trusted with ``qsm_units="ppm"``); from the preprocessing
    report, ``registration_suspect`` (the SWI/QSM fitted the T2w better in another pose)."""
    flags = []
    for key, flag in (("t2_file", "no_t2w"), ("swi_file", "no_swi"), ("qsm_file", "no_qsm")):
        if key in checks and checks[key] is None:
            flags.append(flag)
    if checks.get("outside_supported_resolution"):
        flags.append("outside_supported_resolution")
    if any(qc and qc.get("suspect") for qc in (checks.get("registration_qc") or {}).values()):
        flags.append("registration_suspect")
    if checks.get("qsm_units") == "ppm" and checks.get("qsm", {}).get("units_check", "ppm (plausible)") != "ppm (plausible)":
        flags.append("qsm_units_unverified")
    return ";".join(flags)


def check_resolution(path, what: str, voxel_size_mm, allow: bool = False) -> str | None:
    """Refuse a voxel size outside :data:`SUPPORTED_RESOLUTION` (one line naming the file), or with
    ``allow`` return that line as a warning; ``None`` when supported."""
    inplane_max, slice_max = SUPPORTED_RESOLUTION[what]
    z = np.sort(np.asarray(voxel_size_mm, dtype=float))
    if z[1] <= inplane_max + 1e-3 and z[2] <= slice_max + 1e-3:
        return None
    problem = (f"{what} voxels {'x'.join(f'{v:.2g}' for v in voxel_size_mm)} mm are outside the supported range "
               f"(in-plane <= {inplane_max} mm, slices <= {slice_max} mm): microbleeds cannot be found reliably")
    if not allow:
        raise InputError(path, problem + "; --allow-resolution runs it anyway, flagged")
    return f"{path}: {problem} (run anyway: --allow-resolution)"


def check_inputs(t2_file, swi_file, qsm_file, mask_file=None, *, qsm_units: str = "auto",
                 allow_resolution: bool = False, qsm_out=None) -> dict:
    """Check the inputs (and an optional brain mask on the reference grid: the T2w's, else the SWI's,
    else the QSM's); return a report dict. Any of ``t2_file``, ``swi_file``, ``qsm_file`` may be
    ``None`` (a subject with a subset of the three), not all of them.

    Raises :class:`InputError` on the first hard failure, naming the file. A QSM whose values do not
    look like ppm fails unless ``qsm_units`` is ``"ppm"`` (trusted, with a warning) or ``"ppb"``
    (divided by 1000 into ``qsm_out``, whose path the report gives as ``qsm_file``); a resolution
    outside :data:`SUPPORTED_RESOLUTION` fails unless ``allow_resolution`` (then a warning, and
    ``report["outside_supported_resolution"]``). Warnings are listed in ``report["warnings"]``.
    """
    if qsm_units not in QSM_UNITS:
        raise InputError("--qsm-units", f"must be one of {', '.join(QSM_UNITS)}, got {qsm_units!r}")
    if t2_file is None and swi_file is None and qsm_file is None:
        raise InputError("inputs", "no T2w, SWI or QSM image: nothing to process")
    report = {"warnings": [], "qsm_units": qsm_units}
    # a missing image is None here and in the report (its flag: input_flags); any non-empty subset runs
    report["t2_file"] = report["swi_file"] = report["qsm_file"] = None
    images, ref = [], None
    if t2_file is not None:
        ref, report["t2"] = check_image(t2_file, "T2w")
        report["t2_file"] = str(t2_file)
        images.append((t2_file, "T2w", "t2"))
    if swi_file is not None:
        swi, report["swi"] = check_image(swi_file, "SWI")
        sd = np.asarray(swi.dataobj)
        if np.count_nonzero(sd < 0) > 0.2 * max(np.count_nonzero(sd), 1):
            raise InputError(swi_file, "SWI magnitude is negative in over 20% of voxels; is this a phase or QSM image?")
        report["swi_file"] = str(swi_file)
        images.append((swi_file, "SWI", "swi"))
        ref = swi if ref is None else ref
    if qsm_file is not None:
        report["qsm_file"] = _check_qsm(qsm_file, qsm_units, qsm_out, report)
        images.append((report["qsm"]["file"], "QSM", "qsm"))
        ref = load_image(qsm_file, what="QSM") if ref is None else ref
    outside = [w for w in (check_resolution(f, what, report[key]["voxel_size_mm"], allow_resolution)
                           for f, what, key in images) if w]
    report["outside_supported_resolution"] = bool(outside)
    report["warnings"] += outside
    if mask_file is not None:  # on the reference's grid: the T2w, else the SWI, else the QSM
        mask, report["mask"] = check_image(mask_file, "brain mask")
        if mask.shape[:3] != ref.shape[:3] or not np.allclose(mask.affine, ref.affine, atol=1e-3):
            raise InputError(mask_file, f"brain mask grid {mask.shape[:3]} does not match the {images[0][1]} grid "
                                        f"{ref.shape[:3]} (same shape and affine needed)")
        vals = np.unique(np.asarray(mask.dataobj))
        if vals.size > 2:
            raise InputError(mask_file, f"brain mask is not binary ({vals.size} distinct values)")
    return report


def _check_qsm(qsm_file, qsm_units: str, qsm_out, report: dict) -> str:
    """Check the QSM and its units (``report["qsm"]``, warnings added); return the path of the map
    in ppm (``qsm_out`` when converted from ppb)."""
    qsm, report["qsm"] = check_image(qsm_file, "QSM", allow_empty=False)
    qd = np.asarray(qsm.dataobj)
    if qsm_units == "ppb":
        from deepmir_tasks.io import save_nifti

        qd = qd / 1000.0
        qsm_file = save_nifti(qd.astype(np.float32), qsm.affine, qsm_out or "qsm_ppm.nii.gz", header=qsm.header)
        report["warnings"].append(f"{report['qsm']['file']}: QSM given in ppb (--qsm-units ppb), divided by 1000")
    verdict = guess_qsm_units(qd)
    report["qsm"]["units_check"] = verdict or "ppm (plausible)"
    if verdict and qsm_units == "ppm":
        msg = f"{report['qsm']['file']}: QSM {verdict} (trusted as ppm: --qsm-units ppm)"
        warnings.warn(msg, QsmScaleWarning, stacklevel=3)
        log.warning(msg)
        report["warnings"].append(msg)
    elif verdict:
        hint = ("; if it is in ppb, --qsm-units ppb converts it" if "ppb" in verdict else "")
        raise InputError(report["qsm"]["file"], f"QSM {verdict}{hint}; --qsm-units ppm trusts the values as they are")
    return str(qsm_file)
