"""Dipole inversion: total-variation ADMM with closed-form updates (Bilgic et al. 2014), TKD fallback.

``chi = argmin 1/2 ||D chi - f||^2 + lam ||G chi||_1`` on a zero-padded grid, G the forward
differences per mm, D the Lorentz-corrected dipole kernel for B0 along the scanner z seen in the
image's voxel frame (:func:`b0_direction_voxel`, so oblique slabs are handled). The chi update is
a division in k-space, the z update a soft threshold: two FFTs per iteration. The same updates
run in torch on a GPU when one is present (:func:`tv_admm_torch`). The result is in
ppm (as ``f``), masked, with its mean in the mask set to 0 (whole-brain reference).
"""

from __future__ import annotations

import numpy as np

from deepmir_tasks.threads import n_threads

from deepmir_tasks.simulate.physics import dipole_kernel, tkd_inversion

__all__ = ["b0_direction_voxel", "tv_admm", "tv_admm_torch", "invert_dipole"]


def b0_direction_voxel(affine, b0_world=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Unit B0 direction in the voxel-axis frame of ``affine`` (B0 along the scanner z)."""
    a = np.asarray(affine, float)[:3, :3]
    axes = a / np.linalg.norm(a, axis=0)
    b = axes.T @ np.asarray(b0_world, float)
    return b / np.linalg.norm(b)


def _grad(x, h):
    return [(np.roll(x, -1, ax) - x) / np.float32(h[ax]) for ax in range(3)]


def _grad_t(v, h):
    return sum((np.roll(v[ax], 1, ax) - v[ax]) / np.float32(h[ax]) for ax in range(3))


def tv_admm(field_ppm, mask, voxel_mm, b0_vox, lam: float = 3e-4, rho: float | None = None,
            n_iter: int = 40, pad_mm: float = 12.0):
    """TV-regularised dipole inversion by ADMM; returns chi (ppm, float32, masked)."""
    from scipy import fft

    m, shp, f, d, e2 = _setup(field_ppm, mask, voxel_mm, b0_vox, pad_mm)
    sl = tuple(slice(0, n) for n in m.shape)
    rho = 100.0 * lam if rho is None else rho
    denom = d * d + np.float32(rho) * e2
    denom[0, 0, 0] = 1.0
    dtf = fft.rfftn(f, workers=n_threads()) * d
    del f
    z = [np.zeros(shp, np.float32) for _ in range(3)]
    u = [np.zeros(shp, np.float32) for _ in range(3)]
    thr = np.float32(lam / rho)
    chi = np.zeros(shp, np.float32)
    for _ in range(n_iter):
        rhs = fft.rfftn(_grad_t([z[i] - u[i] for i in range(3)], voxel_mm), workers=n_threads())
        rhs *= np.float32(rho)
        rhs += dtf
        rhs /= denom
        chi = fft.irfftn(rhs, s=shp, workers=n_threads()).astype(np.float32)
        del rhs
        g = _grad(chi, voxel_mm)
        for i in range(3):
            v = g[i] + u[i]
            z[i] = np.sign(v) * np.maximum(np.abs(v) - thr, 0)
            u[i] = v - z[i]
        del g
    out = chi[sl] * m
    if m.any():
        out = (out - out[m].mean()) * m
    return out.astype(np.float32)


def _setup(field_ppm, mask, voxel_mm, b0_vox, pad_mm):
    """Padded field, dipole kernel and the sum of |E_i|^2 on the rFFT grid."""
    from scipy import fft

    m = np.asarray(mask, bool)
    shp = tuple(fft.next_fast_len(n + 2 * int(np.ceil(pad_mm / h)), real=True) for n, h in zip(m.shape, voxel_mm))
    f = np.zeros(shp, np.float32)
    f[tuple(slice(0, n) for n in m.shape)] = np.asarray(field_ppm, np.float32) * m
    d = dipole_kernel(shp, voxel_mm, b0_vox)
    e2 = np.zeros(d.shape, np.float32)
    for ax, (n, h) in enumerate(zip(shp, voxel_mm)):
        k = np.arange(d.shape[ax])
        e2 = e2 + (4 * np.sin(np.pi * k / n) ** 2 / h ** 2).astype(np.float32).reshape(
            [-1 if a == ax else 1 for a in range(3)])
    return m, shp, f, d, e2


def tv_admm_torch(field_ppm, mask, voxel_mm, b0_vox, lam: float = 3e-4, rho: float | None = None,
                  n_iter: int = 40, pad_mm: float = 12.0, device: str = "cuda"):
    """:func:`tv_admm` in torch (the same updates), for a GPU; float32 on ``device``."""
    import torch

    m, shp, f, d, e2 = _setup(field_ppm, mask, voxel_mm, b0_vox, pad_mm)
    rho = 100.0 * lam if rho is None else rho
    dev = torch.device(device)
    d_t = torch.from_numpy(d).to(dev)
    denom = d_t * d_t + rho * torch.from_numpy(e2).to(dev)
    denom[0, 0, 0] = 1.0
    dtf = torch.fft.rfftn(torch.from_numpy(f).to(dev)) * d_t
    z = torch.zeros((3, *shp), device=dev)
    u = torch.zeros_like(z)
    h = [float(v) for v in voxel_mm]
    chi = torch.zeros(shp, device=dev)
    for _ in range(n_iter):
        v = z - u
        gt = sum((torch.roll(v[ax], 1, ax) - v[ax]) / h[ax] for ax in range(3))
        chi = torch.fft.irfftn((torch.fft.rfftn(gt) * rho + dtf) / denom, s=shp)
        g = torch.stack([(torch.roll(chi, -1, ax) - chi) / h[ax] for ax in range(3)])
        v = g + u
        z = torch.sign(v) * torch.clamp(v.abs() - lam / rho, min=0)
        u = v - z
    out = chi[: m.shape[0], : m.shape[1], : m.shape[2]].cpu().numpy() * m
    if m.any():
        out = (out - out[m].mean()) * m
    return out.astype(np.float32)


def _gpu_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def invert_dipole(field_ppm, mask, voxel_mm, affine, method: str = "tv", device: str = "auto", **kwargs):
    """QSM (ppm) from a local field (ppm): ``method`` ``"tv"`` (TV-ADMM) or ``"tkd"`` (threshold 0.19).

    ``device``: ``"auto"`` (torch on a GPU when one is present, else numpy/scipy), ``"cpu"``
    (numpy/scipy) or a torch device name (``"cuda"``, ``"cpu-torch"`` = torch on the CPU)."""
    b0 = b0_direction_voxel(affine)
    if method == "tv":
        if device == "auto":
            device = "cuda" if _gpu_available() else "cpu"
        if device != "cpu":
            return tv_admm_torch(field_ppm, mask, voxel_mm, b0, device=device.replace("cpu-torch", "cpu"), **kwargs)
        return tv_admm(field_ppm, mask, voxel_mm, b0, **kwargs)
    if method == "tkd":
        chi = tkd_inversion(field_ppm, mask, voxel_mm, b0, threshold=kwargs.get("threshold", 0.19), workers=n_threads())
        m = np.asarray(mask, bool)
        return ((chi - chi[m].mean()) * m).astype(np.float32) if m.any() else chi
    raise ValueError(f"unknown dipole inversion method {method!r}; expected 'tv' or 'tkd'")
