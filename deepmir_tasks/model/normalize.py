"""Intensity normalisation shared by training and inference.

The model record stores one entry per modality; the same function is applied to the training
patches' source volumes and to a subject at inference, so a model never sees intensities on a
different scale from the ones it was trained on. Preprocessing already gives robust z-scores
(T2w, SWI) and ppm (QSM); normalising again here is close to a no-op on such input and makes the
model tolerant of inputs from other preprocessing.

Methods:
    ``robust_zscore``: ``(x - median) / (IQR / 1.349)`` over the brain mask, clipped to
        ``[-clip, clip]``, 0 outside the mask.
    ``scale``: ``clip(x, low, high) * scale``, 0 outside the mask (QSM in ppm).
"""

from __future__ import annotations

import numpy as np

__all__ = ["DEFAULT_NORMALIZATION", "normalize_volume", "normalize_stack"]

DEFAULT_NORMALIZATION = {
    "t2": {"method": "robust_zscore", "clip": 8.0},
    "swi": {"method": "robust_zscore", "clip": 8.0},
    "qsm": {"method": "scale", "low": -1.0, "high": 2.0, "scale": 4.0},
}


def normalize_volume(data: np.ndarray, mask: np.ndarray | None, spec: dict) -> np.ndarray:
    """Normalise one volume as ``spec`` (a record entry) says; return float32."""
    data = np.asarray(data, dtype=np.float32)
    inside = np.ones(data.shape, bool) if mask is None else np.asarray(mask) > 0
    method = spec.get("method")
    if method == "robust_zscore":
        vals = data[inside]
        if vals.size == 0:
            return np.zeros_like(data)
        q25, med, q75 = np.percentile(vals, [25, 50, 75])
        sd = (q75 - q25) / 1.349
        if not np.isfinite(sd) or sd <= 1e-6:
            sd = float(vals.std()) or 1.0
        out = np.clip((data - med) / sd, -spec.get("clip", 8.0), spec.get("clip", 8.0))
    elif method == "scale":
        out = np.clip(data, spec["low"], spec["high"]) * spec["scale"]
    elif method == "none":
        out = data.copy()
    else:
        raise ValueError(f"unknown normalisation method {method!r}")
    out = out.astype(np.float32, copy=False)
    out[~inside] = 0.0
    return out


def normalize_stack(volumes: dict, mask, modalities, normalization: dict, shape=None) -> np.ndarray:
    """Stack ``volumes[m]`` for ``m`` in ``modalities`` into a (C, X, Y, Z) float32 array; a
    modality given as ``None`` becomes a zero channel of ``shape`` (a model trained with modality
    dropout saw a missing modality so)."""
    if shape is None:
        shape = next(np.shape(v) for v in volumes.values() if v is not None)
    return np.stack([np.zeros(shape, np.float32) if volumes.get(m) is None
                     else normalize_volume(volumes[m], mask, normalization[m]) for m in modalities])
