"""Deep grey nuclei drawn as ellipsoids in MNI space, and their iron (susceptibility) across age.

Centres and semi-axes (mm, MNI152 2009 space) were read off the ICBM152 2009 T1 template and
standard atlases for this generator; left nuclei mirror the right ones (x -> -x). The age curve
is a saturating exponential, chi(age) = chi_inf * (1 - exp(-age / tau)), the form Hallgren &
Sourander (1958, J Neurochem 3:41) fitted to post-mortem non-haem iron and Li et al. (2014,
Hum Brain Mapp 35:2698, "Differential developmental trajectories of magnetic susceptibility in
human brain gray and white matter over the lifespan") fitted to QSM. The plateaus follow their
QSM values and Acosta-Cabronero et al. (2016, J Neurosci 36:364, "In vivo MRI mapping of brain
iron deposition across the adult lifespan"): globus pallidus about 0.2 ppm in old age, putamen
about 0.1 (still rising), caudate about 0.07, substantia nigra and red nucleus 0.1-0.15, dentate
about 0.1, thalamus a few hundredths. Values are relative to CSF.
"""

from __future__ import annotations

import numpy as np

__all__ = ["NUCLEI", "nucleus_chi", "nucleus_labels", "nucleus_names"]

#: name -> (right-hemisphere centre x y z, semi-axes a b c (mm), rotation about x (deg),
#:          chi_inf (ppm), tau (years))
NUCLEI = {
    "globus_pallidus": ((18.5, -3.5, -0.5), (3.4, 8.5, 5.0), -10.0, 0.205, 18.0),
    "putamen": ((26.5, 2.0, 1.5), (4.6, 14.0, 8.5), -8.0, 0.135, 55.0),
    "caudate": ((12.5, 12.0, 10.0), (4.2, 8.5, 7.0), 20.0, 0.085, 40.0),
    "thalamus": ((11.0, -18.0, 6.5), (6.5, 12.0, 7.5), 5.0, 0.035, 40.0),
    "substantia_nigra": ((10.5, -18.5, -12.5), (2.6, 6.5, 2.8), -30.0, 0.150, 22.0),
    "red_nucleus": ((5.2, -20.5, -8.5), (2.9, 3.4, 3.2), 0.0, 0.130, 28.0),
    "dentate": ((14.5, -57.0, -33.0), (5.8, 8.0, 4.8), 15.0, 0.115, 30.0),
}


def nucleus_names() -> list:
    """Names with hemisphere, in label order (label = index + 1): ``globus_pallidus_R``, ..."""
    return [f"{n}_{h}" for n in NUCLEI for h in ("R", "L")]


def nucleus_chi(name: str, age_years: float, factor: float = 1.0) -> float:
    """Mean susceptibility (ppm, relative to CSF) of nucleus ``name`` at ``age_years``."""
    base = name[:-2] if name.endswith(("_R", "_L")) else name
    _, _, _, chi_inf, tau = NUCLEI[base]
    return float(factor * chi_inf * (1.0 - np.exp(-age_years / tau)))


def _ellipsoid_distance(xyz_mm, centre, axes, tilt_deg):
    """Normalised ellipsoid radius (1 on the surface) of points ``xyz_mm`` (..., 3)."""
    c, s = np.cos(np.radians(tilt_deg)), np.sin(np.radians(tilt_deg))
    d = xyz_mm - np.asarray(centre)
    y = c * d[..., 1] + s * d[..., 2]
    z = -s * d[..., 1] + c * d[..., 2]
    return np.sqrt((d[..., 0] / axes[0]) ** 2 + (y / axes[1]) ** 2 + (z / axes[2]) ** 2)


def nucleus_labels(shape, affine) -> np.ndarray:
    """Label map (uint8, 0 = none, labels as :func:`nucleus_names`) of a grid in MNI mm."""
    out = np.zeros(shape, np.uint8)
    inv = np.linalg.inv(affine)
    label = 0
    for name, (centre, axes, tilt, _, _) in NUCLEI.items():
        for sign in (1.0, -1.0):
            label += 1
            ctr = np.array([sign * centre[0], centre[1], centre[2]])
            half = max(axes) + 2.0
            lo = np.floor(inv[:3, :3] @ (ctr - half) + inv[:3, 3]).astype(int)
            hi = np.ceil(inv[:3, :3] @ (ctr + half) + inv[:3, 3]).astype(int)
            lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
            lo, hi = np.clip(lo, 0, shape), np.clip(hi + 1, 0, shape)
            ii, jj, kk = np.meshgrid(*(np.arange(a, b) for a, b in zip(lo, hi)), indexing="ij")
            ijk = np.stack([ii, jj, kk], -1).astype(float)
            xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
            d = _ellipsoid_distance(xyz, ctr, axes, tilt)
            box = out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
            box[(d <= 1.0) & (box == 0)] = label
    return out
