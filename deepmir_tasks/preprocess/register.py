"""Rigid registration of SWI (and QSM) onto the T2w with mutual information (ANTsPy).

The transform file written here is the ANTs/ITK one (LPS, fixed T2w point → moving point),
directly usable by ``ants.apply_transforms``; :func:`transform_to_ras` turns it into the RAS
4×4 that maps moving-session world mm to T2w-session world mm.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from deepmir_tasks.io import atomic_path, load_image

__all__ = ["RIGID_PRESETS", "register_rigid", "register_to_t2", "same_grid", "same_space", "transform_to_ras"]

#: Settings of the rigid Mattes-MI registration. ``fast`` is the default: a three-level pyramid
#: ending at full resolution, 10 % of the fixed voxels sampled. Measured on a full-size simulated
#: subject (SWI 0.72 × 0.72 × 1.03 mm onto T2w 0.97 × 0.97 × 3.1 mm, 2 busy cores): fast 7 s /
#: 0.03 mm mean error in the brain; quick (ANTs' QuickRigid) 5.5 s / 0.18 mm; accurate (ANTs' Rigid)
#: about 40 s / 0.02 mm.
RIGID_PRESETS = {
    "fast": dict(aff_iterations=(100, 50, 10), aff_shrink_factors=(4, 2, 1),
                 aff_smoothing_sigmas=(2, 1, 0), aff_random_sampling_rate=0.1),
    "quick": dict(aff_iterations=(20, 20, 0, 0), aff_shrink_factors=(6, 4, 2, 1),
                  aff_smoothing_sigmas=(3, 2, 1, 0), aff_random_sampling_rate=0.2),
    "accurate": dict(aff_iterations=(2100, 1200, 1200, 10), aff_shrink_factors=(6, 4, 2, 1),
                     aff_smoothing_sigmas=(3, 2, 1, 0), aff_random_sampling_rate=0.2),
}


def same_grid(img_a, img_b, atol_mm: float = 1e-3) -> bool:
    """True when two nibabel images share shape and voxel-to-world affine."""
    return (tuple(img_a.shape[:3]) == tuple(img_b.shape[:3])
            and np.allclose(img_a.affine, img_b.affine, atol=atol_mm))


def transform_to_ras(transform_file) -> np.ndarray:
    """RAS 4×4 mapping moving world mm → fixed (T2w) world mm for an ANTs rigid/affine file."""
    from deepmir_tasks.preprocess._ants import ants_transform_to_ras

    return ants_transform_to_ras(transform_file)


def register_rigid(moving_file, fixed_file, out_file, *, fixed_mask_file=None, preset: str = "fast",
                   moving_voxel_mm: float | None = 1.0, what: str = "moving image") -> Path:
    """Rigidly register ``moving_file`` onto ``fixed_file`` (Mattes MI); write the ANTs ``.mat``.

    ``fixed_mask_file`` (e.g. a dilated brain mask on the fixed grid) restricts the metric.
    A moving image finer than ``moving_voxel_mm`` is first smoothed and resampled to it (the
    transform lives in world space, so this only saves time). The registration starts from the
    images' centres of mass.
    """
    from deepmir_tasks.preprocess._ants import resample_to_voxel, seeded, set_threads, to_ants

    set_threads()
    import ants

    if preset not in RIGID_PRESETS:
        raise ValueError(f"unknown registration preset {preset!r}; choose from {sorted(RIGID_PRESETS)}")
    moving = to_ants(load_image(moving_file, what=what))
    if moving_voxel_mm and min(moving.spacing) < moving_voxel_mm:
        moving = resample_to_voxel(moving, moving_voxel_mm)
    fixed = to_ants(load_image(fixed_file, what="T2w"))
    mask = None
    if fixed_mask_file is not None:
        m = load_image(fixed_mask_file, what="brain mask")
        mask = to_ants(_dilate(np.asarray(m.dataobj) > 0, 3).astype(np.float32), m.affine)
    settings = dict(RIGID_PRESETS[preset])
    # small images: sample densely (the coarsest level of a 64^3 image has only a few thousand voxels)
    n_fixed = int(np.prod(fixed.shape))
    settings["aff_random_sampling_rate"] = float(min(1.0, max(settings["aff_random_sampling_rate"],
                                                              2e5 / n_fixed)))
    with _tmpdir() as tmp, seeded():
        reg = ants.registration(fixed=fixed, moving=moving, type_of_transform="Rigid", mask=mask,
                                outprefix=str(Path(tmp) / "reg_"), **settings)
        fwd = reg["fwdtransforms"][0]
        with atomic_path(out_file) as dst:
            shutil.copyfile(fwd, dst)
    return Path(out_file)


def register_to_t2(moving_file, t2_file, out_file, *, mask_file=None, same_session_file=None,
                   same_session_transform=None, preset: str = "fast", what: str = "SWI",
                   check: bool = True, t2_source=None) -> tuple[Path, dict]:
    """Register one image to the T2w, or reuse a transform of an image of the same scanner space.

    QSM usually comes from the same gradient echo as the SWI: if ``moving_file`` lies in the same
    scanner space as ``same_session_file`` (whose transform is ``same_session_transform``; see
    :func:`same_space`: same grid, or a grid of its own over the same place, as when a toolbox crops
    or pads), that transform is copied. A registration made here is checked by
    :func:`~deepmir_tasks.preprocess.regqc.check_alignment` (with ``check`` and a brain mask), which
    raises :class:`InputError` naming ``moving_file`` when the result cannot be right. A QSM is then
    checked against that image (the SWI) by :func:`~deepmir_tasks.preprocess.regqc.check_same_head`,
    which raises naming the SWI when the two are not of one head. Returns the transform file and the
    checks' measurements (with ``"shared_with"`` for a shared transform). ``t2_source`` is the
    user's T2w that ``t2_file`` (e.g. its bias-corrected copy) was made from, named in messages.
    """
    qc: dict = {}
    shared = False
    if same_session_file is not None and same_session_transform is not None:
        shared = same_space(load_image(moving_file, what=what, allow_empty=True),
                            load_image(same_session_file, allow_empty=True))
    if shared:
        with atomic_path(out_file) as dst:
            shutil.copyfile(same_session_transform, dst)
        out, qc = Path(out_file), {"shared_with": Path(str(same_session_file)).name}
    else:
        out = register_rigid(moving_file, t2_file, out_file, fixed_mask_file=mask_file, preset=preset, what=what)
    if check and what == "QSM" and same_session_file is not None and same_session_transform is not None:
        from deepmir_tasks.preprocess.regqc import check_same_head

        qc.update(check_same_head(same_session_file, moving_file, mask_file, same_session_transform,
                                  None if shared else out))
    if check and not shared and mask_file is not None:
        from deepmir_tasks.preprocess.regqc import check_alignment

        qc.update(check_alignment(moving_file, t2_file, out, mask_file, what=what, t2_source=t2_source))
    return out, qc


def same_space(img_a, img_b, min_overlap: float = 0.5, max_angle_deg: float = 1.0) -> bool:
    """True when two images lie in one scanner space: the same grid, or axes within
    ``max_angle_deg`` of each other and world boxes overlapping by at least ``min_overlap`` of the
    smaller box (a grid of its own over the same place: cropped, padded or resampled)."""
    if same_grid(img_a, img_b):
        return True
    dirs = [img.affine[:3, :3] / np.linalg.norm(img.affine[:3, :3], axis=0) for img in (img_a, img_b)]
    cosines = np.abs(np.sum(dirs[0] * dirs[1], axis=0))
    if np.degrees(np.arccos(np.clip(cosines.min(), -1.0, 1.0))) > max_angle_deg:
        return False
    boxes = [_world_box(img) for img in (img_a, img_b)]
    lo, hi = np.maximum(boxes[0][0], boxes[1][0]), np.minimum(boxes[0][1], boxes[1][1])
    inter = float(np.prod(np.clip(hi - lo, 0, None)))
    smaller = min(float(np.prod(b[1] - b[0])) for b in boxes)
    return smaller > 0 and inter / smaller >= min_overlap


def _world_box(img):
    """(low, high) world corners of an image's field of view (voxel edges)."""
    shape = np.asarray(img.shape[:3], dtype=float)
    corners = np.array([[i, j, k] for i in (-0.5, shape[0] - 0.5) for j in (-0.5, shape[1] - 0.5)
                        for k in (-0.5, shape[2] - 0.5)])
    world = corners @ img.affine[:3, :3].T + img.affine[:3, 3]
    return world.min(axis=0), world.max(axis=0)


def _dilate(mask: np.ndarray, iterations: int) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_dilation(mask, iterations=iterations) if iterations > 0 else mask


def _tmpdir():
    import tempfile

    return tempfile.TemporaryDirectory(prefix="deepmir_reg_")
