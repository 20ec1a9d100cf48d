"""MARS anatomical categories for points in MNI152 space, derived offline.

The Microbleed Anatomical Rating Scale (MARS; Gregoire et al., Neurology 73:1759, 2009) sorts
microbleeds into three locations:

* ``infratentorial``: brainstem and cerebellum;
* ``deep``: basal ganglia, thalamus, internal and external capsule, corpus callosum, deep and
  periventricular white matter;
* ``lobar``: cortex and subcortical (juxtacortical) white matter, by lobe: ``lobar-frontal``,
  ``lobar-parietal``, ``lobar-temporal``, ``lobar-occipital``, ``lobar-insula``; plain ``lobar``
  when the lobe cannot be told (the point lies within ``LOBE_MARGIN_MM`` of a lobe boundary, or
  outside the template brain).

No atlas is downloaded. The classifier combines

1. geometric models in MNI152 2009 coordinates (mm, RAS), with parameters read off the
   nilearn-bundled MNI152 2009a T1 template and the literature:
   - the tentorium cerebelli as a tent ``z = z0(y) - 0.45 |x|`` with ``z0`` piecewise linear in
     ``y`` (apex about z = 0 at y = -60, falling to z = -25 at the occipital pole), bounded in front
     by the petrous ridge ``y < -33 - 0.3 |x|``; the brainstem as an elliptic cylinder
     (half-widths 17 mm left-right, 15 mm antero-posterior, centre y = -25 mm tilting back below
     the pons, from z = -8 mm down);
   - ellipsoids for the deep nuclei and tracts (centres from the AAL/Harvard-Oxford centroids:
     putamen (±25, 2, 1), pallidum (±20, -2, 0), caudate head (±13, 12, 9) and body, thalamus
     (±11, -18, 7), internal capsule, external capsule and claustrum, corpus callosum);
   - lobe boundaries: central sulcus ``y = -10 - 0.6 (z - 25)`` (above z = 25 mm; y = -10 mm
     below), Sylvian fissure / parieto-temporal line ``z = min(25, -0.55 y)``, parieto-occipital and
     temporo-occipital boundary ``y = min(-65, -60 - 0.4 z)``, and an ellipsoid for the insula;
2. the nilearn-bundled MNI152 2009a grey- and white-matter probability maps: white matter deeper
   than ``deep_wm_depth_mm`` (default 5 mm: beyond the gyral cores and U-fibres) from the
   cortical ribbon counts as deep white matter, shallower white matter as subcortical (lobar);
   an ellipsoid around the lateral ventricles adds the periventricular white matter.

The templates are read on first use, reduced to a 2 mm grid and cached in memory (well under
a second); importing this module reads nothing. Boundaries are approximate (a few mm), which
is of the order of the registration error of an affine T2w-to-MNI alignment.
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = [
    "REGIONS",
    "LOBE_MARGIN_MM",
    "classify_mni",
    "classify_world",
    "load_affine",
]

#: every region label that :func:`classify_mni` can return
REGIONS = (
    "lobar-frontal",
    "lobar-parietal",
    "lobar-temporal",
    "lobar-occipital",
    "lobar-insula",
    "lobar",
    "deep",
    "infratentorial",
)

#: a lobar point closer than this (mm) to a lobe boundary is reported as plain ``lobar``
LOBE_MARGIN_MM = 2.0

# Deep structures: (centre x (for the right side, mirrored), y, z), semi-axes (x, y, z), in mm.
_DEEP_ELLIPSOIDS = {
    "putamen": ((25.0, 2.0, 1.0), (7.0, 16.0, 10.0)),
    "pallidum": ((20.0, -2.0, 0.0), (4.5, 8.0, 5.0)),
    "caudate_head": ((13.0, 12.0, 9.0), (5.5, 9.0, 10.0)),
    "caudate_body": ((15.0, -8.0, 20.0), (5.0, 13.0, 6.0)),
    "thalamus": ((11.0, -18.0, 7.0), (8.5, 13.0, 9.0)),
    "internal_capsule": ((20.0, -5.0, 8.0), (5.0, 18.0, 12.0)),
    "external_capsule": ((31.0, 0.0, 3.0), (3.0, 18.0, 10.0)),
    # the corpus callosum and the lateral ventricles around it (periventricular): midline
    "corpus_callosum": ((0.0, -3.0, 14.0), (16.0, 38.0, 14.0)),
    # lateral ventricles (bodies, frontal horns, atria) and the periventricular white matter
    "periventricular": ((17.0, -8.0, 17.0), (12.0, 36.0, 13.0)),
}
_INSULA = ((39.0, -3.0, 3.0), (6.0, 20.0, 13.0))


def _inside_ellipsoid(xyz, centre, semi):
    x = np.abs(xyz[:, 0]) if centre[0] != 0 else xyz[:, 0]
    d = ((x - centre[0]) / semi[0]) ** 2 + ((xyz[:, 1] - centre[1]) / semi[1]) ** 2 \
        + ((xyz[:, 2] - centre[2]) / semi[2]) ** 2
    return d <= 1.0


def _tentorium_z(x, y):
    """Height (mm) of the tentorium cerebelli above (x, y) in MNI space."""
    z0 = np.interp(y, [-110.0, -90.0, -75.0, -60.0, -45.0, -30.0],
                   [-25.0, -18.0, -8.0, 0.0, -4.0, -5.0])
    return z0 - 0.45 * np.abs(x)


def _is_infratentorial(xyz):
    x, y, z = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    cerebellum = (y < -33.0 - 0.3 * np.abs(x)) & (z < _tentorium_z(x, y)) & (z > -90.0)
    yc = np.where(z < -20.0, -25.0 + 0.45 * (z + 20.0), -25.0)
    brainstem = ((x / 17.0) ** 2 + ((y - yc) / 15.0) ** 2 <= 1.0) & (z < -8.0) & (z > -90.0)
    return cerebellum | brainstem


def _is_deep_structure(xyz):
    out = np.zeros(len(xyz), dtype=bool)
    for centre, semi in _DEEP_ELLIPSOIDS.values():
        out |= _inside_ellipsoid(xyz, centre, semi)
    return out


@functools.lru_cache(maxsize=1)
def _atlas():
    """Read the bundled MNI152 2009a tissue maps once; return the arrays used by the classifier."""
    from nilearn import datasets
    from scipy import ndimage

    gm_img = datasets.load_mni152_gm_template(resolution=1)
    wm_img = datasets.load_mni152_wm_template(resolution=1)
    # A 2 mm grid (every other voxel) is precise enough for these boundaries and 8x cheaper.
    step = 2
    gm = np.ascontiguousarray(np.asarray(gm_img.dataobj, dtype=np.float32)[::step, ::step, ::step])
    wm = np.ascontiguousarray(np.asarray(wm_img.dataobj, dtype=np.float32)[::step, ::step, ::step])
    affine = gm_img.affine.copy()
    affine[:3, :3] = affine[:3, :3] * step
    shape = gm.shape
    # Cortical ribbon: grey matter that is neither a deep nucleus nor below the tentorium.
    ijk = np.indices(shape).reshape(3, -1).T
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    subcortical = (_is_deep_structure(xyz) | _is_infratentorial(xyz)).reshape(shape)
    cortex = (gm > 0.5) & ~subcortical
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    depth = ndimage.distance_transform_edt(~cortex, sampling=zooms).astype(np.float32)
    brain = ndimage.binary_closing((gm + wm) > 0.3, iterations=2)
    outside = ndimage.distance_transform_edt(~brain, sampling=zooms).astype(np.float32)
    return {"affine": affine, "inv": np.linalg.inv(affine), "gm": gm, "wm": wm,
            "depth": depth, "outside": outside}


def _sample(volume, inv_affine, xyz):
    ijk = np.rint(xyz @ inv_affine[:3, :3].T + inv_affine[:3, 3]).astype(int)
    shape = np.asarray(volume.shape)
    inside = np.all((ijk >= 0) & (ijk < shape), axis=1)
    out = np.full(len(xyz), np.nan, dtype=np.float32)
    out[inside] = volume[tuple(ijk[inside].T)]
    return out


def _lobe(xyz):
    """Lobe for each point and the distance (mm, along one axis) to the boundary that decided it."""
    x, y, z = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    ax = np.abs(x)
    lobes = np.empty(len(xyz), dtype=object)
    margin = np.full(len(xyz), np.inf)

    insula = _inside_ellipsoid(xyz, *_INSULA)
    y_occ = np.minimum(-65.0, -60.0 - 0.4 * z)
    occipital = y < y_occ
    z_syl = np.minimum(25.0, -0.55 * y)
    temporal = (z < z_syl) & ((y < 5.0) | ((ax > 30.0) & (y < 25.0))) & (ax > 15.0)
    y_cs = np.where(z > 25.0, -10.0 - 0.6 * (z - 25.0), -10.0)
    frontal = y > y_cs

    for i in range(len(xyz)):
        if insula[i]:
            lobes[i] = "lobar-insula"
            continue
        d_occ = abs(y[i] - y_occ[i])
        if occipital[i]:
            lobes[i], margin[i] = "lobar-occipital", d_occ
            continue
        d_syl = abs(z[i] - z_syl[i])
        if temporal[i]:
            lobes[i], margin[i] = "lobar-temporal", min(d_syl, d_occ)
            continue
        d_cs = abs(y[i] - y_cs[i])
        near_temporal = d_syl if ax[i] > 15.0 and y[i] < 25.0 else np.inf
        lobes[i] = "lobar-frontal" if frontal[i] else "lobar-parietal"
        margin[i] = min(d_cs, near_temporal, d_occ if not frontal[i] else np.inf)
    return lobes, margin


def classify_mni(xyz_mni, *, deep_wm_depth_mm: float = 5.0, margin_mm: float = LOBE_MARGIN_MM,
                 outside_brain_mm: float = 5.0) -> list[str]:
    """MARS region of each point given in MNI152 world mm (array of shape (N, 3) or (3,)).

    Returns one of :data:`REGIONS` per point. Order of decisions: below the tentorium or in the
    brainstem -> ``infratentorial``; inside a deep nucleus/capsule/callosal ellipsoid, or in white
    matter deeper than ``deep_wm_depth_mm`` from the cortex -> ``deep``; otherwise lobar, with the
    lobe from the MNI boundaries, or plain ``lobar`` within ``margin_mm`` of a boundary or farther
    than ``outside_brain_mm`` outside the template brain.
    """
    xyz = np.atleast_2d(np.asarray(xyz_mni, dtype=float))
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError(f"expected MNI coordinates of shape (N, 3), got {np.shape(xyz_mni)}")
    n = len(xyz)
    if n == 0:
        return []
    out = np.empty(n, dtype=object)
    infra = _is_infratentorial(xyz)
    deep = _is_deep_structure(xyz) & ~infra
    out[infra] = "infratentorial"
    out[deep] = "deep"
    rest = ~(infra | deep)
    if np.any(rest):
        atlas = _atlas()
        pts = xyz[rest]
        gm = _sample(atlas["gm"], atlas["inv"], pts)
        wm = _sample(atlas["wm"], atlas["inv"], pts)
        depth = _sample(atlas["depth"], atlas["inv"], pts)
        outside = _sample(atlas["outside"], atlas["inv"], pts)
        deep_wm = (wm > gm) & (wm > 0.3) & (depth > deep_wm_depth_mm)
        lobes, margin = _lobe(pts)
        unsure = (margin < margin_mm) | ~(outside <= outside_brain_mm)
        lobes = np.where(unsure, "lobar", lobes)
        lobes = np.where(deep_wm, "deep", lobes)
        out[rest] = lobes
    return [str(r) for r in out]


def load_affine(value, *, what: str = "t2_to_mni"):
    """A 4x4 world->world affine from an array or a text file of 4 rows of 4 numbers.

    Raises :class:`~deepmir_tasks.io.InputError` naming the file when it is not a finite,
    invertible 4x4 affine.
    """
    from pathlib import Path

    from deepmir_tasks.io import InputError

    if value is None:
        return None
    if isinstance(value, (str, Path)):
        path = Path(value)
        if not path.is_file():
            raise InputError(path, f"{what} affine file does not exist")
        try:
            mat = np.loadtxt(path, dtype=float, ndmin=2)
        except ValueError as err:
            raise InputError(path, f"{what} is not a text file of numbers ({err})") from None
        source = path
    else:
        mat = np.asarray(value, dtype=float)
        source = what
    if mat.shape != (4, 4):
        raise InputError(source, f"{what} must hold a 4x4 affine, got shape {mat.shape}")
    if not np.all(np.isfinite(mat)) or abs(np.linalg.det(mat[:3, :3])) < 1e-9 \
            or not np.allclose(mat[3], [0, 0, 0, 1]):
        raise InputError(source, f"{what} is not an invertible affine (last row must be 0 0 0 1)")
    return mat


def classify_world(xyz_world, world_to_mni, **kwargs) -> list[str]:
    """MARS region of points in a subject's world mm, given a 4x4 world->MNI affine.

    ``world_to_mni=None`` gives ``"n/a"`` for every point.
    """
    xyz = np.atleast_2d(np.asarray(xyz_world, dtype=float))
    if world_to_mni is None:
        return ["n/a"] * len(xyz)
    mat = load_affine(world_to_mni)
    mni = xyz @ mat[:3, :3].T + mat[:3, 3]
    return classify_mni(mni, **kwargs)
