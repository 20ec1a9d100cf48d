"""Phase to radians (radians, scanner integers or arbitrary units detected) and Laplacian unwrapping.

Unwrapping is the Laplacian (least-squares) method (Ghiglia & Romero 1994; Schofield & Zhu 2003):
the Laplacian of the true phase is the divergence of the wrapped differences between neighbouring
brain voxels, which is free of wraps; an FFT Poisson solve with the discrete Laplacian's own
eigenvalues returns a smooth phase, which is then made congruent with the measured one
(``wrapped + 2 pi k``) so that no value is changed except by whole turns.
"""

from __future__ import annotations

import numpy as np

from deepmir_tasks.threads import n_threads

from deepmir_tasks.io import InputError

__all__ = ["to_radians", "wrap", "laplacian_unwrap"]

_TWO_PI = 2.0 * np.pi


def wrap(phase):
    """Phase wrapped into [-pi, pi)."""
    return (np.asarray(phase) + np.pi) % _TWO_PI - np.pi


def to_radians(phase, path="phase", units: str = "auto"):
    """Phase array in radians (float32) and the units detected.

    ``units``: ``"rad"`` (kept), ``"scanner"`` (integer codes, e.g. -4096..4095 or 0..4095: the
    nominal range is the power of two just above the largest |code|), ``"arbitrary"`` (min..max
    rescaled to -pi..pi, as for phase stored in arbitrary units) or ``"auto"``: a span of about
    2 pi is radians, a wider span of integers is scanner codes, anything else is rescaled min..max.
    Raises :class:`InputError` naming ``path`` for a constant phase or unknown ``units``.
    """
    p = np.asarray(phase, np.float64)
    lo, hi = float(p.min()), float(p.max())
    if not hi > lo:
        raise InputError(path, "phase image is constant: no phase information")
    if units == "auto":
        units = _detect_units(p, lo, hi)
    if units == "rad":
        out = p
    elif units == "scanner":
        n = 2.0 ** np.ceil(np.log2(max(abs(lo), abs(hi) + 1.0)))
        out = p * (np.pi / n) if lo < 0 else p * (_TWO_PI / n) - np.pi
    elif units == "arbitrary":
        out = (p - lo) / (hi - lo) * _TWO_PI - np.pi
    else:
        raise InputError(path, f"unknown phase units {units!r}; expected auto, rad, scanner or arbitrary")
    return out.astype(np.float32), units


