"""MNI-space anatomy for the simulator: tissue maps, deep nuclei, regions and a head shell.

The tissue maps are nilearn's MNI152 2009a GM/WM probability maps (1 mm, shipped with nilearn,
no download). A brain mask is derived from them (smoothed GM+WM, closed, holes filled), CSF is
the part of that mask which is neither GM nor WM, and the signed distance to the mask's surface
lets the caller wrap the brain in CSF, bone and scalp shells of any thickness.

Deep grey nuclei are ellipsoids at literature MNI coordinates with literature susceptibilities
(ppm, relative to CSF), after Deistung et al. 2013 (NeuroImage 65:299), Lim et al. 2013
(NeuroImage 82:449), Li et al. 2014 (Hum Brain Mapp 35:2698) and the QSM challenge 2.0 head model
(Marques et al. 2021, MRM 86:526). Values are means for adults; the simulator scales them per
subject.

Everything here is computed lazily on first use and cached for the process; importing this
module reads nothing.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Ellipsoid",
    "NUCLEI",
    "SITES",
    "AIR_CAVITIES",
    "TISSUE_CHI_PPM",
    "REGION_NAMES",
    "MNIAnatomy",
    "mni_anatomy",
    "region_name",
]

#: susceptibility of the tissue classes (ppm, relative to CSF)
TISSUE_CHI_PPM = {"csf": 0.0, "gm": 0.015, "wm": -0.03}


@dataclass(frozen=True)
class Ellipsoid:
    """An axis-aligned ellipsoid in MNI mm (right hemisphere coordinates when ``bilateral``)."""

    name: str
    centre: tuple[float, float, float]
    radii: tuple[float, float, float]
    chi_ppm: float | None = None
    bilateral: bool = True

    def instances(self):
        """Yield ``(name, centre)`` for each hemisphere (x mirrored for the left)."""
        cx, cy, cz = self.centre
        if self.bilateral:
            yield f"{self.name}-R", (abs(cx), cy, cz)
            yield f"{self.name}-L", (-abs(cx), cy, cz)
        else:
            yield self.name, (cx, cy, cz)


#: deep grey nuclei with their susceptibility (ppm); label = 1-based position in NUCLEI_LABELS
NUCLEI = (
    Ellipsoid("caudate", (13.0, 12.0, 10.0), (4.5, 11.0, 7.0), 0.04),
    Ellipsoid("putamen", (25.0, 3.0, 1.0), (5.0, 14.0, 8.5), 0.04),
    Ellipsoid("globus-pallidus", (19.0, -3.0, -1.0), (3.5, 7.5, 4.5), 0.13),
    Ellipsoid("thalamus", (11.0, -18.0, 7.0), (6.5, 11.5, 7.0), 0.02),
    Ellipsoid("red-nucleus", (5.0, -20.0, -9.0), (2.8, 3.2, 3.2), 0.10),
    Ellipsoid("substantia-nigra", (11.5, -17.0, -13.5), (2.8, 6.5, 2.8), 0.11),
    Ellipsoid("dentate", (15.0, -57.0, -35.0), (6.5, 8.5, 5.5), 0.15),
)

#: other anatomical sites (no susceptibility of their own): calcification sites and the brainstem
SITES = (
    Ellipsoid("choroid-plexus", (28.0, -42.0, 15.0), (4.0, 6.0, 4.0)),
    Ellipsoid("pineal", (0.0, -32.0, 3.0), (3.0, 4.0, 3.0), bilateral=False),
    Ellipsoid("brainstem", (0.0, -28.0, -32.0), (10.0, 12.0, 22.0), bilateral=False),
)

#: air-filled cavities near the brain (MNI mm); air is about +9.4 ppm relative to water/tissue.
#: Their dipole fields are the strong background fields of GRE (signal loss at the skull base).
AIR_CAVITIES = (
    Ellipsoid("frontal-sinus", (0.0, 82.0, 2.0), (8.0, 8.0, 8.0), 9.4, bilateral=False),
    Ellipsoid("ethmoid-cells", (0.0, 40.0, -41.0), (9.0, 9.0, 9.0), 9.4, bilateral=False),
    Ellipsoid("sphenoid-sinus", (0.0, 10.0, -52.0), (10.0, 10.0, 10.0), 9.4, bilateral=False),
    Ellipsoid("mastoid", (58.0, -35.0, -50.0), (7.0, 7.0, 7.0), 9.4),
)

NUCLEI_LABELS = tuple(name for nuc in NUCLEI for name, _ in nuc.instances())
SITE_LABELS = tuple(name for site in SITES for name, _ in site.instances())

#: region codes of the region map (MARS vocabulary as used in the lesion tables)
REGION_NAMES = {
    0: "none",
    1: "lobar-frontal",
    2: "lobar-parietal",
    3: "lobar-temporal",
    4: "lobar-occipital",
    5: "lobar-insula",
    6: "deep",
    7: "infratentorial",
}


def region_name(code: int) -> str:
    return REGION_NAMES.get(int(code), "none")


@dataclass
class MNIAnatomy:
    """Cached MNI-space maps on a 1 mm grid (padded below the brainstem)."""

    affine: np.ndarray          # voxel -> MNI mm
    gm: np.ndarray              # float32 probability
    wm: np.ndarray              # float32 probability
    sdist: np.ndarray           # float32 signed distance to the brain surface, mm (<0 inside)
    nucleus: np.ndarray         # uint8 label into NUCLEI_LABELS (0 = none)
    nucleus_w: np.ndarray       # float32 soft membership of that nucleus (0..1)
    site: np.ndarray            # uint8 label into SITE_LABELS (0 = none)
    region: np.ndarray          # uint8 region code (REGION_NAMES)

    @property
    def shape(self):
        return self.gm.shape


def _ellipsoid_q(xyz, centre, radii):
    """Normalised radius |(x - c)/r| for MNI points ``xyz`` (..., 3)."""
    d = (xyz - np.asarray(centre, np.float32)) / np.asarray(radii, np.float32)
    return np.sqrt(np.sum(d * d, axis=-1))


@functools.lru_cache(maxsize=1)
def mni_anatomy() -> MNIAnatomy:
    """Build (once per process) the MNI tissue, nucleus, site and region maps."""
    from nilearn import datasets
    from scipy import ndimage as ndi

    gm_img = datasets.load_mni152_gm_template(resolution=1)
    wm_img = datasets.load_mni152_wm_template(resolution=1)
    pad_lo = np.array([0, 0, 24])  # the brainstem reaches the bottom of the template
    gm = np.pad(np.asarray(gm_img.get_fdata(), np.float32), [(p, 0) for p in pad_lo])
    wm = np.pad(np.asarray(wm_img.get_fdata(), np.float32), [(p, 0) for p in pad_lo])
    affine = gm_img.affine.copy()
    affine[:3, 3] -= affine[:3, :3] @ pad_lo

    tissue = ndi.gaussian_filter(gm + wm, 1.0)
    brain = ndi.binary_fill_holes(tissue > 0.25)
    brain = ndi.binary_closing(brain, ndi.generate_binary_structure(3, 1), iterations=2)
    brain = ndi.binary_fill_holes(brain)
    # close the brainstem off at the bottom: the template ends in the medulla
    idx_zmin = int(np.round(np.linalg.solve(affine[:3, :3], np.array([0, 0, -62.0]) - affine[:3, 3])[2]))
    brain[:, :, :idx_zmin] = False
    brain = _largest_component(brain)
    d_out = ndi.distance_transform_edt(~brain).astype(np.float32)
    d_in = ndi.distance_transform_edt(brain).astype(np.float32)
    sdist = np.where(brain, 0.5 - d_in, d_out - 0.5).astype(np.float32)
    gm = np.where(brain, gm, 0).astype(np.float32)
    wm = np.where(brain, wm, 0).astype(np.float32)

    ijk = np.indices(gm.shape, dtype=np.float32)
    xyz = np.moveaxis(np.tensordot(affine[:3, :3].astype(np.float32), ijk, axes=1), 0, -1)
    xyz += affine[:3, 3].astype(np.float32)
    del ijk

    nucleus = np.zeros(gm.shape, np.uint8)
    nucleus_w = np.zeros(gm.shape, np.float32)
    label = 0
    for nuc in NUCLEI:
        for _, centre in nuc.instances():
            label += 1
            box = _box(affine, centre, np.asarray(nuc.radii) + 4.0, gm.shape)
            w = _soft_ellipsoid(xyz[box], centre, nuc.radii) * brain[box]
            sub_w, sub_l = nucleus_w[box], nucleus[box]
            better = (w > sub_w) & (w > 0.02)
            sub_l[better] = label
            np.maximum(sub_w, w, out=sub_w)
    site = np.zeros(gm.shape, np.uint8)
    label = 0
    for st in SITES:
        for _, centre in st.instances():
            label += 1
            box = _box(affine, centre, np.asarray(st.radii) + 1.0, gm.shape)
            inside = (_ellipsoid_q(xyz[box], centre, st.radii) <= 1.0) & brain[box]
            site[box][inside] = label

    region = _region_map(xyz, brain, nucleus, nucleus_w, site)
    return MNIAnatomy(affine=affine, gm=gm, wm=wm, sdist=sdist, nucleus=nucleus,
                      nucleus_w=nucleus_w.astype(np.float32), site=site, region=region)


def _box(affine, centre, half_mm, shape):
    """Index slices of the axis-aligned box ``centre +- half_mm`` (MNI grid is axis-aligned)."""
    lo = np.linalg.solve(affine[:3, :3], np.asarray(centre) - half_mm - affine[:3, 3])
    hi = np.linalg.solve(affine[:3, :3], np.asarray(centre) + half_mm - affine[:3, 3])
    a, b = np.minimum(lo, hi), np.maximum(lo, hi)
    return tuple(slice(max(int(np.floor(a[i])), 0), min(int(np.ceil(b[i])) + 1, shape[i])) for i in range(3))


def _soft_ellipsoid(xyz, centre, radii, edge_mm: float = 0.8):
    q = _ellipsoid_q(xyz, centre, radii)
    r_eff = float(np.mean(radii))
    return (1.0 / (1.0 + np.exp(np.clip((q - 1.0) * r_eff / edge_mm, -30, 30)))).astype(np.float32)


def _largest_component(mask):
    from scipy import ndimage as ndi

    lab, n = ndi.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == np.argmax(sizes)


def _region_map(xyz, brain, nucleus, nucleus_w, site):
    """Rough MARS regions from MNI coordinates (lobes by landmarks, deep = BG/thalamus)."""
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    ax = np.abs(x)
    region = np.zeros(brain.shape, np.uint8)
    region[brain] = 1  # frontal by default, refined below
    region[brain & (y < -18)] = 2
    region[brain & (z < 2) & (ax > 24) & (y > -70) & (y < 22)] = 3
    region[brain & (y < -70)] = 4
    region[brain & (ax > 29) & (ax < 42) & (y > -25) & (y < 24) & (z > -12) & (z < 22)] = 5
    deep_labels = [i + 1 for i, n in enumerate(NUCLEI_LABELS)
                   if n.split("-")[0] in ("caudate", "putamen", "globus", "thalamus")]
    region[np.isin(nucleus, deep_labels) & (nucleus_w > 0.5)] = 6
    brainstem = SITE_LABELS.index("brainstem") + 1
    # below the tentorium: cerebellum (posterior, under a plane sloping up towards the back),
    # brainstem ellipsoid and the medulla
    cerebellum = brain & (y < -40) & (z < -22 - 0.15 * (y + 40))
    medulla = brain & (z < -45) & (ax < 15) & (y < -20)
    region[cerebellum | (site == brainstem) | medulla] = 7
    return region
