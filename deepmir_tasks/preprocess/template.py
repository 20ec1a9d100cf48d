"""Affine registration of the T2w to the MNI152 2009a template, and the template itself.

nilearn ships the MNI152 2009a T1w template and its grey/white-matter and brain maps (1 mm) offline.
A T2-like template is built from them: CSF (brain minus GM and WM) bright, GM intermediate, WM dark;
outside the brain the T1w template (scalp fat is bright on both contrasts) at a low weight. The
registration itself uses Mattes mutual information, so the exact contrast mapping matters little.
It runs on 2 mm copies of both images: an affine needs no more, and it takes a few seconds.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from deepmir_tasks.io import atomic_path, load_image

__all__ = ["mni_t2_template", "register_to_template", "read_matrix", "write_matrix", "MNI_SPACE"]

MNI_SPACE = "MNI152NLin2009aSym"


@functools.lru_cache(maxsize=2)
def mni_t2_template(resolution_mm: float = 2.0):
    """``(t2_like, brain_prob)`` nibabel images of the MNI152 2009a template at ``resolution_mm``."""
    import nibabel as nib
    from nilearn import datasets
    from scipy import ndimage

    t1 = datasets.load_mni152_template(resolution=1)
    gm = datasets.load_mni152_gm_template(resolution=1).get_fdata(dtype=np.float32)
    wm = datasets.load_mni152_wm_template(resolution=1).get_fdata(dtype=np.float32)
    brain = datasets.load_mni152_brain_mask(resolution=1).get_fdata(dtype=np.float32) > 0.5
    brain = ndimage.binary_fill_holes(brain | ((gm + wm) > 0.5))
    t1d = t1.get_fdata(dtype=np.float32)
    csf = np.clip(brain.astype(np.float32) - gm - wm, 0, 1)
    prob = ndimage.gaussian_filter(brain.astype(np.float32), 0.7)
    t2 = (0.25 * wm + 0.55 * gm + 1.0 * csf) * prob + 0.3 * t1d * (1 - prob)
    affine = t1.affine
    if resolution_mm != 1.0:
        f = 1.0 / float(resolution_mm)
        t2 = ndimage.zoom(ndimage.gaussian_filter(t2, 0.4 * resolution_mm), f, order=1)
        prob = ndimage.zoom(prob, f, order=1)
        affine = affine.copy()
        affine[:3, :3] *= resolution_mm
        affine[:3, 3] += 0.5 * (resolution_mm - 1.0) * np.diag(t1.affine[:3, :3])
    return (nib.Nifti1Image(t2.astype(np.float32), affine),
            nib.Nifti1Image(np.clip(prob, 0, 1).astype(np.float32), affine))


def write_matrix(matrix, path, comment: str = "") -> Path:
    """Write a 4×4 matrix as text (one row a line), atomically."""
    with atomic_path(path) as tmp:
        np.savetxt(tmp, np.asarray(matrix, dtype=float), fmt="%.8f", header=comment)
    return Path(path)


def read_matrix(path) -> np.ndarray:
    """Read a 4×4 text matrix written by :func:`write_matrix`."""
    m = np.loadtxt(path, dtype=float)
    if m.shape != (4, 4):
        from deepmir_tasks.io import InputError

        raise InputError(path, f"expected a 4x4 matrix, got shape {m.shape}")
    return m


def register_to_template(t2_file, out_file, *, resolution_mm: float = 2.0,
                         iterations=(400, 200, 50)) -> Path:
    """Affine-register the (bias-corrected) T2w to MNI; write the RAS T2w-world → MNI-world 4×4 as text."""
    import ants

    from deepmir_tasks.preprocess._ants import ants_transform_to_ras, set_threads, to_ants
    from deepmir_tasks.preprocess.bias import head_mask

    set_threads()
    img = load_image(t2_file, what="T2w")
    data = np.asarray(img.dataobj, dtype=np.float32)
    data = np.where(head_mask(data), data, 0).astype(np.float32)
    moving = ants.resample_image(to_ants(data, img.affine), (resolution_mm,) * 3, use_voxels=False,
                                 interp_type=0)
    tmpl, _ = mni_t2_template(resolution_mm)
    fixed = to_ants(tmpl)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="deepmir_mni_") as tmp:
        # Similarity first (rotation, translation, one scale) from the centres of mass, then Affine.
        sim = ants.registration(fixed=fixed, moving=moving, type_of_transform="Similarity",
                                aff_iterations=(200, 100, 0), aff_shrink_factors=(4, 2, 1),
                                aff_smoothing_sigmas=(2, 1, 0), aff_random_sampling_rate=0.3,
                                outprefix=str(Path(tmp) / "sim_"))
        reg = ants.registration(fixed=fixed, moving=moving, type_of_transform="Affine",
                                initial_transform=sim["fwdtransforms"][0],
                                aff_iterations=tuple(iterations), aff_shrink_factors=(4, 2, 1),
                                aff_smoothing_sigmas=(2, 1, 0), aff_random_sampling_rate=0.3,
                                outprefix=str(Path(tmp) / "aff_"))
        m = ants_transform_to_ras(reg["fwdtransforms"][0])
    return write_matrix(m, out_file, comment=f"RAS world mm of the T2w -> {MNI_SPACE} world mm "
                                             "(x_mni = M @ [x, y, z, 1])")
