"""Lesion and vein shapes in world millimetres, rendered onto any voxel grid with partial volume.

A shape is a union of ellipsoids (microbleeds, calcifications, irregular iron blobs) or a chain
of capsules (veins). ``render_fraction`` samples each voxel of a grid at ``ss`` sub-positions
per axis and returns the fraction of the voxel inside the shape, in a small patch around it.
The grid is given by an affine mapping voxel indices to the shape's world frame, so the same
shape renders onto the T2w grid, the SWI grid or a fine simulation grid in another session.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["EllipsoidUnion", "Tube", "render_fraction", "random_rotation"]


def random_rotation(rng, max_deg: float | None = None) -> np.ndarray:
    """A rotation matrix: uniform on SO(3) when ``max_deg`` is None, else small Euler angles."""
    if max_deg is None:
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        w, x, y, z = q
        return np.array([
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ])
    return euler_matrix(*np.deg2rad(rng.uniform(-max_deg, max_deg, size=3)))


def euler_matrix(a, b, c) -> np.ndarray:
    """Rotation about x by ``a``, then y by ``b``, then z by ``c`` (radians)."""
    ca, sa, cb, sb, cc, sc = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(c), np.sin(c)
    rx = np.array([[1, 0, 0], [0, ca, -sa], [0, sa, ca]])
    ry = np.array([[cb, 0, sb], [0, 1, 0], [-sb, 0, cb]])
    rz = np.array([[cc, -sc, 0], [sc, cc, 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass
class EllipsoidUnion:
    """Union of ellipsoids: ``centres`` (m, 3) mm, ``radii`` (m, 3) mm, ``rotations`` (m, 3, 3)."""

    centres: np.ndarray
    radii: np.ndarray
    rotations: np.ndarray
    _inv: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        self.centres = np.atleast_2d(np.asarray(self.centres, float))
        self.radii = np.atleast_2d(np.asarray(self.radii, float))
        self.rotations = np.asarray(self.rotations, float).reshape(-1, 3, 3)
        # maps world offsets to unit-sphere coordinates: diag(1/r) R^T
        self._inv = np.stack([np.diag(1.0 / r) @ rot.T for r, rot in zip(self.radii, self.rotations)])

    @property
    def centre(self) -> np.ndarray:
        return self.centres[0]

    @property
    def bound_radius(self) -> float:
        return float(np.max(np.linalg.norm(self.centres - self.centre, axis=1) + self.radii.max(axis=1)))

    def inside(self, pts: np.ndarray) -> np.ndarray:
        out = np.zeros(pts.shape[0], bool)
        for c, inv in zip(self.centres, self._inv):
            u = (pts - c) @ inv.T
            out |= np.einsum("ij,ij->i", u, u) <= 1.0
        return out

    def volume_mm3(self, rng=None, n: int = 40000) -> float:
        """Volume by Monte Carlo in the bounding cube (exact for a single ellipsoid)."""
        if len(self.centres) == 1:
            return float(4.0 / 3.0 * np.pi * np.prod(self.radii[0]))
        rng = np.random.default_rng(0) if rng is None else rng
        r = self.bound_radius
        pts = self.centre + rng.uniform(-r, r, size=(n, 3))
        return float(self.inside(pts).mean() * (2 * r) ** 3)

    def equivalent_radius(self) -> float:
        return float((3.0 * self.volume_mm3() / (4.0 * np.pi)) ** (1.0 / 3.0))

    def primitives(self):
        """One primitive (the whole union): ``(centre, bound_radius, inside)``."""
        yield self.centre, self.bound_radius, self.inside


@dataclass
class Tube:
    """A vein: a polyline ``points`` (n, 3) mm with a constant ``radius`` mm (capsule chain)."""

    points: np.ndarray
    radius: float

    @property
    def centre(self) -> np.ndarray:
        return np.asarray(self.points[len(self.points) // 2], float)

    def distance(self, pts: np.ndarray) -> np.ndarray:
        """Distance from ``pts`` (N, 3) to the polyline."""
        best = np.full(pts.shape[0], np.inf)
        for a, b in zip(self.points[:-1], self.points[1:]):
            best = np.minimum(best, _segment_distance(pts, a, b))
        return best

    def primitives(self):
        for a, b in zip(self.points[:-1], self.points[1:]):
            a = np.asarray(a, float)
            b = np.asarray(b, float)
            centre = 0.5 * (a + b)
            half = 0.5 * np.linalg.norm(b - a) + self.radius
            yield centre, half, (lambda p, a=a, b=b: _segment_distance(p, a, b) <= self.radius)


def _segment_distance(p, a, b):
    ab = b - a
    denom = float(ab @ ab) or 1e-12
    t = np.clip((p - a) @ ab / denom, 0.0, 1.0)
    d = p - (a + t[:, None] * ab)
    return np.sqrt(np.einsum("ij,ij->i", d, d))


def render_fraction(shape, grid_shape, affine, ss=(3, 3, 3)):
    """Partial-volume fraction of ``shape`` on a grid.

    ``affine`` maps voxel indices of the grid to the shape's world frame. Returns a list of
    ``(slices, fraction)`` patches (one per primitive; a union is one primitive), fraction
    float32 in [0, 1]; patches entirely outside the grid are skipped.
    """
    affine = np.asarray(affine, float)
    inv = np.linalg.inv(affine)
    lin = inv[:3, :3]
    ss = tuple(int(max(1, s)) for s in ss)
    offs = [(np.arange(s) + 0.5) / s - 0.5 for s in ss]
    patches = []
    for centre, radius, inside in shape.primitives():
        c_idx = lin @ np.asarray(centre, float) + inv[:3, 3]
        half = radius * np.linalg.norm(lin, axis=1) + 0.5
        lo = np.maximum(np.floor(c_idx - half).astype(int), 0)
        hi = np.minimum(np.ceil(c_idx + half).astype(int) + 1, np.asarray(grid_shape))
        if np.any(hi <= lo):
            continue
        axes = [np.add.outer(np.arange(lo[i], hi[i]), offs[i]).ravel() for i in range(3)]
        gi, gj, gk = np.meshgrid(*axes, indexing="ij")
        pts = np.stack([gi.ravel(), gj.ravel(), gk.ravel()], axis=1) @ affine[:3, :3].T + affine[:3, 3]
        ins = inside(pts).reshape(hi[0] - lo[0], ss[0], hi[1] - lo[1], ss[1], hi[2] - lo[2], ss[2])
        frac = ins.mean(axis=(1, 3, 5), dtype=np.float32)
        if frac.any():
            patches.append((tuple(slice(lo[i], hi[i]) for i in range(3)), frac))
    return patches


def paint_max(grid_shape, patches, out=None):
    """Combine patches into a full-grid fraction map by voxelwise maximum."""
    out = np.zeros(grid_shape, np.float32) if out is None else out
    for sl, frac in patches:
        np.maximum(out[sl], frac, out=out[sl])
    return out
