"""Lesions on the simulation grid: microbleeds, focal iron deposits and calcifications.

Ranges (chosen for this generator):
- cerebral microbleeds: radius 1-5 mm, mostly under 2.5 mm (Greenberg et al. 2009 Lancet Neurol
  8:165: 2-10 mm diameter on GRE, the visible bloom larger than the lesion), susceptibility
  0.2-2 ppm (haemosiderin; Liu T. et al. 2012 Radiology 262:269 measured microbleeds by QSM from
  a few tenths to over 1 ppm), slightly non-spherical, in lobar cortex, juxtacortical white matter, deep grey/white
  matter (some inside nuclei) and infratentorial tissue;
- non-haemorrhagic iron deposits: a FOCAL excess of 0.05-0.3 ppm over the local nuclear level,
  irregular (2-4 overlapping spheres of 1.5-3 mm), in the globus pallidus, putamen or caudate;
- calcifications: -0.1 to -0.5 ppm (diamagnetic; Chen et al. 2014 Radiology 270:496), radius
  1-3 mm, half inside basal-ganglia nuclei (physiological pallidal calcification), the rest in
  the parenchyma.
Lesion centres are at least 10 mm apart and clear of veins, so every lesion is one component.
"""

from __future__ import annotations

import numpy as np

from .nuclei import nucleus_names
from .shapes import parts_occupancy, random_rotation

__all__ = ["place_lesions", "paint_lesions", "region_candidates"]

_BASAL = ("globus_pallidus", "putamen", "caudate")
_MIN_SEPARATION = 10.0


def region_candidates(head) -> dict:
    """Voxel indices (n, 3) where each kind of lesion centre may go."""
    ijk = np.indices(head.shape, dtype=np.int16)
    xyz = np.tensordot(head.affine[:3, :3], ijk, axes=1) + head.affine[:3, 3, None, None, None]
    supra = (xyz[2] > -12) & ~((xyz[1] < -40) & (xyz[2] < 0))
    names = nucleus_names()
    basal = np.isin(head.nuclei, [i + 1 for i, n in enumerate(names) if n[:-2] in _BASAL])
    deep_nuc = np.isin(head.nuclei, [i + 1 for i, n in enumerate(names) if n[:-2] in _BASAL + ("thalamus",)])
    free = head.nuclei == 0
    box = (np.abs(xyz[0]) < 32) & (xyz[1] > -30) & (xyz[1] < 22) & (xyz[2] > -5) & (xyz[2] < 22)
    tissue = head.gm + head.wm
    return {
        "lobar": np.argwhere((head.gm > 0.55) & (head.depth_mm >= 4) & supra & free & ~box),
        "juxtacortical": np.argwhere((head.wm > 0.35) & (head.wm < 0.65) & (head.gm > 0.3)
                                     & (head.depth_mm >= 5) & supra & free & ~box),
        "deep": np.argwhere(((head.wm > 0.7) & box & free) | (deep_nuc & (head.depth_mm >= 8))),
        "infratentorial": np.argwhere((xyz[2] < -18) & (xyz[1] < -22) & (tissue > 0.7) & (head.depth_mm >= 4)),
        "basal": np.argwhere(basal & (head.depth_mm >= 8)),
    }


def _draw_cmb(rng):
    u = rng.random()
    r = rng.uniform(1.0, 2.0) if u < 0.6 else rng.uniform(2.0, 3.0) if u < 0.9 else rng.uniform(3.0, 5.0)
    return r, float(np.exp(rng.uniform(np.log(0.2), np.log(2.0))))


def _parts(kind, centre, radius, rng):
    if kind == "iron":
        parts = []
        for _ in range(int(rng.integers(2, 5))):
            c = centre + rng.uniform(-1.5, 1.5, 3)
            parts.append((c, np.full(3, rng.uniform(1.5, 3.0)), np.eye(3)))
        return parts
    axes = radius * np.exp(rng.normal(0.0, 0.12, 3))
    return [(np.asarray(centre, float), axes, random_rotation(rng))]


def _pick(cands, rng, taken, vein_occ, radius):
    for _ in range(200 if len(cands) else 0):
        c = cands[rng.integers(len(cands))].astype(float) + rng.uniform(-0.5, 0.5, 3)
        if taken and np.min(np.linalg.norm(np.array(taken) - c, axis=1)) < _MIN_SEPARATION:
            continue
        lo = np.maximum(np.floor(c - radius - 1.5).astype(int), 0)
        hi = np.ceil(c + radius + 2.5).astype(int)
        if vein_occ[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].max() > 0.05:
            continue
        return c
    return None


def place_lesions(head, rng, vein_occ, counts=None) -> list:
    """Lesion records: kind, label (1 CMB, 2 iron, 0 calcification), region, parts, chi."""
    counts = {"cmb": int(rng.integers(5, 11)), "iron": int(rng.integers(2, 5)),
              "calcification": int(rng.integers(1, 4)), **(counts or {})}
    cands = region_candidates(head)
    names = nucleus_names()
    taken, out = [], []
    plan = [("iron", "basal")] * counts["iron"]
    plan += [("cmb", str(rng.choice(["lobar", "juxtacortical", "deep", "infratentorial"],
                                    p=[0.35, 0.15, 0.3, 0.2]))) for _ in range(counts["cmb"])]
    plan += [("calcification", "basal" if rng.random() < 0.5 else str(rng.choice(["lobar", "deep"])))
             for _ in range(counts["calcification"])]
    for kind, region in plan:
        if kind == "cmb":
            radius, chi = _draw_cmb(rng)
        elif kind == "iron":
            radius, chi = 3.0, float(rng.uniform(0.05, 0.3))
        else:
            radius, chi = float(rng.uniform(1.0, 3.0)), float(-rng.uniform(0.1, 0.5))
        centre = _pick(cands[region], rng, taken, vein_occ, radius)
        if centre is None:
            continue
        taken.append(centre)
        nuc = int(head.nuclei[tuple(np.round(centre).astype(int))])
        out.append({"kind": kind, "label": {"cmb": 1, "iron": 2}.get(kind, 0),
                    "region": "basal_ganglia" if region == "basal" else region,
                    "nucleus": names[nuc - 1] if nuc else "n/a",
                    "parts": _parts(kind, centre, radius, rng), "radius_mm": radius, "chi_ppm": chi})
    return out


def paint_lesions(chi, lesions, r2s_extra) -> None:
    """Write lesions into ``chi`` in place (CMB and calcification replace the tissue value; iron is
    an excess over it) and add each lesion's occupancy-weighted centroid (voxels) as ``centre``.

    ``r2s_extra`` (s^-1 at 3 T) gains 80 s^-1 per ppm inside microbleeds and calcifications: their
    clustered haemosiderin or calcium dephases within the voxel far more than diffuse iron.
    """
    for les in lesions:
        sl, occ = parts_occupancy(les["parts"], chi.shape)
        box = chi[sl]
        if les["kind"] == "iron":
            box += occ * les["chi_ppm"]
        else:
            box += occ * (les["chi_ppm"] - box)
            r2s_extra[sl] += occ * 80.0 * abs(les["chi_ppm"])
        idx = np.indices(occ.shape).reshape(3, -1).T + np.array([s.start for s in sl])
        les["centre"] = (idx * occ.reshape(-1, 1)).sum(0) / max(occ.sum(), 1e-6)
        les["occupancy_voxels"] = float(occ.sum())
