"""SWI from multi-echo magnitude and the fitted field, CLEAR-SWI style (Eckstein et al. 2021).

Magnitude: root-sum-of-squares over echoes. Phase: the unwrapped, offset-free field (Hz) of the
multi-echo fit, high-pass filtered (minus its Gaussian-smoothed self, normalised within the mask,
so no wraps and no edge roll-off), turned into a phase at ``te_eff`` (default: the last echo).
Paramagnetic (positive) phase is attenuated: ``mask = clip((pi - phase)/pi, 0, 1)``; SWI = magnitude
x mask^power; an optional sliding minimum-intensity projection over ``minip_mm`` along the slices.
"""

from __future__ import annotations

import numpy as np

__all__ = ["highpass_field", "clear_swi"]


def highpass_field(field, mask, voxel_mm, sigma_mm: float = 4.0):
    """``field - G*field`` with the Gaussian average taken over mask voxels only."""
    from scipy import ndimage as ndi

    m = np.asarray(mask, np.float32)
    sig = [sigma_mm / v for v in voxel_mm]
    num = ndi.gaussian_filter(np.asarray(field, np.float32) * m, sig)
    den = ndi.gaussian_filter(m, sig)
    return ((field - num / np.maximum(den, 1e-3)) * m).astype(np.float32)


def clear_swi(magnitude, field_hz, mask, voxel_mm, echo_times_s, sigma_mm: float = 4.0, power: int = 4,
              te_eff_s: float | None = None, minip_mm: float = 0.0) -> dict:
    """``{"swi", "minip" (or None), "phase_mask", "magnitude"}`` (float32)."""
    mag = np.asarray(magnitude, np.float32)
    comb = np.sqrt((mag ** 2).sum(-1)) if mag.ndim == 4 else mag
    te = float(te_eff_s if te_eff_s is not None else max(echo_times_s))
    phase = highpass_field(field_hz, mask, voxel_mm, sigma_mm) * np.float32(2 * np.pi * te)
    pmask = np.clip((np.pi - phase) / np.pi, 0.0, 1.0)
    pmask = np.where(phase > 0, pmask, 1.0).astype(np.float32)
    swi = (comb * pmask ** power).astype(np.float32)
    minip = None
    if minip_mm > 0:
        from scipy import ndimage as ndi

        n = max(1, int(round(minip_mm / voxel_mm[2])))
        minip = ndi.minimum_filter1d(swi, size=n, axis=2, mode="nearest") if n > 1 else swi.copy()
    return {"swi": swi, "minip": minip, "phase_mask": pmask, "magnitude": comb.astype(np.float32)}
