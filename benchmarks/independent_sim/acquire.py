"""Acquisition geometry: head pose in the scanner, world-aligned image grids, slice-profile
sampling from the simulation grid, Rician noise and a smooth receive bias."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["rotation", "draw_pose", "grid_for", "sample", "bias_field", "complex_noise"]


def rotation(deg_xyz) -> np.ndarray:
    """Rotation matrix R = Rz Ry Rx from angles in degrees."""
    ax, ay, az = np.radians(deg_xyz)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def draw_pose(rng, max_deg=(12.0, 5.0, 5.0), max_mm=6.0) -> np.ndarray:
    """4 x 4 rigid transform MNI mm -> scanner mm: the head pitched (about x) up to 12 degrees,
    rolled/turned up to 5, shifted up to 6 mm; B0 stays along scanner z, so it is oblique to the head."""
    pose = np.eye(4)
    pose[:3, :3] = rotation(rng.uniform(-1, 1, 3) * np.asarray(max_deg))
    pose[:3, 3] = rng.uniform(-max_mm, max_mm, 3)
    return pose


def grid_for(sim_shape, sim_affine, pose, voxel_mm, margin_mm=8.0, mask=None):
    """(shape, affine) of a scanner-aligned grid with ``voxel_mm`` covering ``mask`` (or the
    whole simulation box) under ``pose``."""
    if mask is not None:
        idx = np.argwhere(mask)
        lo, hi = idx.min(0), idx.max(0)
    else:
        lo, hi = np.zeros(3), np.array(sim_shape) - 1
    corners = np.array([[a, b, c, 1.0] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
    world = (pose @ sim_affine @ corners.T).T[:, :3]
    w_lo, w_hi = world.min(0) - margin_mm, world.max(0) + margin_mm
    vox = np.asarray(voxel_mm, float)
    shape = tuple(int(np.ceil((h - l) / v)) + 1 for l, h, v in zip(w_lo, w_hi, vox))
    affine = np.diag([*vox, 1.0])
    affine[:3, 3] = w_lo
    return shape, affine


def _profile_sigma(rot, voxel_mm):
    """Gaussian sigmas (simulation voxels, 1 mm) that widen the 1 mm grid's own response to a box
    of ``voxel_mm`` along each scanner axis, carried onto the simulation axes by ``rot``."""
    s_world = np.sqrt(np.maximum(np.asarray(voxel_mm, float) ** 2 - 1.0, 0.0) / 12.0)
    return np.sqrt((rot ** 2).T @ s_world ** 2)


def sample(data, sim_affine, pose, shape, affine, *, order=1, smooth=True, cval=0.0):
    """Resample ``data`` (simulation grid) onto a scanner grid, averaging over the voxel."""
    vox = np.sqrt((affine[:3, :3] ** 2).sum(0))
    if smooth and order > 0:
        sig = _profile_sigma(pose[:3, :3], vox)
        if np.any(sig > 0.05):
            data = ndimage.gaussian_filter(data, sig, mode="nearest")
    m = np.linalg.inv(pose @ sim_affine) @ affine
    return ndimage.affine_transform(data, m[:3, :3], m[:3, 3], output_shape=shape, order=order,
                                    mode="constant", cval=cval, prefilter=False)


def bias_field(shape, affine, rng, strength: float) -> np.ndarray:
    """exp of a random quadratic in scanner coordinates, spanning about +-``strength``."""
    ax = [np.linspace(-1, 1, n, dtype=np.float32) for n in shape]
    x, y, z = np.meshgrid(*ax, indexing="ij", sparse=True)
    c = rng.normal(0, 1, 9).astype(np.float32)
    xy = c[0] * x + c[1] * y + c[3] * x * y + c[6] * x ** 2 + c[7] * y ** 2   # 2-D pieces first
    yz = c[2] * z + c[4] * y * z + c[8] * z ** 2
    poly = xy + yz + c[5] * x * z
    poly *= strength / (np.abs(poly).max() + 1e-6)
    return np.exp(poly, out=poly)


def complex_noise(shape, sigma, rng) -> np.ndarray:
    """Complex Gaussian noise (independent real and imaginary parts of standard deviation sigma)."""
    return (rng.normal(0, sigma, shape) + 1j * rng.normal(0, sigma, shape)).astype(np.complex64)
