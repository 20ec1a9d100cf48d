"""The working grid and resampling into it.

The working grid is the T2w's space (its axes and world coordinates) at an isotropic voxel size
(default 1 mm, so that a 3 mm T2w slice does not swallow a 2 mm microbleed), cropped to the brain's
bounding box plus a margin. The grid is recorded in each output image's affine.

Interpolation: SWI and QSM use B-spline (3rd order) by default, which kept the peak of simulated
2–3 mm lesions better than linear (figures in benchmarks/bench_preprocess.py); masks use nearest
neighbour or, for binary masks, linear interpolation thresholded at 0.5 (the same
as nearest at equal voxel sizes, smoother from thick slices); label maps go through :func:`resample_labels`, which keeps every labelled component.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deepmir_tasks.io import InputError, load_image, load_mask, save_nifti

__all__ = ["INTERPOLATORS", "working_grid", "make_grid", "resample_to_grid", "resample_labels",
           "coverage_fraction"]

INTERPOLATORS = {
    "linear": "linear",
    "bspline": "bSpline",
    "lanczos": "lanczosWindowedSinc",
    "nearest": "nearestNeighbor",
    "mask": "linear",  # binary masks: linear, then >= 0.5 (smoother than nearest from thick slices)
}


def working_grid(reference_img, mask=None, voxel_size: float = 1.0, margin_mm: float = 8.0):
    """``(shape, affine)`` of the working grid: ``reference_img``'s axes at ``voxel_size`` mm.

    With ``mask`` (a boolean array on the reference grid) the grid covers the mask's bounding box
    plus ``margin_mm``; otherwise the whole field of view.
    """
    if not voxel_size > 0:
        raise ValueError(f"voxel_size must be positive, got {voxel_size}")
    aff = np.asarray(reference_img.affine, dtype=float)
    shape = np.asarray(reference_img.shape[:3])
    zooms = np.linalg.norm(aff[:3, :3], axis=0)
    if mask is not None and np.any(mask):
        idx = np.argwhere(mask)
        lo = idx.min(axis=0).astype(float)
        hi = idx.max(axis=0).astype(float)
        # voxel centres → extent in mm along each axis, with half a voxel on each side + margin
        lo_mm = lo * zooms - 0.5 * zooms - margin_mm
        hi_mm = hi * zooms + 0.5 * zooms + margin_mm
    else:
        lo_mm = -0.5 * zooms
        hi_mm = (shape - 0.5) * zooms
    n = np.maximum(np.ceil((hi_mm - lo_mm) / voxel_size).astype(int), 1)
    dirs = aff[:3, :3] / zooms
    new = np.eye(4)
    new[:3, :3] = dirs * voxel_size
    first_centre_mm = lo_mm + 0.5 * voxel_size
    new[:3, 3] = aff[:3, 3] + dirs @ first_centre_mm
    return tuple(int(v) for v in n), new


def make_grid(t2_file, out_file, *, mask_file=None, voxel_size: float = 1.0, margin_mm: float = 8.0) -> Path:
    """Write an empty uint8 image that defines the working grid (the reference for resampling)."""
    t2 = load_image(t2_file, what="T2w")
    mask = None
    if mask_file is not None:
        mask = load_mask(mask_file, t2.shape, "T2w")
    shape, affine = working_grid(t2, mask, voxel_size, margin_mm)
    return save_nifti(np.zeros(shape, np.uint8), affine, out_file, dtype=np.uint8)


def _apply(moving_img, reference_img, transform_file, interpolation):
    from deepmir_tasks.preprocess._ants import set_threads, to_ants

    set_threads()
    import ants

    if interpolation not in INTERPOLATORS:
        raise ValueError(f"interpolation must be one of {sorted(INTERPOLATORS)}, not {interpolation!r}")
    set_threads()
    fixed = to_ants(np.zeros(reference_img.shape[:3], np.float32), reference_img.affine)
    moving = to_ants(moving_img)
    tl = [str(transform_file)] if transform_file is not None else []
    out = ants.apply_transforms(fixed=fixed, moving=moving, transformlist=tl,
                                interpolator=INTERPOLATORS[interpolation], defaultvalue=0)
    return np.asarray(out.numpy(), dtype=np.float32)


def coverage_fraction(moving_img, reference_img, mask, transform_file=None) -> float:
    """Fraction of ``mask`` voxels (reference grid) that fall inside the moving image's field of view."""
    ones = type(moving_img)(np.ones(moving_img.shape[:3], np.float32), moving_img.affine)
    inside = _apply(ones, reference_img, transform_file, "linear") > 0.5
    n = int(np.count_nonzero(mask))
    return float(np.count_nonzero(inside & mask)) / n if n else 0.0


