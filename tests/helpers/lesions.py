"""Constructed lesion cases for the lesion and evaluation tests (small arrays, known answers)."""

from __future__ import annotations

import numpy as np

from deepmir_tasks.io import save_nifti


def ball(shape, centre, radius_vox):
    """Boolean ball of ``radius_vox`` voxels around ``centre`` (voxel indices)."""
    grid = np.indices(shape, dtype=float)
    dist2 = sum((g - c) ** 2 for g, c in zip(grid, centre))
    return dist2 <= radius_vox ** 2


def oblique_affine(angle_deg=20.0, zooms=(0.9, 1.0, 1.2), origin=(-30.0, -40.0, -20.0)):
    """A voxel->world affine with a rotation about two axes and anisotropic voxels."""
    a, b = np.deg2rad(angle_deg), np.deg2rad(angle_deg / 2)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    aff = np.eye(4)
    aff[:3, :3] = rz @ rx @ np.diag(zooms)
    aff[:3, 3] = origin
    return aff


def labelled_volume(shape, lesions):
    """dseg with ``lesions`` = [(label value, centre ijk, radius_vox), ...]."""
    dseg = np.zeros(shape, dtype=np.uint8)
    for value, centre, radius in lesions:
        dseg[ball(shape, centre, radius)] = value
    return dseg


def write_pair(root, sub, pred_dseg, pred_affine, true_dseg, true_affine, prob_cmb=None):
    """Write a DEEPMIR derivatives subject and its annotation; return (pred_dir, truth_dir)."""
    pred_dir = root / "deepmir"
    truth_dir = root / "annotations"
    anat = pred_dir / f"sub-{sub}" / "anat"
    save_nifti(pred_dseg, pred_affine, anat / f"sub-{sub}_space-T2w_desc-deepmir_dseg.nii.gz", dtype=np.uint8)
    if prob_cmb is not None:
        save_nifti(prob_cmb, pred_affine, anat / f"sub-{sub}_space-T2w_label-CMB_probseg.nii.gz",
                   dtype=np.float32)
    save_nifti(true_dseg, true_affine, truth_dir / f"sub-{sub}" / "anat" / f"sub-{sub}_space-T2w_dseg.nii.gz",
               dtype=np.uint8)
    return pred_dir, truth_dir
