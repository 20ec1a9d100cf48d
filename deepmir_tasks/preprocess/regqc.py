"""Is a rigid registration to the T2w right? The check run after registering the SWI.

Images of one session share the scanner's coordinates up to head motion, so a registration that
needs a large rotation, or that fits better in another pose, means a broken header, not a moved
head. :func:`check_alignment` measures both:

1. the rotation of the transform found: over :data:`MAX_ROTATION_DEG` the headers disagree;
2. whether another pose fits better (a warning, not a failure: see :func:`check_alignment`): the moving image is registered coarsely (both images smoothed
   and resampled to :data:`QC_VOXEL_MM`) from the pose found and from alternative starts — mirrored
   left–right (aligned by centres of mass), and the headers' own pose rotated ±30° about the
   left–right and front–back axes through the brain's centre — and the found pose's
   Mattes mutual information must be the best, within :data:`MARGIN` of its size. A mirrored pose
   that fits better means a header flipped left–right; a rotated one, a header rotated beyond what
   the registration recovers.

Measured on a full-size simulated subject (2 mm check, SWI onto T2w), mutual information of each
start (lower is better): aligned: found -0.948, mirrored -0.888, rotated -0.04 to -0.34; T2w header
flipped left-right: found -0.887, mirrored -0.949; T2w header rotated 30° about left-right: found
-0.368 (the registration stopped at 10°), the +30° start -0.948. A rotation about the vertical axis
is recovered by the registration itself (34° found) and caught by the rotation limit.

3. whether the SWI is of the QSM's head (:func:`check_same_head`, run when the QSM is registered
   by the SWI): an SWI of another head registers well to the T2w (heads look alike at the scale of
   mutual information), but it is not dark where this head's QSM is paramagnetic (veins, nuclei,
   lesions). Measured with :func:`swi_qsm_agreement` on valid and swapped pairs
   (``benchmarks/bench_regqc.py``; figures in :func:`check_same_head`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from deepmir_tasks.io import InputError, load_image

__all__ = ["MAX_ROTATION_DEG", "MARGIN", "QC_VOXEL_MM", "MIN_SWI_DARKENING", "check_alignment",
           "check_same_head", "rotation_deg", "swi_qsm_agreement"]

#: rotation (degrees) beyond which two images of one session are taken to have disagreeing headers
MAX_ROTATION_DEG = 20.0
#: an alternative pose must fit better by this fraction of the found pose's mutual information
MARGIN = 0.03
#: voxel size (mm) of the coarse registrations
QC_VOXEL_MM = 3.0
#: scale (mm) of the high-pass filter of :func:`swi_qsm_agreement`
HIGHPASS_MM = 4.0
#: fraction of the QSM's voxels (its brightest, after the high-pass) where :func:`swi_qsm_agreement`
#: reads the SWI: 0.1 %, the veins and lesions; at 1 % the tissue contrast of grey and white matter,
#: whose sign differs between simulators (and scanners), took over on DEEPMIR's own simulator
PEAK_FRACTION = 0.001
#: fewest voxels the SWI and QSM must share for a measurement (10 at the QSM's peaks)
MIN_SHARED_VOXELS = 10_000
#: an SWI whose contrast at its QSM's peaks (:func:`swi_qsm_agreement`, robust z) is above this is
#: not of the QSM's head (see :func:`check_same_head` for the measurements)
MIN_SWI_DARKENING = -1.0
#: alternative starts: name -> (mirror left-right, rotation axis (0 = left-right, 1 = front-back), degrees)
ALTERNATIVES = {"mirrored left-right": (True, None, 0.0),
                "rotated +30° about the left-right axis": (False, 0, 30.0),
                "rotated -30° about the left-right axis": (False, 0, -30.0),
                "rotated +30° about the front-back axis": (False, 1, 30.0),
                "rotated -30° about the front-back axis": (False, 1, -30.0)}


def rotation_deg(matrix) -> float:
    """Rotation angle (degrees) of the linear part of a 4×4 rigid transform."""
    r = np.asarray(matrix, float)[:3, :3]
    return float(np.degrees(np.arccos(np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0))))


def _rotation_about(axis: int, degrees: float, centre) -> np.ndarray:
    t = np.radians(degrees)
    c, s = np.cos(t), np.sin(t)
    i, j = [(1, 2), (0, 2), (0, 1)][axis]
    rot = np.eye(4)
    rot[i, i], rot[i, j], rot[j, i], rot[j, j] = c, -s, s, c
    shift, back = np.eye(4), np.eye(4)
    shift[:3, 3], back[:3, 3] = -np.asarray(centre), np.asarray(centre)
    return back @ rot @ shift


def _coarse(img, voxel_mm: float):
    from deepmir_tasks.preprocess._ants import resample_to_voxel

    if min(img.spacing) < 1.0:  # a very fine image (e.g. 0.4 mm SWI): to 1 mm first, cheaply
        img = resample_to_voxel(img, 1.0, smooth=False)
    return resample_to_voxel(img, voxel_mm)


def _handedness(affine) -> int:
    """+1 or -1: the sign of the determinant of an image's voxel-to-world matrix."""
    return 1 if np.linalg.det(np.asarray(affine)[:3, :3]) > 0 else -1