def _detect_units(p, lo, hi):
    span = hi - lo
    if 0.8 * _TWO_PI <= span <= 1.01 * _TWO_PI and lo >= -np.pi - 0.01 and hi <= _TWO_PI + 0.01:
        return "rad"
    sample = p.ravel()[:: max(1, p.size // 100000)]
    if span > 1.01 * _TWO_PI and np.allclose(sample, np.round(sample)):
        return "scanner"
    return "arbitrary"


def _laplacian_eigenvalues(shape, voxel_mm):
    """Eigenvalues of the 7-point discrete Laplacian under periodic FFT (<= 0, float32)."""
    lam = None
    for ax, (n, h) in enumerate(zip(shape, voxel_mm)):
        k = np.arange(n) if ax < len(shape) - 1 else np.arange(n // 2 + 1)
        e = (-4.0 * np.sin(np.pi * k / n) ** 2 / (h * h)).astype(np.float32)
        e = e.reshape([-1 if i == ax else 1 for i in range(len(shape))])
        lam = e if lam is None else lam + e
    return lam


def _divergence(grads, shape, voxel_mm):
    out = np.zeros(shape, np.float32)
    for ax, (d, h) in enumerate(zip(grads, voxel_mm)):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[ax], hi[ax] = slice(0, -1), slice(1, None)
        out[tuple(lo)] += d / np.float32(h * h)
        out[tuple(hi)] -= d / np.float32(h * h)
    return out


def _pair_masks(m):
    return [np.logical_and(np.take(m, range(0, m.shape[ax] - 1), axis=ax),
                           np.take(m, range(1, m.shape[ax]), axis=ax)) for ax in range(3)]


def _masked_laplacian(u, pairs, voxel_mm):
    """Discrete Laplacian with Neumann edges at the mask (only differences inside it count)."""
    return _divergence([np.diff(u, axis=ax) * p for ax, p in enumerate(pairs)], u.shape, voxel_mm)


class _Poisson:
    """Periodic FFT Poisson solver on a padded grid (the preconditioner)."""

    def __init__(self, shape, voxel_mm, pad=8):
        from scipy import fft

        self.fft = fft
        self.shape = shape
        self.shp = tuple(fft.next_fast_len(n + 2 * pad, real=True) for n in shape)
        self.sl = tuple(slice(pad, pad + n) for n in shape)
        eig = _laplacian_eigenvalues(self.shp, voxel_mm)
        eig[0, 0, 0] = 1.0
        self.inv = (1.0 / eig).astype(np.float32)
        self.inv[0, 0, 0] = 0.0

    def __call__(self, rhs):
        buf = np.zeros(self.shp, np.float32)
        buf[self.sl] = rhs
        spec = self.fft.rfftn(buf, workers=n_threads())
        spec *= self.inv
        return self.fft.irfftn(spec, s=self.shp, workers=n_threads())[self.sl].astype(np.float32)


def _solve_ls(w, m, voxel_mm, n_iter, tol):
    """Least-squares unwrapped phase in ``m``: PCG on the masked Laplacian, FFT-Poisson preconditioned."""
    pairs = _pair_masks(m)
    b = _divergence([wrap(np.diff(w, axis=ax)).astype(np.float32) * p for ax, p in enumerate(pairs)],
                    w.shape, voxel_mm) * m
    solve = _Poisson(w.shape, voxel_mm)
    x = solve(b) * m
    r = (b - _masked_laplacian(x, pairs, voxel_mm)) * m
    z = solve(r) * m
    p = z.copy()
    rz = float(np.vdot(r, z))
    b_norm = float(np.linalg.norm(b)) or 1.0
    for _ in range(n_iter):
        if float(np.linalg.norm(r)) < tol * b_norm:
            break
        ap = _masked_laplacian(p, pairs, voxel_mm) * m
        alpha = rz / float(np.vdot(p, ap))
        x += np.float32(alpha) * p
        r -= np.float32(alpha) * ap
        z = solve(r) * m
        rz_new = float(np.vdot(r, z))
        p = z + np.float32(rz_new / rz) * p
        rz = rz_new
    return x


def laplacian_unwrap(phase, mask=None, voxel_mm=(1.0, 1.0, 1.0), congruent: bool = True, n_iter: int = 40,
                     tol: float = 1e-4):
    """Unwrap a 3-D phase (rad) by the Laplacian (least-squares) method; returns float32 radians.

    ``mask`` (optional, default all) is where the phase is meaningful: only differences between
    neighbours inside it are used (Neumann edges), solved by conjugate gradients preconditioned by
    the FFT Poisson solve. With ``congruent`` the smooth solution ``u`` is replaced by
    ``wrapped + 2 pi round((u - wrapped) / 2 pi)``. The result is shifted by whole turns so that
    its median in the mask lies in [-pi, pi), and is 0 outside the mask.
    """
    w = np.asarray(phase, np.float32)
    m = np.ones(w.shape, bool) if mask is None else np.asarray(mask, bool)
    u = _solve_ls(w, m, voxel_mm, n_iter, tol)
    if congruent:
        u = w + np.float32(_TWO_PI) * np.round((u - w) / np.float32(_TWO_PI))
    if m.any():
        u -= np.float32(_TWO_PI) * np.round(np.median(u[m]) / _TWO_PI)
    return np.where(m, u, 0.0).astype(np.float32)
