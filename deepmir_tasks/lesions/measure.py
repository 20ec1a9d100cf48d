"""Measurements of one lesion candidate: size, centroid, probability, QSM, SWI contrast, shape.

Plain functions on arrays; :func:`measure_component` makes one row of the lesion table (without
the identifiers and the region, which :func:`~deepmir_tasks.lesions.extract.extract_lesions`
adds for the whole table).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

__all__ = ["Volumes", "measure_component", "principal_extent", "qsm_peak_shape"]

#: width of the shell around a lesion in which the local SWI contrast is measured (mm)
SHELL_MM = 2.0


@dataclass(frozen=True)
class Volumes:
    """The maps one subject's candidates are measured in (all on one grid)."""

    affine: np.ndarray
    probs: dict               # class name -> probability map (float32)
    any_candidate: np.ndarray  # voxels that are a candidate of any class
    mask: np.ndarray          # brain mask (bool)
    qsm: np.ndarray | None
    swi: np.ndarray | None

    @cached_property
    def zooms(self) -> np.ndarray:
        return np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))

    @cached_property
    def voxel_mm3(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3])))

    @cached_property
    def shell_ball(self) -> np.ndarray:
        """The structuring element of the SWI shell: an ellipsoid of ``SHELL_MM`` in voxels."""
        radius_vox = SHELL_MM / self.zooms
        r = np.maximum(np.ceil(radius_vox).astype(int), 1)
        grid = np.ogrid[tuple(slice(-n, n + 1) for n in r)]
        dist = sum((g / max(rv, 1e-6)) ** 2 for g, rv in zip(grid, radius_vox))
        return dist <= 1.0 + 1e-9

    @cached_property
    def shell_pad(self) -> np.ndarray:
        """Voxels to add around a candidate's bounding box so that its SWI shell fits."""
        return np.ceil(SHELL_MM / self.zooms).astype(int)


def measure_component(vol: Volumes, name: str, comp: np.ndarray, lo, crop) -> tuple[dict, np.ndarray]:
    """Measure one 26-connected candidate of class ``name``.

    ``comp`` is its boolean mask inside the box ``crop`` (slices starting at voxel ``lo``, the
    candidate's bounding box plus the SWI shell). Returns the table row and its voxel indices.
    """
    ijk = np.argwhere(comp) + np.asarray(lo)
    n = len(ijk)
    centroid = ijk.mean(axis=0)
    xyz = vol.affine[:3, :3] @ centroid + vol.affine[:3, 3]
    p_vals = vol.probs[name][crop][comp]
    row = {
        "label": name, "n_voxels": n, "volume_mm3": n * vol.voxel_mm3,
        "diameter_mm": float(np.cbrt(6.0 * n * vol.voxel_mm3 / np.pi)),
        "x_mm": xyz[0], "y_mm": xyz[1], "z_mm": xyz[2],
        "i": centroid[0], "j": centroid[1], "k": centroid[2],
        "prob_max": float(p_vals.max()), "prob_mean": float(p_vals.mean()),
        "qsm_mean_ppm": np.nan, "qsm_max_ppm": np.nan, "swi_contrast": np.nan,
        "qsm_extent_mm": np.nan, "qsm_elongation": np.nan,
    }
    if vol.qsm is not None:
        q = vol.qsm[crop][comp]
        row["qsm_mean_ppm"], row["qsm_max_ppm"] = float(q.mean()), float(q.max())
        # the QSM peak (of equal values, the one nearest the centroid)
        near = np.linalg.norm(ijk - centroid, axis=1)
        top = np.flatnonzero(q >= q.max())
        row["qsm_extent_mm"], row["qsm_elongation"] = qsm_peak_shape(
            vol.qsm, ijk[top[np.argmin(near[top])]], vol.zooms)
    if vol.swi is not None:
        row["swi_contrast"] = _swi_contrast(vol, comp, crop)
    return row, ijk


def _swi_contrast(vol: Volumes, comp: np.ndarray, crop) -> float:
    """(mean SWI of the shell - mean SWI in the lesion) / SD of the shell; NaN if not measurable."""
    from scipy import ndimage

    shell = (ndimage.binary_dilation(comp, structure=vol.shell_ball) & ~vol.any_candidate[crop]
             & vol.mask[crop])
    if shell.sum() < 3:
        return np.nan
    s_shell = vol.swi[crop][shell]
    sd = float(s_shell.std())
    if not sd > 0:
        return np.nan
    return (float(s_shell.mean()) - float(vol.swi[crop][comp].mean())) / sd


def principal_extent(ijk: np.ndarray, affine: np.ndarray) -> float:
    """Largest extent (mm) of a voxel set along its principal axes, plus one voxel."""
    voxel = float(np.cbrt(abs(np.linalg.det(affine[:3, :3]))))
    if len(ijk) < 2:
        return voxel
    xyz = ijk @ affine[:3, :3].T
    xyz = xyz - xyz.mean(axis=0)
    _, _, vt = np.linalg.svd(xyz, full_matrices=False)
    proj = xyz @ vt.T
    return float((proj.max(axis=0) - proj.min(axis=0)).max() + voxel)


def qsm_peak_shape(qsm: np.ndarray, peak, zooms, *, fraction: float = 0.5, search_mm: float = 10.0,
                   min_contrast_ppm: float = 0.02) -> tuple[float, float]:
    """Extent (mm) and elongation of the QSM-bright region around voxel ``peak``.

    Within ``search_mm`` of ``peak`` along each axis, the local background is the median QSM; the
    region is the 6-connected set of voxels, joined to ``peak``, at or above the background plus
    ``fraction`` of the peak's contrast over it (so that a microbleed inside an iron-rich nucleus is
    measured against the nucleus). Extent is the region's largest distance from ``peak`` in mm;
    elongation is ``sqrt(l1 / l2)`` for the two largest eigenvalues of the covariance of its voxel
    positions (mm), 1 for fewer than four voxels. ``(nan, nan)`` when the peak stands less than
    ``min_contrast_ppm`` above the background (nothing to measure).
    """
    import cc3d

    zooms = np.asarray(zooms, float)
    peak = np.asarray(peak, int)
    r = np.ceil(search_mm / zooms).astype(int)
    lo = np.maximum(peak - r, 0)
    hi = np.minimum(peak + r + 1, qsm.shape)
    box = np.asarray(qsm[tuple(slice(a, b) for a, b in zip(lo, hi))], np.float32)
    c = tuple(peak - lo)
    background = float(np.median(box))
    contrast = float(box[c]) - background
    if not contrast >= min_contrast_ppm:
        return float("nan"), float("nan")
    cc = cc3d.connected_components((box >= background + fraction * contrast).astype(np.uint8), connectivity=6)
    reg = (np.argwhere(cc == cc[c]) - np.asarray(c)) * zooms
    extent = float(np.sqrt((reg ** 2).sum(axis=1)).max())
    if len(reg) < 4:
        return extent, 1.0
    ev = np.sort(np.linalg.eigvalsh(np.cov(reg.T)))[::-1]
    return extent, float(np.sqrt(ev[0] / max(ev[1], 1e-3 * float(zooms.min()) ** 2)))
