"""The head: MNI ICBM152 2009 tissue maps (bundled with nilearn), a scalp/skull shell, air sinuses.

The simulation grid is the template's own 1 mm grid (197 x 233 x 189, MNI mm). nilearn ships the
grey- and white-matter probability maps and the brain mask of the 2009 template in its wheel
(``load_mni152_*_template``), so nothing is downloaded; CSF is what the brain mask holds beyond
grey and white matter, plus a 2 mm subarachnoid rim.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

from .nuclei import nucleus_labels

__all__ = ["Head", "load_templates", "build_head", "SINUSES"]

#: air cavities near the brain (centre MNI mm, semi-axes mm): the sphenoid sinus under the sella,
#: the ethmoid cells under the gyri recti, the frontal sinus in front of the frontal pole, the
#: mastoid air cells behind each ear
SINUSES = (
    ((0.0, 10.0, -44.0), (11.0, 10.0, 8.0)),
    ((0.0, 38.0, -36.0), (7.0, 12.0, 7.0)),
    ((0.0, 72.0, 8.0), (11.0, 6.0, 9.0)),
    ((46.0, -36.0, -40.0), (7.0, 10.0, 8.0)),
    ((-46.0, -36.0, -40.0), (7.0, 10.0, 8.0)),
)


@dataclass
class Head:
    """Tissue maps on the simulation grid (``affine``: voxel -> MNI mm)."""

    affine: np.ndarray
    gm: np.ndarray          # probabilities, float32
    wm: np.ndarray
    csf: np.ndarray
    brain: np.ndarray       # bool: brain parenchyma and ventricles (the template's brain mask)
    bone: np.ndarray        # bool
    scalp: np.ndarray       # bool
    air: np.ndarray         # bool: sinuses and everything outside the head
    nuclei: np.ndarray      # uint8 labels (see nuclei.nucleus_names)
    depth_mm: np.ndarray    # distance (mm) inside the brain mask from its surface, float32

    @property
    def shape(self):
        return self.gm.shape


_FILES = {"gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
          "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
          "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"}


@lru_cache(maxsize=1)
def load_templates():
    """(gm, wm, mask, affine) of the MNI152 2009 template at 1 mm, read from nilearn's package data.

    The files are those of ``nilearn.datasets.load_mni152_{gm,wm}_template``; they are read with
    nibabel directly because importing ``nilearn.datasets`` costs 6 s (scikit-learn). The brain
    mask is nilearn's rule (T1 template above 0.2 of its maximum), holes filled.
    """
    import importlib.util
    from pathlib import Path

    import nibabel as nib

    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("nilearn is not installed: it provides the MNI152 2009 tissue maps")
    folder = Path(spec.submodule_search_locations[0]) / "datasets" / "data"
    imgs = {k: nib.load(folder / name) for k, name in _FILES.items()}
    data = {k: np.asarray(img.get_fdata(), np.float32) for k, img in imgs.items()}
    data = {k: v / v.max() for k, v in data.items()}
    mask = ndimage.binary_fill_holes(data["t1"] > 0.2)
    return data["gm"], data["wm"], mask, np.asarray(imgs["gm"].affine, float)


def _ellipsoid_mask(shape, affine, centre, axes):
    """Voxels of ``shape`` inside an axis-aligned ellipsoid (MNI mm), computed on its bounding box."""
    inv = np.linalg.inv(affine)
    lo = np.floor(inv[:3, :3] @ (np.subtract(centre, axes)) + inv[:3, 3]).astype(int)
    hi = np.ceil(inv[:3, :3] @ (np.add(centre, axes)) + inv[:3, 3]).astype(int)
    lo, hi = np.clip(np.minimum(lo, hi), 0, shape), np.clip(np.maximum(lo, hi) + 1, 0, shape)
    out = np.zeros(shape, bool)
    if np.any(hi <= lo):
        return out
    ijk = np.stack(np.meshgrid(*(np.arange(a, b) for a, b in zip(lo, hi)), indexing="ij"), -1)
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = (((xyz - centre) / axes) ** 2).sum(-1) <= 1.0
    return out


def build_head(crop=None) -> Head:
    """The head on the template grid, or on the sub-box ``crop`` (tuple of slices) for small tests.

    The head is the same for every subject (subjects differ in their susceptibilities, veins,
    lesions, pose and acquisition), so the last one built is kept and reused.
    """
    key = None if crop is None else tuple((s.start, s.stop) for s in crop)
    if _CACHE.get("key", "none") == key:
        return _CACHE["head"]
    head = _build_head(crop)
    _CACHE.update(key=key, head=head)
    return head


_CACHE: dict = {}


def _build_head(crop) -> Head:
    gm, wm, mask, affine = load_templates()
    if crop is not None:
        gm, wm, mask = gm[crop], wm[crop], mask[crop]
        affine = affine.copy()
        affine[:3, 3] += affine[:3, :3] @ np.array([s.start or 0 for s in crop], float)
    outside = ndimage.distance_transform_edt(~mask).astype(np.float32)
    depth = ndimage.distance_transform_edt(mask).astype(np.float32)
    tissue = np.clip(gm + wm, 0.0, 1.0)
    scale = np.where(tissue > 1.0, 1.0 / np.maximum(tissue, 1e-6), 1.0).astype(np.float32)
    gm, wm = gm * scale, wm * scale
    csf = np.where(mask | (outside <= 2.0), 1.0 - gm - wm, 0.0).astype(np.float32)
    bone = (outside > 2.0) & (outside <= 8.0)
    scalp = (outside > 8.0) & (outside <= 13.0)
    air = outside > 13.0
    for centre, axes in SINUSES:
        cav = _ellipsoid_mask(mask.shape, affine, centre, axes) & (outside > 2.0)
        air |= cav
        bone &= ~cav
        scalp &= ~cav
    return Head(affine=affine, gm=gm, wm=wm, csf=np.clip(csf, 0, 1), brain=mask, bone=bone,
                scalp=scalp, air=air, nuclei=nucleus_labels(mask.shape, affine), depth_mm=depth)
