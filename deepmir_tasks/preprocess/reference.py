"""The reference space of a subject with a subset of T2w, SWI and QSM, and alignment by header.

A subject is processed in the space of its T2w, else its SWI, else its QSM
(:func:`deepmir_tasks.bids_names.reference_modality`). The SWI is registered onto a T2w by mutual
information (:mod:`deepmir_tasks.preprocess.register`), and a QSM in the SWI's scanner space shares
the SWI's transform. A QSM is never registered by its intensities: its signed values match no
magnitude image well. Without an SWI to register it by, :func:`align_qsm` brings a QSM onto the
reference by one of two: its **header** (identity in scanner coordinates: the two come from one
session), or its **brain support** (the non-zero region a QSM toolbox leaves, smoothed)
registered rigidly to the reference's brain mask (another session, or head motion between the
scans). The header is kept when the registration moves the brain by less than
:data:`HEADER_TOLERANCE_MM` on average (the registration's own error on simulated heads is 0.4-0.8
mm) or fits the mask worse; otherwise the registration is used. The overlap of an eroded support
with a brain mask changes little with a few mm of motion (Dice 0.87 against 0.88 for 7 mm), so it
only vetoes, it does not choose.
:func:`align_by_header` gives the identity alone (the reference image itself gets it, so that every
image has a transform to the reference).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deepmir_tasks.io import InputError, load_image, read_header

__all__ = ["HEADER_TOLERANCE_MM", "MIN_HEADER_OVERLAP", "MIN_SUPPORT_DICE", "align_by_header", "align_qsm",
           "identity_transform", "support_dice", "world_overlap"]

#: the smallest fraction of the smaller image's scanner-space box that must overlap the other's for
#: the two to be aligned by their headers
MIN_HEADER_OVERLAP = 0.5

#: the smallest Dice between a QSM's brain support, aligned, and the reference's brain mask: below it
#: the QSM is refused (not this head, or a QSM masked far from its brain)
MIN_SUPPORT_DICE = 0.7

#: the mean displacement of the brain (mm) below which a support registration is taken to confirm
#: the header (one scanner space) and the header is kept
HEADER_TOLERANCE_MM = 1.5


def identity_transform(out_file) -> Path:
    """Write the identity as an ANTs/ITK affine ``.mat`` (moving world = reference world)."""
    from deepmir_tasks.preprocess._ants import write_affine_transform

    return write_affine_transform(np.eye(4), out_file)


def world_overlap(img_a, img_b) -> float:
    """Fraction of the smaller image's scanner-space box (axis-aligned, voxel edges) inside the
    other's (0 when they do not meet)."""
    boxes = []
    for img in (img_a, img_b):
        shape = np.asarray(img.shape[:3], float)
        corners = np.array([[i, j, k] for i in (-0.5, shape[0] - 0.5) for j in (-0.5, shape[1] - 0.5)
                            for k in (-0.5, shape[2] - 0.5)])
        world = corners @ img.affine[:3, :3].T + img.affine[:3, 3]
        boxes.append((world.min(axis=0), world.max(axis=0)))
    lo, hi = np.maximum(boxes[0][0], boxes[1][0]), np.minimum(boxes[0][1], boxes[1][1])
    inter = float(np.prod(np.clip(hi - lo, 0, None)))
    smaller = min(float(np.prod(b[1] - b[0])) for b in boxes)
    return inter / smaller if smaller > 0 else 0.0


def align_by_header(moving_file, reference_file, out_file, *, what: str = "QSM",
                    reference: str = "T2w") -> tuple[Path, dict]:
    """The identity transform from ``moving_file`` to ``reference_file`` (their headers place them
    in one scanner space), after checking that the two cover one place: at least
    :data:`MIN_HEADER_OVERLAP` of the smaller one's box. Raises :class:`InputError` naming
    ``moving_file`` when they do not. Returns the transform and ``{"aligned_by": "header", ...}``."""
    if Path(str(moving_file)) != Path(str(reference_file)):
        overlap = world_overlap(load_image(moving_file, what=what, allow_empty=True),
                                load_image(reference_file, what=reference, allow_empty=True))
        if overlap < MIN_HEADER_OVERLAP:
            raise InputError(moving_file, f"{what} overlaps the {reference} in scanner space by only "
                                          f"{overlap:.0%} of its field of view, and there is no SWI to register "
                                          f"it by (a {what} is not registered by its signed values); give the "
                                          "SWI, or a QSM from the same session")
    else:
        overlap = 1.0
    return identity_transform(out_file), {"aligned_by": "header", "overlap": round(overlap, 3)}


