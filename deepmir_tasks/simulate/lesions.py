"""Placing microbleeds, iron deposits, calcifications and veins in a simulated head.

Lesions are drawn in the T2w-session world (mm) on the subject's anatomy grid, using the
warped MNI maps (regions, nuclei, sites, tissue, distance to the brain surface) to choose
plausible sites. No two lesions overlap: their bounding spheres (and veins' tubes) keep a
margin, and no two labelled lesions share the T2w voxel holding their centre.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deepmir_tasks.labels import DSEG_LABELS

from .anatomy import NUCLEI_LABELS, SITE_LABELS, region_name
from .shapes import EllipsoidUnion, Tube, random_rotation

__all__ = ["Lesion", "Placement", "DEFAULT_COUNTS", "DEFAULT_RANGES", "resolve_counts", "place_lesions"]

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

#: lesion kind -> its value in the truth dseg (mimics are background), from the one class table
DSEG_LABEL = {kind: DSEG_LABELS.get(kind, 0) for kind in ("cmb", "iron", "calcification", "vein")}


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
    site: str = ""            # placement site (pool name; iron: its nucleus)

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


@dataclass(frozen=True)
class Placement:
    """Where and how lesions are placed; the defaults are the original simulator's choices.

    Sites (pools) are named: ``lobar``, ``deep``, ``infratentorial``, ``juxtacortical``,
    ``intranuclear`` (any deep nucleus), ``perivenous`` (beside an already placed vein), and for
    calcifications ``calc-gp``, ``calc-nuclei``, ``calc-choroid``, ``calc-pineal``, ``calc-any``.
    """

    order: tuple = ("iron", "cmb", "calcification", "vein")
    iron_nuclei: tuple = ("caudate", "putamen", "globus")      # name prefixes of NUCLEI_LABELS
    cmb_sites: tuple = ("lobar", "deep", "infratentorial")
    cmb_site_alpha: tuple = (3.0, 1.5, 1.0)                     # per-subject Dirichlet mixture
    cmb_radius_beta: tuple = (1.4, 2.2)
    cmb_lobulated_p: float = 0.2
    cmb_aniso: float = 0.2
    calc_sites: tuple = ("calc-gp", "calc-choroid", "calc-pineal", "calc-any")
    calc_site_p: tuple = (0.35, 0.25, 0.15, 0.25)
    calc_site_list: tuple | None = None   # one site per calcification (overrides the mixture)
    vein_radial_p: float = 0.0            # share of veins starting radially (medullary veins)
    vein_turn_sd: float = 0.3             # random-walk turn per 3 mm step (tortuosity)


class _Placer:
    """Pools of candidate sites and the non-overlap bookkeeping of one subject's lesions."""

    def __init__(self, rng, anat, t2_affine, margin_mm):
        self.rng, self.anat, self.A = rng, anat, _Anat(anat)
        self.t2_inv = np.linalg.inv(t2_affine)
        self.margin = margin_mm
        self.placed: list[Lesion] = []
        self.centre_voxels: set = set()
        self._pools: dict = {}

    def labels(self, prefixes):
        return [i + 1 for i, n in enumerate(NUCLEI_LABELS) if n.split("-")[0] in prefixes]

    def pool(self, name):
        if name not in self._pools:
            self._pools[name] = self._make_pool(name)
        return self._pools[name]

    def _make_pool(self, name):
        a = self.anat
        tissue = (a["gm"] + a["wm"]) > 0.5
        inner = a["sdist"] < -1.0
        region, nucleus, nucw, site = a["region"], a["nucleus"], a["nucleus_w"], a["site"]
        if name == "lobar":
            lobar_tissue = (a["gm"] > 0.35) | ((a["gm"] > 0.15) & (a["wm"] > 0.3))
            return np.flatnonzero((region >= 1) & (region <= 5) & lobar_tissue & inner & (nucw < 0.1))
        if name == "juxtacortical":  # grey-white junction within a few mm of the surface
            junction = (a["gm"] > 0.2) & (a["wm"] > 0.2)
            return np.flatnonzero((region >= 1) & (region <= 5) & junction & (a["sdist"] > -9.0) & inner)
        if name == "deep":
            return np.flatnonzero((region == 6) & inner)
        if name == "infratentorial":
            return np.flatnonzero((region == 7) & tissue & inner)
        if name == "intranuclear":
            return np.flatnonzero((nucleus > 0) & (nucw > 0.7))
        if name.startswith("iron:"):
            return np.flatnonzero(np.isin(nucleus, self.labels(name[5:].split(","))) & (nucw > 0.85))
        if name == "calc-gp":
            return np.flatnonzero(np.isin(nucleus, self.labels(("globus",))) & (nucw > 0.7))
        if name == "calc-nuclei":
            return np.flatnonzero((nucleus > 0) & (nucw > 0.7))
        if name == "calc-choroid":
            chp = [i + 1 for i, n in enumerate(SITE_LABELS) if n.startswith("choroid")]
            return np.flatnonzero(np.isin(site, chp))
        if name == "calc-pineal":
            return np.flatnonzero(site == SITE_LABELS.index("pineal") + 1)
        if name == "calc-any":
            return np.flatnonzero(tissue & inner)
        if name == "vein":
            return np.flatnonzero(tissue & (a["sdist"] < -4.0))
        raise ValueError(f"unknown placement site {name!r}")

    def draw_from(self, pool_name, radius=0.0):
        if pool_name == "perivenous":
            return self._beside_vein(radius)
        pool = self.pool(pool_name)
        if pool.size == 0:
            return None
        return self.A.world(pool[self.rng.integers(pool.size)], self.rng)

    def _beside_vein(self, radius):
        veins = [les for les in self.placed if les.kind == "vein"]
        if not veins:
            return None
        tube = veins[self.rng.integers(len(veins))].shape
        k = self.rng.integers(len(tube.points) - 1)
        a, b = tube.points[k], tube.points[k + 1]
        p = a + self.rng.uniform(0, 1) * (b - a)
        axis = (b - a) / (np.linalg.norm(b - a) + 1e-9)
        off = np.cross(axis, self.rng.normal(size=3))
        off /= np.linalg.norm(off) + 1e-9
        return p + off * (tube.radius + radius + self.margin + self.rng.uniform(0.3, 2.0))

    def free(self, centre, radius, kind):
        for les in self.placed:
            if les.kind == "vein":
                if les.shape.distance(centre[None])[0] < radius + les.shape.radius + self.margin:
                    return False
            else:
                r_other = les.shape.bound_radius
                if np.linalg.norm(les.centre - centre) < radius + r_other + self.margin:
                    return False
        if DSEG_LABEL[kind]:
            if self._t2_voxel(centre) in self.centre_voxels:
                return False
        return True

    def _t2_voxel(self, c):
        return tuple(np.rint(self.t2_inv[:3, :3] @ c + self.t2_inv[:3, 3]).astype(int))

    def accept(self, lesion):
        self.placed.append(lesion)
        if lesion.dseg_label:
            self.centre_voxels.add(self._t2_voxel(lesion.centre))

    def brain_depth_ok(self, c, r):
        return self.A.value("sdist", c, default=99.0) < -(r + 0.5)


