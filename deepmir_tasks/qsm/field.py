"""Multi-echo field estimate: phase offset removed, temporal unwrapping, weighted least-squares fit.

1. The phase accrued between the first two echoes, ``angle(s2 conj(s1))``, has no offset and few
   wraps; it is unwrapped spatially (:func:`~.phase.laplacian_unwrap`) -> a first angular frequency.
2. The offset ``phi0 = angle(s1 exp(-i w TE1))`` is removed from every echo.
3. Each echo is unwrapped in time against the estimate so far (``w TE_n + wrap(phase_n - w TE_n)``;
   from the third echo on, ``w`` is the fit of the echoes already unwrapped, which has less noise).
4. ``w = sum(m_n^2 TE_n p_n) / sum(m_n^2 TE_n^2)`` (weights: magnitude squared, the inverse phase
   noise variance), a fit through the origin since the offset is gone.
A single echo is unwrapped spatially and its offset cannot be removed. Sign: the phase is taken to
grow with a positive (paramagnetic) field (``phase_sign=-1`` for the other vendor convention).
"""

from __future__ import annotations

import numpy as np

from deepmir_tasks.simulate.physics import GAMMA_MHZ_PER_T

from .phase import laplacian_unwrap, wrap

__all__ = ["fit_field", "hz_to_ppm"]


def hz_to_ppm(field_hz, b0_tesla: float):
    """Field offset in ppm of B0 from Hz."""
    return np.asarray(field_hz, np.float32) / np.float32(GAMMA_MHZ_PER_T * b0_tesla)


def fit_field(magnitude, phase, echo_times_s, mask, voxel_mm, phase_sign: float = 1.0) -> dict:
    """Field (Hz) from multi-echo magnitude and wrapped phase (rad), echoes on the last axis.

    Returns a dict: ``field_hz``, ``offset`` (rad), ``unwrapped`` (per-echo unwrapped phase with the
    offset removed, rad, echoes last), ``residual`` (weighted RMS phase misfit, rad), all float32,
    0 outside ``mask``.
    """
    mag = np.asarray(magnitude, np.float32)
    ph = np.asarray(phase, np.float32) * np.float32(phase_sign)
    te = np.asarray(echo_times_s, np.float64)
    m = np.asarray(mask, bool)
    if mag.ndim == 3:
        mag, ph = mag[..., None], ph[..., None]
    if ph.shape[3] == 1:
        u = laplacian_unwrap(ph[..., 0], m, voxel_mm)
        w = u / np.float32(te[0])
        return _result(w, np.zeros_like(u), u[..., None], np.zeros_like(u), m)
    dphi = np.angle(np.exp(1j * (ph[..., 1] - ph[..., 0]))).astype(np.float32)
    w0 = laplacian_unwrap(dphi, m, voxel_mm) / np.float32(te[1] - te[0])
    offset = wrap(ph[..., 0] - w0 * np.float32(te[0])).astype(np.float32)
    unwrapped = np.empty(ph.shape, np.float32)
    num = np.zeros(m.shape, np.float64)
    den = np.zeros(m.shape, np.float64)
    for n, t in enumerate(te):
        w_now = w0 if n < 2 else (num / np.maximum(den, 1e-30)).astype(np.float32)
        pred = w_now * np.float32(t)
        unwrapped[..., n] = pred + wrap(ph[..., n] - offset - pred)
        wt = mag[..., n].astype(np.float64) ** 2
        num += wt * t * unwrapped[..., n]
        den += wt * t * t
    w = (num / np.maximum(den, 1e-30)).astype(np.float32)
    res = np.zeros(m.shape, np.float64)
    for n, t in enumerate(te):
        res += mag[..., n].astype(np.float64) ** 2 * (unwrapped[..., n] - w * t) ** 2
    wsum = np.maximum((mag.astype(np.float64) ** 2).sum(-1), 1e-30)
    resid = np.sqrt(res / wsum).astype(np.float32)
    return _result(w, offset, unwrapped, resid, m)


def _result(w, offset, unwrapped, resid, m):
    f = (w / np.float32(2 * np.pi)) * m
    return {"field_hz": f.astype(np.float32), "offset": (offset * m).astype(np.float32),
            "unwrapped": (unwrapped * m[..., None]).astype(np.float32), "residual": (resid * m).astype(np.float32)}