def check_alignment(moving_file, t2_file, transform_file, mask_file, *, what: str = "SWI",
                    t2_source=None) -> dict:
    """Check the rigid transform ``transform_file`` (moving → T2w, from
    :func:`~deepmir_tasks.preprocess.register.register_rigid`); return the measurements.

    Raises :class:`InputError` naming ``moving_file`` (and the T2w in the message) when the
    rotation exceeds :data:`MAX_ROTATION_DEG`. An alternative pose that fits better is not a
    failure but ``qc["suspect"]``, a sentence the report shows and the tables flag
    (``registration_suspect``): the test raised false alarms on valid data (2 of 8 subjects of the
    independent generator's 7 T condition, MI 9-10 % better in a wrong pose, against 6-13 % for the
    flips it is meant to catch), so it cannot fail a subject alone. Measured again for the mirrored
    pose alone (``benchmarks/bench_regqc.py --flip``; gain = (found - mirrored) / |found|, > 0 when
    the mirror fits better): DEEPMIR's simulator, valid -0.10 to -0.17 (4 subjects), T2w header
    flipped +0.13 to +0.20 (3); the independent generator at 7 T, valid -0.03 to -0.36 (5), flipped
    -0.22 to +0.005 (4: its nearly symmetric heads fit as well either way); and valid subjects of
    its stress runs reached +0.25 (1.5 T, 3 mm slices) and +0.35 (noisy). No margin on the mirrored
    fit fails the flips without failing valid subjects, so it alone stays a flag. A header flipped
    left-right also reverses the handedness of its voxel axes, which images of one session share
    (all 140 valid subjects of both generators here): when the two handednesses differ **and** the
    mirrored pose fits better, the subject fails, naming the T2w (:class:`InputError`). A flip on a
    nearly symmetric head, where the mirrored pose fits no better, stays unseen.
    """
    import ants

    from deepmir_tasks.preprocess._ants import (ants_affine, ants_transform_to_ras, ras_to_ants_transform,
                                                seeded, set_threads, to_ants, write_affine_transform)

    set_threads()
    found = ants_transform_to_ras(transform_file)
    qc = {"rotation_deg": round(rotation_deg(found), 1),
          "translation_mm": round(float(np.linalg.norm(found[:3, 3])), 1)}
    t2_source = t2_source if t2_source is not None else t2_file   # the user's file, for messages
    t2_name = Path(str(t2_source)).name
    if qc["rotation_deg"] > MAX_ROTATION_DEG:
        raise InputError(moving_file, f"{what} needs a {qc['rotation_deg']:.0f}° rotation to meet the T2w "
                                      f"{t2_name}; images of one session agree within a few degrees, so one of "
                                      "the two headers is rotated: fix it and run again")
    t2_img, moving_img = load_image(t2_file, what="T2w"), load_image(moving_file, what=what)
    fixed = _coarse(to_ants(t2_img), QC_VOXEL_MM)
    moving = _coarse(to_ants(moving_img), QC_VOXEL_MM)
    m = load_image(mask_file, what="brain mask")
    inside = np.argwhere(np.asarray(m.dataobj) > 0)
    centre = m.affine[:3, :3] @ inside.mean(axis=0) + m.affine[:3, 3]
    mask = ants.resample_image(to_ants((np.asarray(m.dataobj) > 0).astype(np.float32), m.affine),
                               fixed.spacing, use_voxels=False, interp_type=1)
    mask = ants.resample_image_to_target(mask, fixed, interp_type="nearestNeighbor")
    mirrored = to_ants(moving.numpy(), np.diag([-1.0, 1.0, 1.0, 1.0]) @ ants_affine(moving))

    def fit(mov, start_ras) -> float:
        with tempfile.TemporaryDirectory(prefix="deepmir_regqc_") as tmp, seeded():
            init = None
            if start_ras is not None:
                init = [str(write_affine_transform(ras_to_ants_transform(start_ras), Path(tmp) / "start.mat"))]
            reg = ants.registration(fixed=fixed, moving=mov, type_of_transform="Rigid", mask=mask,
                                    initial_transform=init, aff_iterations=(60, 30), aff_shrink_factors=(2, 1),
                                    aff_smoothing_sigmas=(1, 0), aff_random_sampling_rate=0.3,
                                    outprefix=str(Path(tmp) / "qc_"))
            warped = ants.apply_transforms(fixed, mov, reg["fwdtransforms"])
            return float(ants.image_mutual_information(fixed, warped))

    qc["mutual_information"] = round(fit(moving, found), 4)
    alternatives = {}
    for name, (mirror, axis, degrees) in ALTERNATIVES.items():
        # from the scanner's pose (the images' own headers), not the pose found: a rotated header
        # is a rotation away from the former
        start = None if mirror else _rotation_about(axis, degrees, centre)
        alternatives[name] = round(fit(mirrored if mirror else moving, start), 4)
    qc["alternatives"] = alternatives
    best = min(alternatives, key=alternatives.get)
    qc["suspect"] = None
    qc["handedness_differs"] = bool(_handedness(t2_img.affine) != _handedness(moving_img.affine))
    if alternatives[best] < qc["mutual_information"] - MARGIN * abs(qc["mutual_information"]):
        if best.startswith("mirrored") and qc["handedness_differs"]:
            raise InputError(t2_source, f"T2w header is mirrored against the {what} {Path(str(moving_file)).name}: "
                                      "their voxel axes have opposite handedness and the images fit better "
                                      f"mirrored left-right (mutual information {alternatives[best]:.3f} vs "
                                      f"{qc['mutual_information']:.3f} as registered), so one of the two headers "
                                      "is flipped left-right: fix it and run again")
        why = ("one of the two headers may be flipped left-right" if best.startswith("mirrored")
               else "a header may be rotated beyond what registration recovers, or the images may not be of one head")
        qc["suspect"] = (f"{Path(str(moving_file)).name} may not line up with the T2w {t2_name}: it fits better "
                         f"{best} (mutual information {alternatives[best]:.3f} vs {qc['mutual_information']:.3f} "
                         f"as registered), so {why}; check the registration in the report")
    return qc


