"""Intensity normalisation in the working grid.

- T2w and SWI magnitude: robust z-score inside the brain, ``(x - median) / (IQR / 1.349)``
  (1.349 makes IQR/1.349 equal the standard deviation for Gaussian data); 0 outside the brain.
- QSM: kept in ppm, clipped to ``QSM_RANGE_PPM`` = [-1, 2] ppm (diamagnetic calcification down
  to about -1 ppm, haemosiderin and ferritin up to about 2 ppm at the voxel scale); 0 outside the brain.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deepmir_tasks.io import load_image, load_mask, save_nifti

__all__ = ["QSM_RANGE_PPM", "robust_zscore", "normalise_intensity"]

QSM_RANGE_PPM = (-1.0, 2.0)


def robust_zscore(data: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Robust z-score of ``data`` from the median and IQR inside ``mask``; 0 outside it."""
    data = np.asarray(data, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    vals = data[mask]
    if vals.size == 0:
        raise ValueError("empty mask")
    q25, med, q75 = np.percentile(vals, [25, 50, 75])
    scale = (q75 - q25) / 1.349
    if not scale > 0:
        scale = float(np.std(vals)) or 1.0
    out = (data - med) / scale
    out[~mask] = 0.0
    return out.astype(np.float32)


def normalise_intensity(in_file, mask_file, out_file, *, kind: str = "zscore",
                        qsm_range_ppm=QSM_RANGE_PPM, what: str = "image") -> Path:
    """Normalise one image on the mask's grid: ``kind="zscore"`` (T2w, SWI) or ``"qsm"`` (ppm, clipped)."""
    img = load_image(in_file, what=what, allow_empty=(kind == "qsm"))
    mask = load_mask(mask_file, img.shape, what)
    data = np.asarray(img.dataobj, dtype=np.float32)
    if kind == "zscore":
        out = robust_zscore(data, mask)
    elif kind == "qsm":
        lo, hi = qsm_range_ppm
        out = np.clip(data, lo, hi).astype(np.float32)
        out[~mask] = 0.0
    else:
        raise ValueError(f"kind must be 'zscore' or 'qsm', not {kind!r}")
    return save_nifti(out, img.affine, out_file, dtype=np.float32)
