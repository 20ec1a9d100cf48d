"""Conversions between nibabel (RAS) and ANTs (LPS) images and transforms.

nibabel affines map voxel indices to RAS+ world millimetres; ITK/ANTs images and transforms
live in LPS+ physical space. The two differ by a flip of the first two axes,
``F = diag(-1, -1, 1)``. Everything here converts explicitly (no reliance on header units)
so that the rest of the package can speak RAS only.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = [
    "LPS",
    "to_ants",
    "to_nibabel",
    "read_affine_transform",
    "ants_transform_to_ras",
    "ras_to_ants_transform",
    "write_affine_transform",
    "set_threads",
    "resample_to_voxel",
]

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def set_threads(n: int | None = None) -> None:
    """Tell ITK how many threads to use: ``n``, else an existing setting, else ``deepmir_tasks.threads``.

    Call before the first ANTs computation of the process (ITK reads the variable once).
    """
    if n is None:
        if os.environ.get("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "").isdigit():
            return
        from deepmir_tasks.threads import n_threads

        n = n_threads()
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(int(n))


def to_ants(img_or_data, affine=None):
    """Make an ANTs image from a nibabel image (or ``data, affine``) without touching the header."""
    import ants

    if affine is None:
        data = np.asarray(img_or_data.dataobj, dtype=np.float32)
        affine = img_or_data.affine
    else:
        data = np.asarray(img_or_data, dtype=np.float32)
    affine = np.asarray(affine, dtype=float)
    lin = affine[:3, :3]
    spacing = np.linalg.norm(lin, axis=0)
    direction = (LPS[:3, :3] @ lin) / spacing
    origin = LPS[:3, :3] @ affine[:3, 3]
    return ants.from_numpy(np.ascontiguousarray(data), origin=origin.tolist(),
                           spacing=spacing.tolist(), direction=direction)


def ants_affine(ants_img) -> np.ndarray:
    """The RAS voxel-to-world affine of an ANTs image."""
    direction = np.asarray(ants_img.direction, dtype=float)
    spacing = np.asarray(ants_img.spacing, dtype=float)
    out = np.eye(4)
    out[:3, :3] = LPS[:3, :3] @ direction @ np.diag(spacing)
    out[:3, 3] = LPS[:3, :3] @ np.asarray(ants_img.origin, dtype=float)
    return out


def to_nibabel(ants_img, dtype=np.float32):
    """Make a nibabel image (RAS affine, mm units) from an ANTs image."""
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(ants_img.numpy(), dtype=dtype), ants_affine(ants_img))
    img.header.set_xyzt_units("mm", "sec")
    img.set_data_dtype(dtype)
    return img


def resample_to_voxel(ants_img, voxel_mm: float, *, smooth: bool = True):
    """``ants_img`` resampled (linearly) to voxels of at least ``voxel_mm`` along each axis.

    With ``smooth`` it is first Gaussian-smoothed, along each axis by the growth of its voxel (as a
    FWHM, in mm), so that the coarser image is not aliased; an axis already coarser is left alone.
    The registration (:func:`~deepmir_tasks.preprocess.register.register_rigid`) and its check
    (:mod:`~deepmir_tasks.preprocess.regqc`) both bring their images down this way.
    """
    import ants

    target = tuple(max(float(sp), float(voxel_mm)) for sp in ants_img.spacing)
    if smooth:
        sigma = [max(0.0, (t - sp) / 2.355) for t, sp in zip(target, ants_img.spacing)]
        ants_img = ants.smooth_image(ants_img, sigma, sigma_in_physical_coordinates=True)
    return ants.resample_image(ants_img, target, use_voxels=False, interp_type=0)


def read_affine_transform(path) -> np.ndarray:
    """Read an ANTs/ITK linear transform file as a 4×4 matrix in LPS (fixed point → moving point)."""
    import ants

    tx = ants.read_transform(str(path))
    params = np.asarray(tx.parameters, dtype=float)
    center = np.asarray(tx.fixed_parameters, dtype=float)
    mat = params[:9].reshape(3, 3)
    trans = params[9:12]
    out = np.eye(4)
    out[:3, :3] = mat
    # ITK: y = A (x - c) + c + t
    out[:3, 3] = trans + center - mat @ center
    return out


def ants_transform_to_ras(path) -> np.ndarray:
    """The RAS 4×4 that maps *moving* world mm to *fixed* world mm for a registration result.

    ANTs stores the transform that pulls moving-image values into the fixed grid, i.e. it maps a
    fixed-space point to a moving-space point (in LPS). Its inverse, flipped to RAS, carries
    points of the moving image into the fixed image's world.
    """
    lps_fixed_to_moving = read_affine_transform(path)
    return np.linalg.inv(LPS @ lps_fixed_to_moving @ LPS)


def ras_to_ants_transform(moving_to_fixed_ras) -> np.ndarray:
    """Inverse of :func:`ants_transform_to_ras`: the LPS fixed→moving matrix."""
    return LPS @ np.linalg.inv(np.asarray(moving_to_fixed_ras, dtype=float)) @ LPS


def write_affine_transform(lps_fixed_to_moving, path) -> Path:
    """Write a 4×4 LPS fixed→moving matrix as an ITK ``.mat`` transform file (atomically)."""
    import ants

    from deepmir_tasks.io import atomic_path

    m = np.asarray(lps_fixed_to_moving, dtype=float)
    tx = ants.create_ants_transform(transform_type="AffineTransform", dimension=3,
                                    matrix=m[:3, :3], offset=m[:3, 3])
    with atomic_path(path) as tmp:
        ants.write_transform(tx, str(tmp))
    return Path(path)


class seeded:
    """Context manager: fixed random seed for ANTs registration sampling (reproducible results)."""

    def __init__(self, seed: int = 20211207):
        self.seed = int(seed)

    def __enter__(self):
        import ants.config as cfg

        self._old = cfg._random_seed
        cfg._random_seed = self.seed
        return self

    def __exit__(self, *exc):
        import ants.config as cfg

        cfg._random_seed = self._old
        return False