def swi_qsm_agreement(swi_file, qsm_file, mask_file=None, swi_transform=None, qsm_transform=None, *,
                      voxel_mm: float = 1.0, highpass_mm: float = HIGHPASS_MM, erode_mm: float = 3.0) -> dict:
    """Is the SWI dark where its QSM is paramagnetic? (Are the two of one head?)

    The QSM is brought onto the SWI's grid (at least ``voxel_mm``): by the two headers when no
    transforms are given (an SWI and a QSM of one acquisition share one scanner space), else through
    its own transform to the T2w and the SWI's back. Both are high-pass filtered (the image minus
    its local mean over a Gaussian of ``highpass_mm``; the SWI's logarithm) inside the QSM's support
    (non-zero voxels) eroded by ``erode_mm``, and within the brain mask ``mask_file`` (T2w grid,
    carried by ``swi_transform``) when it leaves at least a fifth of that support. The measure is the
    median robust z-score of the SWI at the QSM's brightest :data:`PEAK_FRACTION` of voxels: veins
    and lesions are dark on the SWI and bright on the QSM, so it is clearly negative for one head and
    near 0 for an SWI of another head. Returns ``{"swi_contrast_at_qsm_peaks": z or None, "voxels":
    n}`` (``None`` when fewer than :data:`MIN_SHARED_VOXELS` are shared).
    """
    import ants
    from scipy import ndimage

    from deepmir_tasks.preprocess._ants import resample_to_voxel, set_threads, to_ants

    set_threads()
    swi = resample_to_voxel(to_ants(load_image(swi_file, what="SWI")), voxel_mm)
    qsm_img = load_image(qsm_file, what="QSM")
    qdata = np.asarray(qsm_img.dataobj, np.float32)

    def pull(data, affine, interp="linear", transforms=None, invert=None):
        moving = to_ants(data, affine)
        if transforms is None:
            return ants.resample_image_to_target(moving, swi, interp_type=interp).numpy()
        return ants.apply_transforms(fixed=swi, moving=moving, transformlist=[str(t) for t in transforms],
                                     whichtoinvert=invert, interpolator=interp).numpy()

    by = None if qsm_transform is None else dict(transforms=[qsm_transform, swi_transform], invert=[False, True])
    q = pull(qdata, qsm_img.affine, **(by or {}))
    # the support pulled over is also the QSM's field of view: outside it the resampling gives 0
    support = pull((qdata != 0).astype(np.float32), qsm_img.affine, **(by or {})) > 0.99
    spacing = np.asarray(swi.spacing, float)
    erode = max(1, int(round(erode_mm / spacing.min())))
    inside = ndimage.binary_erosion(support, np.ones((3, 3, 3), bool), iterations=erode)
    if mask_file is not None and swi_transform is not None:
        m = load_image(mask_file, what="brain mask")
        brain = pull((np.asarray(m.dataobj) > 0).astype(np.float32), m.affine, "nearestNeighbor",
                     [swi_transform], [True]) > 0.5
        if (inside & brain).sum() >= 0.2 * inside.sum():
            inside &= brain
    n = int(inside.sum())
    if n < MIN_SHARED_VOXELS:
        return {"swi_contrast_at_qsm_peaks": None, "voxels": n}
    s = swi.numpy().astype(np.float32)
    s = np.log(np.clip(s, max(float(np.percentile(s[inside], 1)), 1e-6), None))
    sigma = highpass_mm / spacing
    weight = np.maximum(ndimage.gaussian_filter(inside.astype(np.float32), sigma), 1e-3)
    a, b = (x[inside] - (ndimage.gaussian_filter(np.where(inside, x, 0), sigma) / weight)[inside] for x in (s, q))
    mad = 1.4826 * float(np.median(np.abs(a - np.median(a))))
    z = (a - np.median(a)) / max(mad, 1e-12)
    top = b >= np.percentile(b, 100.0 * (1.0 - PEAK_FRACTION))
    return {"swi_contrast_at_qsm_peaks": round(float(np.median(z[top])), 3), "voxels": n}


