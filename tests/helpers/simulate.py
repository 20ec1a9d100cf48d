"""Measuring helpers for the simulator's tests (the ``sim_all_kinds`` fixture is in conftest.py)."""

from __future__ import annotations

import numpy as np

#: every kind of lesion present, so each property can be checked on one small subject
ALL_KINDS = {"cmb": (6, 6), "iron": (2, 2), "calcification": (2, 2), "vein": (3, 3)}
SEED_ALL_KINDS = 5


def data(img) -> np.ndarray:
    return np.asarray(img.dataobj, dtype=np.float32)


def world_to_index(img, xyz) -> np.ndarray:
    inv = np.linalg.inv(img.affine)
    return inv[:3, :3] @ np.asarray(xyz, float) + inv[:3, 3]


def sample(img, xyz, order: int = 1) -> float:
    """Image value at world point ``xyz`` (trilinear, or nearest with ``order=0``)."""
    from scipy import ndimage as ndi

    ijk = world_to_index(img, xyz)
    return float(ndi.map_coordinates(data(img), ijk[:, None], order=order, mode="nearest")[0])


def neighbourhood(img, xyz, r_mm: float):
    """Voxel values and distances (mm) of every voxel centre within ``r_mm`` of ``xyz``."""
    d = data(img)
    aff = img.affine
    c = world_to_index(img, xyz)
    half = np.ceil(r_mm / np.linalg.norm(aff[:3, :3], axis=0)) + 1
    lo = np.maximum(np.floor(c - half).astype(int), 0)
    hi = np.minimum(np.ceil(c + half).astype(int) + 1, d.shape)
    g = np.stack(np.meshgrid(*[np.arange(lo[i], hi[i]) for i in range(3)], indexing="ij"), -1).reshape(-1, 3)
    dist = np.linalg.norm(g @ aff[:3, :3].T + aff[:3, 3] - np.asarray(xyz, float), axis=1)
    keep = dist <= r_mm
    return d[tuple(g[keep].T)], dist[keep], g[keep]


def ring_median(img, xyz, r_in: float, r_out: float, within=None) -> float:
    """Median of voxels between ``r_in`` and ``r_out`` mm of ``xyz`` (optionally where ``within`` != 0)."""
    vals, dist, idx = neighbourhood(img, xyz, r_out)
    keep = dist >= r_in
    if within is not None:
        keep &= data(within)[tuple(idx.T)] > 0
    return float(np.median(vals[keep]))


def to_swi(subject, xyz) -> np.ndarray:
    """T2w-session world points ``xyz`` (3,) or (n, 3) mapped into the SWI session with ``swi_to_t2``."""
    t2_to_swi = np.linalg.inv(subject.swi_to_t2)
    return np.asarray(xyz, float) @ t2_to_swi[:3, :3].T + t2_to_swi[:3, 3]


def swi_point(subject, row) -> np.ndarray:
    """A lesion's truth centre (T2w world) mapped into the SWI session with ``swi_to_t2``."""
    return to_swi(subject, [row.x_mm, row.y_mm, row.z_mm])


def t2_point(row) -> np.ndarray:
    return np.array([row.x_mm, row.y_mm, row.z_mm])