def resample_to_grid(in_file, reference_file, out_file, *, transform_file=None,
                     interpolation: str = "bspline", mask_file=None, min_coverage: float = 0.9,
                     what: str = "image") -> Path:
    """Resample ``in_file`` into the grid of ``reference_file`` (through ``transform_file`` if given).

    With ``mask_file`` (a brain mask on the reference grid), raise :class:`InputError` naming
    ``in_file`` when less than ``min_coverage`` of the brain falls inside its field of view.
    """
    img = load_image(in_file, what=what, allow_empty=True)
    ref = load_image(reference_file, what="reference grid", allow_empty=True)
    if mask_file is not None:
        frac = coverage_fraction(img, ref, load_mask(mask_file, ref.shape, "grid"), transform_file)
        if frac < min_coverage:
            raise InputError(in_file, f"{what} field of view covers only {100 * frac:.0f}% of the T2w brain "
                                      f"after registration (need {100 * min_coverage:.0f}%)")
    data = _apply(img, ref, transform_file, interpolation)
    dtype = np.float32
    if interpolation == "mask":
        data = (data >= 0.5).astype(np.uint8)
        dtype = np.uint8
    elif interpolation == "nearest":
        data = np.rint(data)
        dtype = np.uint8 if data.min() >= 0 and data.max() <= 255 else np.int32
    return save_nifti(data.astype(dtype), ref.affine, out_file, dtype=dtype)


def resample_labels(label_file, reference_file, out_file, *, transform_file=None) -> Path:
    """Nearest-neighbour resampling of a label map that keeps every labelled component.

    Each connected component (26-connectivity, per label) that nearest neighbour would lose is
    put back as the voxel of the reference grid nearest to its centre of mass (when that voxel is
    inside the grid and not already labelled).
    """
    import cc3d

    lab_img = load_image(label_file, what="label map", allow_empty=True)
    ref = load_image(reference_file, what="reference grid", allow_empty=True)
    labels = np.rint(np.asarray(lab_img.dataobj)).astype(np.int32)
    comp = cc3d.connected_components(labels, connectivity=26, out_dtype=np.uint32).astype(np.int32)
    n = int(comp.max())
    comp_class = np.zeros(n + 1, np.int32)
    comp_class[comp.ravel()] = labels.ravel()
    comp_img = type(lab_img)(comp.astype(np.float32), lab_img.affine)
    res = np.rint(_apply(comp_img, ref, transform_file, "nearest")).astype(np.int64)
    res[(res < 0) | (res > n)] = 0
    present = np.zeros(n + 1, bool)
    present[np.unique(res)] = True
    missing = [c for c in range(1, n + 1) if not present[c]]
    if missing:
        from scipy import ndimage

        centres = np.asarray(ndimage.center_of_mass(np.ones_like(comp), comp, missing), dtype=float)
        world = lab_img.affine[:3, :3] @ centres.T + lab_img.affine[:3, 3:4]  # (3, k) RAS
        if transform_file is not None:
            from deepmir_tasks.preprocess._ants import ants_transform_to_ras

            m2f = ants_transform_to_ras(transform_file)
            world = m2f[:3, :3] @ world + m2f[:3, 3:4]
        ijk = np.rint(np.linalg.solve(ref.affine[:3, :3], world - ref.affine[:3, 3:4])).astype(int).T
        for c, v in zip(missing, ijk):
            if np.all(v >= 0) and np.all(v < np.asarray(res.shape)) and res[tuple(v)] == 0:
                res[tuple(v)] = c
    out = comp_class[res]
    dtype = np.uint8 if out.min() >= 0 and out.max() <= 255 else np.int32
    return save_nifti(out.astype(dtype), ref.affine, out_file, dtype=dtype)