def check_same_head(swi_file, qsm_file, mask_file=None, swi_transform=None, qsm_transform=None) -> dict:
    """Fail when the SWI is not dark where its QSM is paramagnetic: an SWI of another head.

    Measured with the QSM placed by the headers (35 valid subjects and 35 with the next subject's
    SWI, ``benchmarks/bench_regqc.py`` for the registered form): the subject's own SWI, DEEPMIR's
    simulator -1.45 to -2.55 (4 full-size), -2.3 to -12.2 (5 of its randomised profile, 1.5-7 T),
    -2.7 to -4.0 (4 small); the independent generator -3.4 to -4.4 (3 T), -1.8 to -12.2 (6 at 7 T),
    -9.9 to -16.2 (3 at 1.5 T, 3 mm slices), -2.0 to -8.9 (3 noisy), -3.9 to -6.2 (3 with bad
    background removal), -1.8 to -2.2 (2 old, high iron), -5.4 to -10.2 (2 with 6 mm T2w slices).
    Another subject's SWI: -0.57 to +0.44. The threshold, -1.0, lies about 0.45 from each side.

    Measured by :func:`swi_qsm_agreement`: with the QSM placed by the headers when it shares the
    SWI's transform (``qsm_transform=None``); else through both transforms and, when that does not
    agree or shares too few voxels, by the headers too (a QSM registered on its own by its signed
    values may be misplaced). Above :data:`MIN_SWI_DARKENING` in every measurable placement raises
    :class:`InputError` naming ``swi_file`` (and the QSM). Returns the measurement
    (``{"swi_contrast_at_qsm_peaks": ..., "voxels": ...}``; ``None`` when the two share too few
    voxels to measure, which is left to the coverage check).
    """
    def ok(m):
        return m["swi_contrast_at_qsm_peaks"] is None or m["swi_contrast_at_qsm_peaks"] <= MIN_SWI_DARKENING

    qc = swi_qsm_agreement(swi_file, qsm_file, mask_file, swi_transform, qsm_transform)
    if qsm_transform is not None and (qc["swi_contrast_at_qsm_peaks"] is None or not ok(qc)):
        by_header = swi_qsm_agreement(swi_file, qsm_file, mask_file, swi_transform)
        if by_header["swi_contrast_at_qsm_peaks"] is not None:
            qc = {**by_header, "placed_by": "headers"}
    z = qc["swi_contrast_at_qsm_peaks"]
    if not ok(qc):
        raise InputError(swi_file, f"SWI is not darker where the QSM {Path(str(qsm_file)).name} is paramagnetic "
                                   f"(SWI contrast at the QSM's peaks {z:+.2f} robust SD; an SWI and a QSM of one "
                                   f"head measure below {MIN_SWI_DARKENING:+.1f}): the SWI (or the QSM) is of "
                                   "another head; put the subject's own files in its folder")
    return qc