def place_lesions(rng, anat, counts, *, t2_affine, t2_shape, lesion_scale=1.0, ranges=None,
                  nucleus_chi=None, margin_mm=2.0, max_tries=400, placement: Placement | None = None):
    """Place lesions; returns a list of :class:`Lesion` (possibly fewer than asked if crowded).

    ``placement`` chooses sites and shapes (default: the original simulator's); iron deposits
    are an excess added to the local level of their nucleus (``nucleus_chi``), so their truth
    ``chi_ppm`` is that level plus the excess.
    """
    rng_ranges = dict(DEFAULT_RANGES)
    rng_ranges.update(ranges or {})
    placement = placement or Placement()
    P = _Placer(rng, anat, t2_affine, margin_mm)
    steps = {"iron": _place_iron, "cmb": _place_cmbs, "calcification": _place_calcifications,
             "vein": _place_veins}
    for kind in placement.order:
        steps[kind](P, counts.get(kind, 0), rng_ranges, float(lesion_scale), placement,
                    nucleus_chi or {}, max_tries)
    return P.placed


def _place_iron(P, n, rr, s, pl, nucleus_chi, max_tries):
    """Irregular blobs inside iron-bearing nuclei (placed first: the nuclei are small). Blobs are
    scaled less than other lesions on coarse test grids, and shrink a little with each failed
    try so that crowded nuclei still take one."""
    rng, A = P.rng, P.A
    allowed = P.labels(pl.iron_nuclei)
    pool = "iron:" + ",".join(pl.iron_nuclei)
    s_iron = min(s, 1.4)
    for _ in range(n):
        for _try in range(max_tries):
            c = P.draw_from(pool)
            if c is None:
                break
            r = s_iron * rng.uniform(*rr["iron_radius_mm"]) * max(0.6, 1.0 - _try / 250)
            shp = _blob(rng, c, r)
            lab = A.value("nucleus", c)
            if not _fits_in(A, shp, lab, allowed) or not P.free(c, shp.bound_radius, "iron"):
                continue
            excess = rng.uniform(*rr["iron_excess_ppm"])
            base = nucleus_chi.get(NUCLEI_LABELS[lab - 1], 0.1)
            P.accept(Lesion("iron", shp, base + excess, excess, rng.uniform(0.65, 0.88),
                            rng.uniform(0.75, 0.95), region_name(A.value("region", c)),
                            shp.equivalent_radius(), NUCLEI_LABELS[lab - 1]))
            break


