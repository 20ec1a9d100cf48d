"""N4 bias-field correction (ANTsPy) with a quick Otsu head mask.

N4 fits a smooth multiplicative field. Restricting the fit to the head (Otsu threshold, closed and
hole-filled) makes it about 4× faster than fitting the whole field of view; the field is then
applied to every voxel. QSM is never bias-corrected (it is not a magnitude image).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deepmir_tasks.io import InputError, load_image, load_mask, save_nifti

__all__ = ["otsu_threshold", "head_mask", "rough_intracranial_mask", "n4_correct"]


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a 1-D array of intensities."""
    values = np.asarray(values, dtype=float).ravel()
    hist, edges = np.histogram(values, bins=bins)
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    s0 = np.cumsum(hist * centres)
    m0 = s0 / np.maximum(w0, 1)
    m1 = (s0[-1] - s0) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(centres[int(np.argmax(between[:-1]))])


def head_mask(data: np.ndarray) -> np.ndarray:
    """Rough head mask: Otsu on positive voxels, closed, holes filled, largest component, dilated."""
    import cc3d
    from scipy import ndimage

    data = np.asarray(data, dtype=np.float32)
    pos = data[data > 0]
    if pos.size == 0:
        return np.ones(data.shape, dtype=bool)
    # Otsu on a log scale copes with the long bright tail of T2w CSF and fat.
    thr = np.expm1(otsu_threshold(np.log1p(pos - pos.min())) ) + pos.min()
    thr = min(thr, float(np.percentile(pos, 50)))
    mask = data > thr * 0.5
    mask = ndimage.binary_closing(mask, iterations=2)
    labels = cc3d.connected_components(mask.astype(np.uint8), connectivity=6)
    if labels.max() > 0:
        counts = np.bincount(labels.ravel())
        counts[0] = 0
        mask = labels == int(np.argmax(counts))
    mask = ndimage.binary_fill_holes(mask)
    return ndimage.binary_dilation(mask, iterations=2)


def rough_intracranial_mask(data: np.ndarray) -> np.ndarray:
    """Rough intracranial mask: the head without voxels darker than the skull, eroded, largest part.

    Only used to steer the template registration away from the scalp; it need not be accurate.
    """
    from scipy import ndimage

    head = head_mask(data)
    thr = 0.35 * float(np.percentile(data[head], 60))
    core = ndimage.binary_erosion(head & (data > thr), iterations=1)
    labels, n = ndimage.label(core)
    if n == 0:
        return head
    sizes = ndimage.sum(np.ones(labels.shape), labels, range(1, n + 1))
    comp = labels == 1 + int(np.argmax(sizes))
    return ndimage.binary_fill_holes(ndimage.binary_dilation(comp, iterations=1))


def n4_correct(in_file, out_file, *, mask_file=None, bias_file=None, shrink_mm: float = 6.0,
               iterations=(50, 50, 30), what: str = "image") -> Path:
    """N4-correct ``in_file``; write the corrected image (and the field if ``bias_file``).

    The fit uses ``mask_file`` when given (on the same grid), else a rough Otsu head mask. The
    shrink factor is chosen so that the fitting grid has about ``shrink_mm`` voxels (6 mm: a 1 mm
    head in 3 s with the same correlation to the clean image as shrink 4 in 12 s).
    """
    from deepmir_tasks.preprocess._ants import set_threads, to_ants

    set_threads()
    import ants

    set_threads()
    img = load_image(in_file, what=what)
    data = np.asarray(img.dataobj, dtype=np.float32)
    if mask_file is not None:
        mask = load_mask(mask_file, img.shape, what, what="mask")
    else:
        mask = head_mask(data)
    if not mask.any():
        raise InputError(mask_file or in_file, f"mask for N4 of the {what} is empty")
    lo = float(min(data.min(), 0.0))
    shifted = data - lo + 1e-3 * max(float(np.percentile(data[mask], 50)) - lo, 1.0)
    bias = ants.n4_bias_field_correction(
        to_ants(shifted, img.affine), mask=to_ants(mask.astype(np.float32), img.affine),
        shrink_factor=_shrink_factor(img, shrink_mm), convergence={"iters": list(iterations), "tol": 1e-7},
        rescale_intensities=False, return_bias_field=True)
    field = np.asarray(bias.numpy(), dtype=np.float32)
    # Normalise the field to mean 1 inside the mask so that corrected intensities keep their scale.
    field /= float(np.mean(field[mask]))
    field = np.maximum(field, 1e-3)
    corrected = data / field
    save_nifti(corrected.astype(np.float32), img.affine, out_file, dtype=np.float32)
    if bias_file is not None:
        save_nifti(field, img.affine, bias_file, dtype=np.float32)
    return Path(out_file)


def _shrink_factor(img, shrink_mm: float) -> int:
    zoom = float(np.median(img.header.get_zooms()[:3]))
    smallest = min(img.shape[:3])
    return int(np.clip(round(shrink_mm / zoom), 1, max(1, min(8, smallest // 8))))
