"""Brain mask from the GRE magnitude, or the user's mask (e.g. the T2w brain mask on this grid).

From the magnitude: the echo-combined (root-sum-of-squares) image is thresholded at a fraction of
a robust bright-tissue intensity (its 98th percentile; noise in air is far below, a crop without
air keeps every voxel), a small opening applied, the largest component kept, closed, holes filled. A user's mask wins: it is
used as given (binarised), so that QSM and SWI share the T2w pipeline's brain. A magnitude mask is
then refined by the field fit (:func:`refine_mask`): voxels whose multi-echo phase misfit is over
3x the mask's median (bone, the brain's edge next to it, signal voids) are dropped.
"""

from __future__ import annotations

import numpy as np

__all__ = ["magnitude_mask", "brain_mask", "refine_mask"]


def magnitude_mask(magnitude, voxel_mm, fraction: float = 0.2, open_mm: float = 2.0) -> np.ndarray:
    """Rough brain (head-tissue) mask from a magnitude image (3-D, or echoes last -> RSS)."""
    from scipy import ndimage as ndi

    mag = np.asarray(magnitude, np.float32)
    if mag.ndim == 4:
        mag = np.sqrt((mag.astype(np.float32) ** 2).sum(-1))
    pos = mag[mag > 0]
    if pos.size == 0:
        return np.zeros(mag.shape, bool)
    m = mag > fraction * np.percentile(pos, 98)
    r = [max(1, int(round(open_mm / v))) for v in voxel_mm]
    st = np.ones([2 * k + 1 for k in r], bool)
    m = ndi.binary_opening(m, structure=st)
    lab, n = ndi.label(m)
    if n == 0:
        return m
    m = lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)
    m = ndi.binary_closing(m, structure=st, iterations=1)
    for ax in range(3):  # fill holes slice by slice too: veins and nuclei are dark in GRE
        m = np.stack([ndi.binary_fill_holes(s) for s in np.moveaxis(m, ax, 0)], axis=0)
        m = np.moveaxis(m, 0, ax)
    return ndi.binary_fill_holes(m)


def brain_mask(magnitude, voxel_mm, user_mask=None) -> np.ndarray:
    """The user's mask when given (binarised; shape must match), else :func:`magnitude_mask`."""
    if user_mask is not None:
        um = np.asarray(user_mask) > 0
        if um.shape != np.asarray(magnitude).shape[:3]:
            raise ValueError(f"mask shape {um.shape} does not match the GRE grid {np.asarray(magnitude).shape[:3]}")
        return um
    return magnitude_mask(magnitude, voxel_mm)


def refine_mask(mask, residual, factor: float = 3.0) -> np.ndarray:
    """``mask`` without the voxels whose fit residual exceeds ``factor`` x its median in the mask,
    keeping the largest component with its holes filled (dark veins and nuclei stay in)."""
    from scipy import ndimage as ndi

    m = np.asarray(mask, bool)
    if not m.any():
        return m
    keep = m & (np.asarray(residual) <= factor * np.median(np.asarray(residual)[m]))
    lab, n = ndi.label(keep)
    if n == 0:
        return keep
    keep = lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)
    return ndi.binary_fill_holes(keep) & m