def support_dice(support, support_affine, mask, mask_affine, moving_to_fixed=None, step: int = 2) -> float:
    """Dice of a QSM's brain support (on its grid), carried by ``moving_to_fixed`` (RAS 4x4, QSM
    world mm -> reference world mm; identity when ``None``), with the reference's brain mask,
    sampled on every ``step``-th voxel of the mask's grid."""
    from scipy import ndimage

    mask = np.asarray(mask, bool)[::step, ::step, ::step]
    fixed_affine = np.asarray(mask_affine, float) @ np.diag([step, step, step, 1.0])
    m = np.eye(4) if moving_to_fixed is None else np.asarray(moving_to_fixed, float)
    vox = np.linalg.inv(np.asarray(support_affine, float)) @ np.linalg.inv(m) @ fixed_affine
    ijk = np.indices(mask.shape, dtype=np.float32).reshape(3, -1)
    coords = vox[:3, :3] @ ijk + vox[:3, 3:4]
    carried = ndimage.map_coordinates(np.asarray(support, np.float32), coords, order=0, cval=0.0)
    carried = carried.reshape(mask.shape) > 0.5
    total = int(carried.sum()) + int(mask.sum())
    return 2.0 * float((carried & mask).sum()) / total if total else 0.0


def align_qsm(qsm_file, reference_file, mask_file, out_file, *, reference: str = "T2w",
              preset: str = "fast") -> tuple[Path, dict]:
    """The transform of a QSM onto the reference without an SWI (module docstring): its brain
    support registered rigidly to the reference's brain mask (``mask_file``, on the reference grid),
    unless that moves the brain by less than :data:`HEADER_TOLERANCE_MM` on average or fits the mask
    worse, when the header is kept. Raises :class:`InputError` naming the QSM when the chosen fit is
    below :data:`MIN_SUPPORT_DICE`. Returns the transform and ``{"aligned_by": "header" or
    "support", "support_dice": {"header": d, "support": d}, "displacement_mm": ..., "overlap": ...}``."""
    import shutil
    import tempfile

    import nibabel as nib
    from scipy import ndimage

    from deepmir_tasks.io import atomic_path
    from deepmir_tasks.preprocess.register import register_rigid, transform_to_ras
    from deepmir_tasks.preprocess.template import qsm_support

    qsm_img = load_image(qsm_file, what="QSM")
    mask_img = load_image(mask_file, what="brain mask")
    support = qsm_support(np.asarray(qsm_img.dataobj))
    mask = np.asarray(mask_img.dataobj) > 0
    overlap = world_overlap(qsm_img, read_header(reference_file, what=reference))  # its grid only
    with tempfile.TemporaryDirectory(prefix="deepmir_qsm_support_") as tmp:
        moving, fixed = Path(tmp) / "support.nii.gz", Path(tmp) / "mask.nii.gz"
        nib.save(nib.Nifti1Image(ndimage.gaussian_filter(support.astype(np.float32), 1.0), qsm_img.affine), moving)
        nib.save(nib.Nifti1Image(ndimage.gaussian_filter(mask.astype(np.float32), 1.0), mask_img.affine), fixed)
        registered = register_rigid(moving, fixed, Path(tmp) / "support.mat", preset=preset, what="QSM support")
        to_mask = transform_to_ras(registered)
        dices = {"header": support_dice(support, qsm_img.affine, mask, mask_img.affine),
                 "support": support_dice(support, qsm_img.affine, mask, mask_img.affine, to_mask)}
        moved = _mean_displacement(to_mask, mask, mask_img.affine)
        by = "support" if moved >= HEADER_TOLERANCE_MM and dices["support"] >= dices["header"] else "header"
        if dices[by] < MIN_SUPPORT_DICE:
            raise InputError(qsm_file, f"QSM's brain support does not fit the {reference}'s brain mask "
                                       f"(Dice {dices['header']:.2f} by header, {dices['support']:.2f} registered; "
                                       f"at least {MIN_SUPPORT_DICE} needed): is it this subject's?")
        if by == "support":
            with atomic_path(out_file) as dst:
                shutil.copyfile(registered, dst)
            out = Path(out_file)
        else:
            out = identity_transform(out_file)
    return out, {"aligned_by": by, "support_dice": {k: round(v, 3) for k, v in dices.items()},
                 "displacement_mm": round(moved, 2), "overlap": round(overlap, 3)}


def _mean_displacement(moving_to_fixed, mask, mask_affine, step: int = 4) -> float:
    """Mean distance (mm) a transform moves the brain mask's voxels (every ``step``-th)."""
    ijk = np.argwhere(np.asarray(mask, bool)[::step, ::step, ::step]).T * step
    if not ijk.size:
        return 0.0
    pts = mask_affine[:3, :3] @ ijk + mask_affine[:3, 3:4]
    m = np.linalg.inv(np.asarray(moving_to_fixed, float))   # fixed point -> where it came from
    return float(np.linalg.norm(m[:3, :3] @ pts + m[:3, 3:4] - pts, axis=0).mean())
