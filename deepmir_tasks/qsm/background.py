"""Background-field removal by V-SHARP (Wu et al. 2012; Li et al. 2011).

For each spherical-mean-value (SMV) radius, from the largest down, ``field - SMV_r(field)`` is
kept in the voxels that the mask eroded by ``r`` newly admits; the result is deconvolved by the
largest kernel's ``1 - S`` with truncation at ``threshold``, and masked by the mask eroded by the
smallest radius (returned too).
"""

from __future__ import annotations

import numpy as np

from deepmir_tasks.threads import n_threads

__all__ = ["sphere_kernel", "vsharp", "DEFAULT_RADII_MM"]

#: SMV radii (mm), largest first; radii under 1.5 voxels are dropped
DEFAULT_RADII_MM = (12.0, 9.0, 6.0, 4.0, 2.5)


def sphere_kernel(shape, voxel_mm, radius_mm) -> np.ndarray:
    """Normalised sphere (sum 1) centred at the origin of a periodic grid of ``shape``."""
    d2 = 0.0
    for ax, (n, h) in enumerate(zip(shape, voxel_mm)):
        i = np.arange(n)
        c = (np.where(i < (n + 1) // 2, i, i - n) * h).astype(np.float32)
        d2 = d2 + (c.reshape([-1 if a == ax else 1 for a in range(3)])) ** 2
    k = (d2 <= radius_mm * radius_mm).astype(np.float32)
    return k / k.sum()


def vsharp(field, mask, voxel_mm, radii_mm=DEFAULT_RADII_MM, threshold: float = 0.05):
    """Local field (same units as ``field``) and the eroded mask it is valid in."""
    from scipy import fft

    m = np.asarray(mask, bool)
    radii = sorted((r for r in radii_mm if r >= 1.5 * max(voxel_mm)), reverse=True) or [2.0 * max(voxel_mm)]
    pad = int(np.ceil(radii[0] / min(voxel_mm))) + 2
    shp = tuple(fft.next_fast_len(n + 2 * pad, real=True) for n in m.shape)
    sl = tuple(slice(0, n) for n in m.shape)
    buf = np.zeros(shp, np.float32)
    buf[sl] = np.asarray(field, np.float32) * m
    spec_f = fft.rfftn(buf, workers=n_threads())
    buf[:] = 0
    buf[sl] = m
    spec_m = fft.rfftn(buf, workers=n_threads())
    del buf
    local = np.zeros(m.shape, np.float32)
    done = np.zeros(m.shape, bool)
    first = None
    for r in radii:
        s = fft.rfftn(sphere_kernel(shp, voxel_mm, r), workers=n_threads())
        eroded = (fft.irfftn(spec_m * s, s=shp, workers=n_threads())[sl] > 0.999) & m
        hp = fft.irfftn(spec_f * (1 - s), s=shp, workers=n_threads())[sl]
        new = eroded & ~done
        local[new] = hp[new]
        done |= eroded
        if first is None:
            first = (1 - s).real.astype(np.float32)
        del s, hp
    buf = np.zeros(shp, np.float32)
    buf[sl] = local
    spec = fft.rfftn(buf, workers=n_threads())
    keep = np.abs(first) > threshold
    spec = np.where(keep, spec / np.where(keep, first, 1.0), 0)
    out = fft.irfftn(spec, s=shp, workers=n_threads())[sl].astype(np.float32)
    return out * done, done
