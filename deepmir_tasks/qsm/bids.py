"""Read raw multi-echo GRE from BIDS: ``sub-X[_ses-Y]_echo-N_part-mag|phase_MEGRE.nii.gz`` and sidecars.

One file per echo (``echo-N``), or one 4-D file per part with the echoes on the 4th axis (its
sidecar's ``EchoTime`` is then a list). ``EchoTime`` (s) and ``MagneticFieldStrength`` (T) are
required; a missing or bad one is one :class:`InputError` naming the sidecar and the key.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepmir_tasks.io import InputError

__all__ = ["MegreData", "find_megre", "read_sidecar", "load_megre"]

_ECHO = re.compile(r"_echo-(\d+)_")


@dataclass
class MegreData:
    """Magnitude and phase (radians) with echoes on the last axis, and the acquisition facts."""

    magnitude: np.ndarray     # float32 (x, y, z, echo)
    phase: np.ndarray         # float32 radians, wrapped (x, y, z, echo)
    echo_times_s: list
    b0_tesla: float
    affine: np.ndarray
    phase_units: str          # what the phase was stored in (rad, scanner, arbitrary)

    @property
    def voxel_mm(self):
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))


def find_megre(folder, prefix):
    """``(magnitude files, phase files)`` of ``prefix`` (e.g. ``sub-01_ses-A``) in ``folder``, by echo."""
    folder = Path(folder)
    out = []
    for part in ("mag", "phase"):
        files = sorted(folder.glob(f"{prefix}*_part-{part}_MEGRE.nii*"))
        echoed = [f for f in files if _ECHO.search(f.name)]
        files = sorted(echoed, key=lambda f: int(_ECHO.search(f.name).group(1))) if echoed else files
        if not files:
            raise InputError(folder, f"no {prefix}*_part-{part}_MEGRE.nii.gz file")
        out.append(files)
    if len(out[0]) != len(out[1]):
        raise InputError(folder, f"{len(out[0])} magnitude but {len(out[1])} phase MEGRE files for {prefix}")
    return out[0], out[1]


def sidecar_path(nifti) -> Path:
    name = Path(nifti).name
    stem = name[:-7] if name.endswith(".nii.gz") else name.rsplit(".", 1)[0]
    return Path(nifti).with_name(stem + ".json")


def read_sidecar(nifti, keys=("EchoTime", "MagneticFieldStrength")) -> dict:
    """The sidecar of ``nifti`` with ``keys`` checked (positive numbers, or lists of them)."""
    path = sidecar_path(nifti)
    if not path.exists():
        raise InputError(path, f"JSON sidecar missing (needed for {', '.join(keys)})")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(path, f"JSON sidecar is not readable JSON ({err})") from None
    for key in keys:
        if key not in meta:
            raise InputError(path, f"JSON sidecar lacks the key {key!r}")
        vals = np.atleast_1d(np.asarray(meta[key], dtype=object))
        try:
            ok = all(float(v) > 0 and np.isfinite(float(v)) for v in vals)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise InputError(path, f"{key!r} must be a positive number, got {meta[key]!r}")
    if "EchoTime" in keys and np.max(np.atleast_1d(meta["EchoTime"]).astype(float)) > 1.0:
        raise InputError(path, f"'EchoTime' must be in seconds (BIDS), got {meta['EchoTime']!r}")
    return meta


def _load(path, what):
    import nibabel as nib

    path = Path(path)
    if not path.exists():
        raise InputError(path, f"{what} file does not exist")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as err:  # nibabel raises many kinds for corrupt files
        raise InputError(path, f"{what} file is not a readable NIfTI image ({err})") from None
    if data.ndim == 3:
        data = data[..., None]
    if data.ndim != 4:
        raise InputError(path, f"{what} must be 3-D or 4-D (echoes last), got shape {data.shape}")
    if not np.all(np.isfinite(data)):
        raise InputError(path, f"{what} contains non-finite voxels (NaN or Inf)")
    return data, img.affine


def load_megre(mag_files, phase_files, phase_units: str = "auto") -> MegreData:
    """Load and check magnitude and phase files (one per echo, or one 4-D each); phase to radians."""
    from .phase import to_radians

    mags, phases, tes, b0 = [], [], [], None
    affine = None
    for mf, pf in zip(mag_files, phase_files):
        m, aff = _load(mf, "MEGRE magnitude")
        p, _ = _load(pf, "MEGRE phase")
        if m.shape != p.shape:
            raise InputError(pf, f"phase shape {p.shape} does not match the magnitude {m.shape}")
        meta = read_sidecar(pf)
        te = [float(t) for t in np.atleast_1d(meta["EchoTime"])]
        if len(te) != m.shape[3]:
            raise InputError(sidecar_path(pf), f"'EchoTime' lists {len(te)} echoes but the image has {m.shape[3]}")
        if affine is not None and (m.shape[:3] != mags[0].shape[:3] or not np.allclose(aff, affine, atol=1e-3)):
            raise InputError(mf, "echoes do not share one grid (shape or affine differ)")
        affine = aff if affine is None else affine
        b0 = float(meta["MagneticFieldStrength"])
        mags.append(m)
        phases.append(p)
        tes += te
    mag = np.concatenate(mags, axis=3)
    raw = np.concatenate(phases, axis=3)
    phase, units = to_radians(raw, phase_files[0], phase_units)
    if np.any(np.diff(tes) <= 0):
        raise InputError(sidecar_path(phase_files[0]), f"echo times must increase, got {tes}")
    return MegreData(mag, phase, tes, b0, np.asarray(affine, float), units)
