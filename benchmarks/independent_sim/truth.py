"""The truth on the T2w grid: lesion label map (1 CMB, 2 iron deposit), brain mask, nuclei, and
each lesion's centre in T2w-session world mm."""

from __future__ import annotations

import numpy as np

from .acquire import sample
from .shapes import inside_parts

__all__ = ["truth_on_grid"]


def _label_lesion(dseg, les, to_sim, to_world, inv_aff):
    """Label the T2w voxels whose centres fall inside the lesion (at least the nearest one)."""
    centre_w = to_world @ np.append(les["centre"], 1.0)
    reach = max(float(np.max(a)) for _, a, _ in les["parts"]) + 4.0
    lo = np.floor(inv_aff[:3, :3] @ (centre_w[:3] - reach) + inv_aff[:3, 3]).astype(int)
    hi = np.ceil(inv_aff[:3, :3] @ (centre_w[:3] + reach) + inv_aff[:3, 3]).astype(int)
    lo, hi = np.clip(np.minimum(lo, hi), 0, dseg.shape), np.clip(np.maximum(lo, hi) + 1, 0, dseg.shape)
    idx = np.stack(np.meshgrid(*(np.arange(a, b) for a, b in zip(lo, hi)), indexing="ij"), -1).reshape(-1, 3)
    sim = (to_sim @ np.c_[idx, np.ones(len(idx))].T).T[:, :3]
    hit = idx[inside_parts(sim, les["parts"])]
    if len(hit) == 0:
        near = np.round(inv_aff[:3, :3] @ centre_w[:3] + inv_aff[:3, 3]).astype(int)
        hit = np.clip(near, 0, np.array(dseg.shape) - 1)[None]
    dseg[tuple(hit.T)] = les["label"]
    return centre_w[:3]


def truth_on_grid(head, lesions, pose, shape, affine) -> dict:
    """``dseg``, ``brain``, ``nuclei`` (uint8 arrays on the grid) and ``lesions`` (table rows)."""
    to_world = pose @ head.affine                 # simulation voxel -> world mm
    to_sim = np.linalg.inv(to_world) @ affine     # grid voxel -> simulation voxel
    inv_aff = np.linalg.inv(affine)
    dseg = np.zeros(shape, np.uint8)
    rows = []
    for n, les in enumerate(lesions, start=1):
        xyz = _label_lesion(dseg, les, to_sim, to_world, inv_aff) if les["label"] else \
            (to_world @ np.append(les["centre"], 1.0))[:3]
        rows.append({"lesion_id": n, "kind": les["kind"], "label": les["label"],
                     "x_mm": round(float(xyz[0]), 3), "y_mm": round(float(xyz[1]), 3),
                     "z_mm": round(float(xyz[2]), 3), "radius_mm": round(float(les["radius_mm"]), 3),
                     "chi_ppm": round(float(les["chi_ppm"]), 4), "region": les["region"],
                     "nucleus": les["nucleus"], "volume_mm3": round(les["occupancy_voxels"], 2)})
    brain = sample(head.brain.astype(np.float32), head.affine, pose, shape, affine) > 0.5
    nuclei = sample(head.nuclei, head.affine, pose, shape, affine, order=0, smooth=False)
    return {"dseg": dseg, "brain": brain.astype(np.uint8), "nuclei": nuclei.astype(np.uint8), "lesions": rows}
