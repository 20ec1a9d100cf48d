"""Brain extraction on the T2w, offline: template prior + intensity refinement.

1. The MNI152 brain probability (nilearn, smoothed) is carried into the T2w grid through the
   affine T2w → MNI registration that the pipeline needs anyway (``t2_to_mni``).
2. The prior's uncertain rim is decided by intensity: on T2w the brain (bright CSF, grey and white
   matter) is separated from the scalp by dark skull, so voxels darker than a threshold set from the
   brain's own intensities are dropped; the component connected to the brain's core is kept, holes
   filled, and the result is smoothed by an opening/closing.
The result may never leave the dilated prior, so a failure stays local. A user's own mask can be
passed to the pipeline instead (``mask_file``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deepmir_tasks.io import load_image, save_nifti

__all__ = ["brain_prior", "refine_brain_mask", "extract_brain", "dice"]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean arrays (1.0 when both are empty)."""
    a = np.asarray(a, bool)
    b = np.asarray(b, bool)
    s = a.sum() + b.sum()
    return float(2.0 * np.count_nonzero(a & b) / s) if s else 1.0


def brain_prior(t2_img, t2_to_mni: np.ndarray) -> np.ndarray:
    """MNI brain probability resampled (linear) onto the T2w grid through the RAS ``t2_to_mni`` affine."""
    from scipy import ndimage

    from deepmir_tasks.preprocess.template import mni_t2_template

    _, prob = mni_t2_template(2.0)
    # T2 voxel -> T2 world -> MNI world -> template voxel
    vox = np.linalg.inv(prob.affine) @ np.asarray(t2_to_mni, float) @ t2_img.affine
    return ndimage.affine_transform(np.asarray(prob.dataobj, np.float32), vox[:3, :3], vox[:3, 3],
                                    output_shape=t2_img.shape[:3], order=1, mode="constant", cval=0.0)


def refine_brain_mask(data: np.ndarray, prior: np.ndarray, zooms, *, rim_mm: float = 6.0,
                      dark_fraction: float = 0.45) -> np.ndarray:
    """Decide the prior's rim by intensity (see module docstring); return a boolean mask."""
    import cc3d
    from scipy import ndimage

    zooms = np.asarray(zooms, float)
    core = prior > 0.9
    if not core.any():
        return prior > 0.5
    # the allowed region: the prior dilated by rim_mm (anisotropic voxels handled by a per-axis EDT)
    outside = ~(prior > 0.05)
    allowed = ndimage.distance_transform_edt(outside, sampling=zooms) <= rim_mm
    inner = ndimage.distance_transform_edt(prior > 0.5, sampling=zooms) > rim_mm
    vals = data[core]
    dark = dark_fraction * float(np.percentile(vals, 2))
    cand = allowed & (data > dark)
    radius = max(1, int(round(1.5 / zooms.min())))
    cand = ndimage.binary_opening(cand, structure=ndimage.generate_binary_structure(3, 1),
                                  iterations=radius)
    cand |= inner
    labels = cc3d.connected_components(cand.astype(np.uint8), connectivity=6)
    if labels.max() == 0:
        return prior > 0.5
    counts = np.bincount(labels[inner | core].ravel(), minlength=labels.max() + 1)
    counts[0] = 0
    mask = labels == int(np.argmax(counts))
    mask = ndimage.binary_closing(mask, iterations=radius, border_value=0)
    mask = ndimage.binary_fill_holes(mask)
    return mask


def extract_brain(t2_file, out_file, *, t2_to_mni_file=None, prob_file=None) -> Path:
    """Brain mask (uint8) of a bias-corrected T2w; computes the MNI affine itself if not given."""
    from deepmir_tasks.preprocess.template import read_matrix, register_to_template

    img = load_image(t2_file, what="T2w")
    if t2_to_mni_file is None:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            m = read_matrix(register_to_template(t2_file, Path(tmp) / "t2_to_mni.txt"))
    else:
        m = read_matrix(t2_to_mni_file)
    prior = brain_prior(img, m)
    data = np.asarray(img.dataobj, np.float32)
    mask = refine_brain_mask(data, prior, img.header.get_zooms()[:3])
    if prob_file is not None:
        save_nifti(prior.astype(np.float32), img.affine, prob_file, dtype=np.float32)
    return save_nifti(mask.astype(np.uint8), img.affine, out_file, dtype=np.uint8)
