"""Veins as tubes of deoxygenated blood on the simulation grid.

Blood susceptibility relative to tissue water: chi = Hct * dchi_do * (1 - Y), with dchi_do =
3.39 ppm (SI; 0.27 ppm cgs x 4 pi, Spees et al. 2001 MRM 45:533), haematocrit 0.38-0.44 and venous
oxygen saturation Y 0.68-0.76 (oxygen extraction 0.25-0.4, He & Yablonskiy 2007 MRM 57:115),
giving 0.31-0.48 ppm.
"""

from __future__ import annotations

import numpy as np

from .shapes import tube_occupancy

__all__ = ["vein_paths", "paint_veins", "venous_chi"]


def venous_chi(rng) -> float:
    hct, sat = rng.uniform(0.38, 0.44), rng.uniform(0.68, 0.76)
    return float(hct * 3.39 * (1.0 - sat))


def _walk(start, rng, inside, n_steps, step=2.0):
    """A smooth random walk from ``start`` that stops when ``inside(point)`` becomes false."""
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    pts = [np.asarray(start, float)]
    for _ in range(n_steps):
        direction = direction + 0.35 * rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        nxt = pts[-1] + step * direction
        if not inside(nxt):
            break
        pts.append(nxt)
    return np.array(pts)


def vein_paths(head, rng, n_small=(40, 70)):
    """[(polyline in voxels, radius in voxels)]: the superior sagittal sinus, the internal cerebral
    veins and ``n_small`` medullary/cortical veins wandering through the parenchyma."""
    inv = np.linalg.inv(head.affine)
    to_vox = lambda xyz: inv[:3, :3] @ np.asarray(xyz, float) + inv[:3, 3]  # noqa: E731
    paths = []
    x0 = int(round(to_vox((0, 0, 0))[0]))
    sss = []
    for j in range(0, head.shape[1], 6):
        col = np.nonzero(head.brain[x0, j])[0]
        if col.size and head.brain[x0, j].sum() > 20:
            sss.append((x0, j, col.max() + 3.0))
    if len(sss) > 2:
        paths.append((np.array(sss), rng.uniform(2.5, 3.5)))
    for side in (-2.0, 2.0):
        pts = np.array([to_vox((side, y, 14.0 + 0.15 * (y + 5))) for y in np.linspace(-5, -35, 8)])
        paths.append((pts, rng.uniform(0.8, 1.2)))
    shape = np.array(head.shape)

    def inside(p):
        i = np.round(p).astype(int)
        return bool(np.all(i >= 0) and np.all(i < shape) and head.brain[tuple(i)] and head.nuclei[tuple(i)] == 0)

    seeds = np.argwhere((head.wm > 0.5) & (head.depth_mm > 6) & (head.nuclei == 0))
    for idx in rng.choice(len(seeds), int(rng.integers(*n_small)), replace=False):
        pts = _walk(seeds[idx], rng, inside, int(rng.integers(10, 28)))
        if len(pts) >= 4:
            paths.append((pts, rng.uniform(0.45, 1.1)))
    return paths


def paint_veins(chi, head, rng):
    """Add veins to ``chi`` in place; return their occupancy map (float32)."""
    occ_all = np.zeros(chi.shape, np.float32)
    for pts, radius in vein_paths(head, rng):
        sl, occ = tube_occupancy(pts, radius, chi.shape)
        if sl is None:
            continue
        occ_all[sl] = np.maximum(occ_all[sl], occ)
    value = venous_chi(rng)
    chi += occ_all * (value - chi)
    return occ_all