def _place_cmbs(P, n, rr, s, pl, nucleus_chi, max_tries):
    """Microbleeds from a per-subject mixture of sites; round, ellipsoidal or lobulated."""
    rng, A = P.rng, P.A
    mix = rng.dirichlet(list(pl.cmb_site_alpha))
    for _ in range(n):
        for _try in range(max_tries):
            where = pl.cmb_sites[rng.choice(len(pl.cmb_sites), p=mix)]
            lo, hi = rr["cmb_radius_mm"]
            if where == "perivenous":
                r = s * (lo + (hi - lo) * rng.beta(*pl.cmb_radius_beta))
                c = P.draw_from(where, r)
            else:
                c = P.draw_from(where)
                r = s * (lo + (hi - lo) * rng.beta(*pl.cmb_radius_beta))
            if c is None:
                continue
            if rng.random() < pl.cmb_lobulated_p:  # a minority are lobulated rather than round
                shp = _blob(rng, c, r, n=int(rng.integers(2, 4)), spread=0.35, lobe=(0.5, 0.8))
            else:
                shp = EllipsoidUnion(c, r * _aniso(rng, pl.cmb_aniso), random_rotation(rng))
            if not P.brain_depth_ok(c, shp.bound_radius) or not P.free(c, shp.bound_radius, "cmb"):
                continue
            chi = rng.uniform(*rr["cmb_chi_ppm"])
            P.accept(Lesion("cmb", shp, chi, chi, rng.uniform(0.12, 0.4), rng.uniform(0.15, 0.5),
                            region_name(A.value("region", c)), shp.equivalent_radius(), where))
            break


def _place_calcifications(P, n, rr, s, pl, nucleus_chi, max_tries):
    """Diamagnetic mimics at calcification sites (a mixture, or one given site each)."""
    rng, A = P.rng, P.A
    sites = list(pl.calc_site_list) if pl.calc_site_list is not None else None
    for i in range(len(sites) if sites is not None else n):
        for _try in range(max_tries):
            if sites is not None:
                where = sites[i]
            else:
                where = pl.calc_sites[rng.choice(len(pl.calc_sites), p=list(pl.calc_site_p))]
            c = P.draw_from(where)
            lo, hi = rr["calcification_radius_mm"]
            r = s * (lo + (hi - lo) * rng.beta(1.5, 2.0))
            shp = EllipsoidUnion(c, r * _aniso(rng, 0.25), random_rotation(rng)) if c is not None else None
            if c is None or A.value("sdist", c, 99.0) > 0 or not P.free(c, shp.bound_radius, "calcification"):
                continue
            chi = rng.uniform(*rr["calcification_chi_ppm"])
            P.accept(Lesion("calcification", shp, chi, chi, rng.uniform(0.12, 0.45), rng.uniform(0.2, 0.6),
                            region_name(A.value("region", c)), float(r), where))
            break


def _place_veins(P, n, rr, s, pl, nucleus_chi, max_tries):
    """Veins: persistent random walks through the parenchyma."""
    rng, A = P.rng, P.A
    for _ in range(n):
        for _try in range(max_tries // 4):
            c = P.draw_from("vein")
            if c is None:
                break
            r = s * rng.uniform(*rr["vein_radius_mm"])
            radial = None
            if pl.vein_radial_p > 0 and rng.random() < pl.vein_radial_p:
                radial = c - P.anat["head_centre"]
            tube = _vein(rng, A, c, r, rng.uniform(*rr["vein_length_mm"]), turn_sd=pl.vein_turn_sd,
                         direction=radial)
            if tube is None or not _tube_free(tube, P.placed, P.margin):
                continue
            chi = rng.uniform(*rr["vein_chi_ppm"])
            P.accept(Lesion("vein", tube, chi, chi, rng.uniform(0.35, 0.8), rng.uniform(0.6, 0.9),
                            region_name(A.value("region", tube.centre)), float(r), "vein"))
            break


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


def _vein(rng, A, start, radius, length, step=3.0, turn_sd=0.3, direction=None):
    d = rng.normal(size=3)
    if direction is not None:  # mostly along the given direction (e.g. radial, medullary veins)
        d = 0.3 * d / np.linalg.norm(d) + np.asarray(direction, float) / (np.linalg.norm(direction) + 1e-9)
    d /= np.linalg.norm(d)
    pts = [np.asarray(start, float)]
    n = max(2, int(round(length / step)))
    for _ in range(n):
        d = d + rng.normal(0, turn_sd, 3)
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
