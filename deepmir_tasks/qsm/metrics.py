"""QSM Challenge 2.0 style metrics against a known susceptibility, inside a mask.

- ``nrmse``: 100 ||x - t|| / ||t|| (both demeaned in the mask);
- ``hfen``: the same on a Laplacian-of-Gaussian (sigma 1.5 voxels) of both (high-frequency error);
- ``xsim``: SSIM as the challenge adapted it (Milovic et al. 2024): maps clipped to [-0.1, 0.2] ppm
  and rescaled to [0, 1], K1 = 0.01, K2 = 0.001, Gaussian window sigma 1.5 voxels.
"""

from __future__ import annotations

import numpy as np

__all__ = ["nrmse", "hfen", "xsim", "qsm_metrics"]


def _demeaned(x, t, mask):
    m = np.asarray(mask, bool)
    return (x - x[m].mean()) * m, (t - t[m].mean()) * m, m


def nrmse(x, t, mask) -> float:
    x, t, m = _demeaned(x, t, mask)
    return float(100 * np.linalg.norm(x[m] - t[m]) / np.linalg.norm(t[m]))


def hfen(x, t, mask, sigma: float = 1.5) -> float:
    from scipy import ndimage as ndi

    x, t, m = _demeaned(x, t, mask)
    lx, lt = ndi.gaussian_laplace(x, sigma), ndi.gaussian_laplace(t, sigma)
    return float(100 * np.linalg.norm(lx[m] - lt[m]) / np.linalg.norm(lt[m]))


def xsim(x, t, mask, sigma: float = 1.5) -> float:
    from scipy import ndimage as ndi

    m = np.asarray(mask, bool)
    a = (np.clip(x, -0.1, 0.2) + 0.1) / 0.3
    b = (np.clip(t, -0.1, 0.2) + 0.1) / 0.3
    c1, c2 = 0.01 ** 2, 0.001 ** 2
    g = lambda v: ndi.gaussian_filter(v, sigma)  # noqa: E731
    ma, mb = g(a), g(b)
    va, vb, cov = g(a * a) - ma * ma, g(b * b) - mb * mb, g(a * b) - ma * mb
    ssim = ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2))
    return float(ssim[m].mean())


def qsm_metrics(x, t, mask) -> dict:
    """``{"nrmse", "hfen", "xsim", "corr"}`` of ``x`` against the truth ``t`` in ``mask``."""
    m = np.asarray(mask, bool)
    x = np.asarray(x, np.float64)
    t = np.asarray(t, np.float64)
    return {"nrmse": nrmse(x, t, m), "hfen": hfen(x, t, m), "xsim": xsim(x, t, m),
            "corr": float(np.corrcoef(x[m], t[m])[0, 1])}
