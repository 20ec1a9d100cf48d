"""Geometry on the simulation grid (1 mm voxels, coordinates in voxel units): ellipsoid unions
(lesions) and tubes (veins), as partial-volume occupancies and as point-membership tests."""

from __future__ import annotations

import numpy as np

__all__ = ["random_rotation", "inside_parts", "parts_occupancy", "tube_occupancy"]

_SUB = np.array([-1.0, 0.0, 1.0]) / 3.0   # 3 x 3 x 3 sub-samples per voxel for partial volume


def random_rotation(rng) -> np.ndarray:
    """A uniformly random 3-D rotation matrix (QR of a Gaussian matrix, sign-fixed)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q @ np.diag(np.sign(np.diag(r)))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def inside_parts(points, parts) -> np.ndarray:
    """Whether each point (N, 3) lies in any ellipsoid of ``parts`` [(centre, axes, rotation)]."""
    pts = np.asarray(points, float).reshape(-1, 3)
    hit = np.zeros(len(pts), bool)
    for centre, axes, rot in parts:
        local = (pts - centre) @ rot          # coordinates along the ellipsoid's own axes
        hit |= ((local / axes) ** 2).sum(1) <= 1.0
    return hit


def _box(parts, shape, margin=1.0):
    lo = np.min([c - max(a) - margin for c, a, _ in parts], axis=0)
    hi = np.max([c + max(a) + margin for c, a, _ in parts], axis=0)
    lo = np.clip(np.floor(lo).astype(int), 0, shape)
    hi = np.clip(np.ceil(hi).astype(int) + 1, 0, shape)
    return lo, hi


def parts_occupancy(parts, shape):
    """(slices, occupancy in [0, 1]) of an ellipsoid union over its bounding box of ``shape``."""
    lo, hi = _box(parts, np.array(shape))
    axes = [np.arange(a, b, dtype=float) for a, b in zip(lo, hi)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1)
    occ = np.zeros(grid.shape[:3], np.float32)
    for dx in _SUB:
        for dy in _SUB:
            for dz in _SUB:
                pts = (grid + (dx, dy, dz)).reshape(-1, 3)
                occ += inside_parts(pts, parts).reshape(occ.shape)
    return tuple(slice(a, b) for a, b in zip(lo, hi)), occ / 27.0


def tube_occupancy(points, radius: float, shape):
    """(slices, occupancy) of a tube of ``radius`` (voxels) around the polyline ``points`` (n, 3)."""
    pts = np.asarray(points, float)
    lo = np.clip(np.floor(pts.min(0) - radius - 1).astype(int), 0, shape)
    hi = np.clip(np.ceil(pts.max(0) + radius + 1).astype(int) + 1, 0, shape)
    if np.any(hi <= lo):
        return None, None
    axes = [np.arange(a, b, dtype=float) for a, b in zip(lo, hi)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    dist = np.full(len(grid), np.inf)
    for a, b in zip(pts[:-1], pts[1:]):
        ab = b - a
        t = np.clip(((grid - a) @ ab) / max(ab @ ab, 1e-9), 0.0, 1.0)
        dist = np.minimum(dist, np.linalg.norm(grid - (a + t[:, None] * ab), axis=1))
    occ = np.clip(radius + 0.5 - dist, 0.0, 1.0).astype(np.float32)
    return tuple(slice(a, b) for a, b in zip(lo, hi)), occ.reshape([b - a for a, b in zip(lo, hi)])
