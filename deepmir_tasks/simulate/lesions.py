"""Placing microbleeds, iron deposits, calcifications and veins in a simulated head.

Lesions are drawn in the T2w-session world (mm) on the subject's anatomy grid, using the
warped MNI maps (regions, nuclei, sites, tissue, distance to the brain surface) to choose
plausible sites. No two lesions overlap: their bounding spheres (and veins' tubes) keep a
margin, and no two labelled lesions share the T2w voxel holding their centre.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .anatomy import NUCLEI_LABELS, SITE_LABELS, region_name
from .shapes import EllipsoidUnion, Tube, random_rotation

__all__ = ["Lesion", "DEFAULT_COUNTS", "DEFAULT_RANGES", "resolve_counts", "place_lesions"]

#: default per-subject count ranges (inclusive)
DEFAULT_COUNTS = {"cmb": (0, 15), "iron": (0, 4), "calcification": (0, 3), "vein": (3, 8)}

#: default physical ranges (radii in mm before the size preset's lesion scale; chi in ppm)
DEFAULT_RANGES = {
    "cmb_radius_mm": (0.5, 2.5),
    "cmb_chi_ppm": (0.3, 1.5),
    "iron_radius_mm": (1.8, 3.5),
    "iron_excess_ppm": (0.05, 0.25),
    "calcification_radius_mm": (0.7, 3.0),
    "calcification_chi_ppm": (-0.6, -0.1),
    "vein_radius_mm": (0.35, 1.0),
    "vein_chi_ppm": (0.2, 0.45),
    "vein_length_mm": (15.0, 45.0),
}

DSEG_LABEL = {"cmb": 1, "iron": 2, "calcification": 0, "vein": 0}


@dataclass
class Lesion:
    kind: str                 # cmb / iron / calcification / vein
    shape: object             # EllipsoidUnion or Tube
    chi_ppm: float            # susceptibility inside (absolute, ppm re CSF); iron: nucleus + excess
    chi_excess_ppm: float     # iron: excess over the nucleus (added); others: chi - surroundings
    t2_factor: float          # multiplicative T2w signal inside
    gre_factor: float         # multiplicative GRE magnitude inside (T2* shortening, low PD)
    region: str
    radius_mm: float

    @property
    def centre(self) -> np.ndarray:
        return np.asarray(self.shape.centre, float)

    @property
    def additive(self) -> bool:
        return self.kind == "iron"

    @property
    def dseg_label(self) -> int:
        return DSEG_LABEL[self.kind]


def resolve_counts(rng, lesion_counts=None) -> dict:
    """Draw the number of lesions of each kind; ``lesion_counts`` overrides ranges or counts."""
    ranges = dict(DEFAULT_COUNTS)
    for k, v in (lesion_counts or {}).items():
        if k not in ranges:
            raise ValueError(f"unknown lesion kind {k!r}; expected one of {sorted(ranges)}")
        ranges[k] = (int(v), int(v)) if np.isscalar(v) else (int(v[0]), int(v[1]))
        if ranges[k][0] < 0 or ranges[k][1] < ranges[k][0]:
            raise ValueError(f"bad count range for {k!r}: {v!r}")
    counts = {}
    for kind, (lo, hi) in ranges.items():
        if kind == "cmb" and lesion_counts is None and rng.random() < 0.15:
            counts[kind] = lo  # a share of subjects without microbleeds
        else:
            counts[kind] = int(rng.integers(lo, hi + 1))
    return counts


class _Anat:
    """Views of the anatomy-grid maps used for placement."""

    def __init__(self, anat):
        self.a = anat
        self.inv = np.linalg.inv(anat["affine"])
        self.shape = anat["sdist"].shape

    def index(self, xyz):
        ijk = np.rint(self.inv[:3, :3] @ np.asarray(xyz, float) + self.inv[:3, 3]).astype(int)
        if np.any(ijk < 0) or np.any(ijk >= np.asarray(self.shape)):
            return None
        return tuple(ijk)

    def value(self, name, xyz, default=0):
        ijk = self.index(xyz)
        return default if ijk is None else self.a[name][ijk]

    def world(self, flat_index, rng):
        ijk = np.array(np.unravel_index(flat_index, self.shape), float) + rng.uniform(-0.5, 0.5, 3)
        return self.a["affine"][:3, :3] @ ijk + self.a["affine"][:3, 3]


def place_lesions(rng, anat, counts, *, t2_affine, t2_shape, lesion_scale=1.0, ranges=None,
                  nucleus_chi=None, margin_mm=2.0, max_tries=400):
    """Place lesions; returns a list of :class:`Lesion` (possibly fewer than asked if crowded)."""
    rng_ranges = dict(DEFAULT_RANGES)
    rng_ranges.update(ranges or {})
    A = _Anat(anat)
    nucleus_chi = nucleus_chi or {}
    t2_inv = np.linalg.inv(t2_affine)
    placed: list[Lesion] = []
    centre_voxels: set = set()

    tissue = (anat["gm"] + anat["wm"]) > 0.5
    inner = anat["sdist"] < -1.0
    region, nucleus, nucw, site = anat["region"], anat["nucleus"], anat["nucleus_w"], anat["site"]
    lobar_tissue = (anat["gm"] > 0.35) | ((anat["gm"] > 0.15) & (anat["wm"] > 0.3))
    pools = {
        "lobar": np.flatnonzero((region >= 1) & (region <= 5) & lobar_tissue & inner & (nucw < 0.1)),
        "deep": np.flatnonzero((region == 6) & inner),
        "infratentorial": np.flatnonzero((region == 7) & tissue & inner),
    }
    bg_labels = [i + 1 for i, n in enumerate(NUCLEI_LABELS) if n.split("-")[0] in ("caudate", "putamen", "globus")]
    gp_labels = [i + 1 for i, n in enumerate(NUCLEI_LABELS) if n.startswith("globus")]
    pools["iron"] = np.flatnonzero(np.isin(nucleus, bg_labels) & (nucw > 0.85))
    pools["calc-gp"] = np.flatnonzero(np.isin(nucleus, gp_labels) & (nucw > 0.7))
    chp = [i + 1 for i, n in enumerate(SITE_LABELS) if n.startswith("choroid")]
    pools["calc-choroid"] = np.flatnonzero(np.isin(site, chp))
    pools["calc-pineal"] = np.flatnonzero(site == SITE_LABELS.index("pineal") + 1)
    pools["calc-any"] = np.flatnonzero(tissue & inner)
    pools["vein"] = np.flatnonzero(tissue & (anat["sdist"] < -4.0))

    def free(centre, radius, kind):
        for les in placed:
            if les.kind == "vein":
                if les.shape.distance(centre[None])[0] < radius + les.shape.radius + margin_mm:
                    return False
            else:
                r_other = les.shape.bound_radius
                if np.linalg.norm(les.centre - centre) < radius + r_other + margin_mm:
                    return False
        if DSEG_LABEL[kind]:
            vox = tuple(np.rint(t2_inv[:3, :3] @ centre + t2_inv[:3, 3]).astype(int))
            if vox in centre_voxels:
                return False
        return True

    def accept(lesion):
        placed.append(lesion)
        if lesion.dseg_label:
            c = lesion.centre
            centre_voxels.add(tuple(np.rint(t2_inv[:3, :3] @ c + t2_inv[:3, 3]).astype(int)))

    def draw_from(pool_name):
        pool = pools[pool_name]
        if pool.size == 0:
            return None
        return A.world(pool[rng.integers(pool.size)], rng)

    def brain_depth_ok(c, r):
        return A.value("sdist", c, default=99.0) < -(r + 0.5)

    s = float(lesion_scale)
    # ---- non-haemorrhagic iron: irregular blobs inside the basal ganglia (placed first: the
    # nuclei are small). Blobs are scaled less than other lesions on coarse test grids, and
    # shrink a little with each failed try so that crowded nuclei still take one.
    s_iron = min(s, 1.4)
    for _ in range(counts.get("iron", 0)):
        for _try in range(max_tries):
            c = draw_from("iron")
            if c is None:
                break
            r = s_iron * rng.uniform(*rng_ranges["iron_radius_mm"]) * max(0.6, 1.0 - _try / 250)
            shp = _blob(rng, c, r)
            lab = A.value("nucleus", c)
            if not _fits_in(A, shp, lab, bg_labels) or not free(c, shp.bound_radius, "iron"):
                continue
            excess = rng.uniform(*rng_ranges["iron_excess_ppm"])
            base = nucleus_chi.get(NUCLEI_LABELS[lab - 1], 0.1)
            accept(Lesion("iron", shp, base + excess, excess, rng.uniform(0.65, 0.88),
                          rng.uniform(0.75, 0.95), region_name(A.value("region", c)),
                          shp.equivalent_radius()))
            break

    # ---- microbleeds: per-subject mixture of lobar / deep / infratentorial
    mix = rng.dirichlet([3.0, 1.5, 1.0])
    for _ in range(counts.get("cmb", 0)):
        for _try in range(max_tries):
            where = ["lobar", "deep", "infratentorial"][rng.choice(3, p=mix)]
            c = draw_from(where)
            lo, hi = rng_ranges["cmb_radius_mm"]
            r = s * (lo + (hi - lo) * rng.beta(1.4, 2.2))
            if c is None:
                continue
            if rng.random() < 0.2:  # a minority are lobulated rather than round
                shp = _blob(rng, c, r, n=int(rng.integers(2, 4)), spread=0.35, lobe=(0.5, 0.8))
            else:
                shp = EllipsoidUnion(c, r * _aniso(rng, 0.2), random_rotation(rng))
            if not brain_depth_ok(c, shp.bound_radius) or not free(c, shp.bound_radius, "cmb"):
                continue
            chi = rng.uniform(*rng_ranges["cmb_chi_ppm"])
            accept(Lesion("cmb", shp, chi, chi, rng.uniform(0.12, 0.4), rng.uniform(0.15, 0.5),
                          region_name(A.value("region", c)), shp.equivalent_radius()))
            break

    # ---- calcifications (diamagnetic mimics)
    for _ in range(counts.get("calcification", 0)):
        for _try in range(max_tries):
            where = ["calc-gp", "calc-choroid", "calc-pineal", "calc-any"][rng.choice(4, p=[0.35, 0.25, 0.15, 0.25])]
            c = draw_from(where)
            lo, hi = rng_ranges["calcification_radius_mm"]
            r = s * (lo + (hi - lo) * rng.beta(1.5, 2.0))
            shp = EllipsoidUnion(c, r * _aniso(rng, 0.25), random_rotation(rng)) if c is not None else None
            if c is None or A.value("sdist", c, 99.0) > 0 or not free(c, shp.bound_radius, "calcification"):
                continue
            chi = rng.uniform(*rng_ranges["calcification_chi_ppm"])
            accept(Lesion("calcification", shp, chi, chi, rng.uniform(0.12, 0.45), rng.uniform(0.2, 0.6),
                          region_name(A.value("region", c)), float(r)))
            break

    # ---- veins: persistent random walks through the parenchyma
    for _ in range(counts.get("vein", 0)):
        for _try in range(max_tries // 4):
            c = draw_from("vein")
            if c is None:
                break
            r = s * rng.uniform(*rng_ranges["vein_radius_mm"])
            tube = _vein(rng, A, c, r, rng.uniform(*rng_ranges["vein_length_mm"]))
            if tube is None or not _tube_free(tube, placed, margin_mm):
                continue
            chi = rng.uniform(*rng_ranges["vein_chi_ppm"])
            accept(Lesion("vein", tube, chi, chi, rng.uniform(0.35, 0.8), rng.uniform(0.6, 0.9),
                          region_name(A.value("region", tube.centre)), float(r)))
            break
    return placed


def _aniso(rng, amount):
    f = 1.0 + rng.uniform(-amount, amount, 3)
    return f / np.prod(f) ** (1.0 / 3.0)


def _blob(rng, centre, r, n=None, spread=0.55, lobe=(0.35, 0.75)):
    """An irregular blob: a main ellipsoid and ``n - 1`` offset lobes."""
    n = int(rng.integers(3, 6)) if n is None else n
    centres = [np.asarray(centre, float)]
    radii = [r * rng.uniform(0.7, 1.0, 3)]
    for _ in range(n - 1):
        centres.append(centre + rng.normal(0, spread * r, 3))
        radii.append(r * rng.uniform(*lobe, 3))
    rots = [random_rotation(rng) for _ in range(n)]
    return EllipsoidUnion(np.array(centres), np.array(radii), np.array(rots))


def _fits_in(A, shp, label, allowed):
    """A blob's sub-ellipsoid extremes (at 85 %) lie in the basal ganglia, most in its own nucleus."""
    if label == 0:
        return False
    own = total = 0
    for c, rad, rot in zip(shp.centres, shp.radii, shp.rotations):
        for ax in range(3):
            for sign in (-1, 1):
                p = c + sign * 0.85 * rad[ax] * rot[:, ax]
                lab = A.value("nucleus", p)
                if lab not in allowed or A.value("nucleus_w", p) < 0.3:
                    return False
                own += lab == label
                total += 1
    return own >= 0.75 * total


def _vein(rng, A, start, radius, length, step=3.0):
    d = rng.normal(size=3)
    d /= np.linalg.norm(d)
    pts = [np.asarray(start, float)]
    n = max(2, int(round(length / step)))
    for _ in range(n):
        d = d + rng.normal(0, 0.3, 3)
        d /= np.linalg.norm(d)
        nxt = pts[-1] + step * d
        if A.value("sdist", nxt, 99.0) > -(radius + 1.0) or A.value("nucleus_w", nxt) > 0.5:
            break
        pts.append(nxt)
    if len(pts) < 3:
        return None
    return Tube(np.array(pts), radius)


def _tube_free(tube, placed, margin):
    for les in placed:
        if les.kind == "vein":
            other = les.shape
            d = other.distance(tube.points)
            if d.min() < tube.radius + other.radius + margin:
                return False
        else:
            if tube.distance(les.centre[None])[0] < tube.radius + les.shape.bound_radius + margin:
                return False
    return True
