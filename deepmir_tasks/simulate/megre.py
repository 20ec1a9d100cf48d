"""Raw multi-echo GRE (magnitude and wrapped phase per echo) from a simulated head's susceptibility.

The head (anatomy, tissue and deep-nuclei susceptibility) comes from the simulator's own
``draw_head`` / ``draw_tissue`` / ``build_anatomy`` on an isotropic grid; CMBs (paramagnetic) and
calcifications (diamagnetic) are added as partial-volume spheres deep in the brain. The grid is
rotated as an oblique slab (B0 = scanner z, tilted in the voxel frame). Per echo TE_n:

    phase_n = phi0 + 2 pi gamma B0 TE_n (local + air cavities + shim residual)   (wrapped)
    |s_n|   = M(TE_ref) exp(-(TE_n - TE_ref) R2*),  plus complex Gaussian noise

with phi0 a constant plus a smooth transmit/receive phase offset, and the shim residual random
first- and second-order solid harmonics. The field is computed on the
same grid the QSM is reconstructed on (no intravoxel dephasing): a best case for the inversion.
:func:`write_megre_bids` writes ``sub-X_echo-N_part-mag|phase_MEGRE.nii.gz`` with sidecars and the
truth under ``derivatives/truth``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .head import air_cavities, build_anatomy, draw_head, draw_tissue
from .physics import SmoothField, dipole_field, phase_rad_per_ppm, spheres_field_on_grid
from .shapes import EllipsoidUnion, euler_matrix, render_fraction

__all__ = ["MegreSim", "simulate_megre", "write_echoes", "write_megre_bids"]


@dataclass
class MegreSim:
    """A simulated raw multi-echo GRE acquisition and its truth (arrays on one grid)."""

    magnitude: np.ndarray        # float32 (x, y, z, echo)
    phase: np.ndarray            # float32 wrapped radians (x, y, z, echo)
    echo_times_s: list
    b0_tesla: float
    affine: np.ndarray           # scanner world (oblique)
    chi_ppm: np.ndarray          # true susceptibility (ppm), 0 outside the head
    brain_mask: np.ndarray       # bool, brain fraction > 0.5
    local_field_ppm: np.ndarray  # field of chi (no background)
    background_ppm: np.ndarray   # air cavities + shim residual (harmonic)
    lesions: list = field(default_factory=list)   # dicts: kind, centre_vox, radius_mm, chi_ppm
    nuclei: np.ndarray | None = None              # uint8 deep-nucleus labels (core, membership > 0.5)
    params: dict = field(default_factory=dict)


def simulate_megre(seed: int, voxel_mm: float = 2.0, echo_times_s=(0.004, 0.010, 0.016, 0.022),
                   b0_tesla: float = 3.0, snr: float = 60.0, n_cmb: int = 4, n_calcification: int = 2,
                   tilt_deg=(12.0, -6.0, 0.0), background_ppm: float = 0.3) -> MegreSim:
    """Simulate one seeded raw multi-echo GRE head (see the module docs)."""
    rng = np.random.default_rng(int(seed))
    te = [float(t) for t in echo_times_s]
    te_ref = float(np.mean(te))
    head = draw_head(rng)
    tissue = draw_tissue(rng, b0_tesla)
    anat = build_anatomy(rng, head, tissue, float(voxel_mm), te_ref)
    chi, mag0 = anat["chi"].copy(), anat["gre"].copy()
    brain = anat["brain"] > 0.5
    vox = (float(voxel_mm),) * 3
    lesions = _add_lesions(rng, anat, chi, mag0, n_cmb, n_calcification, voxel_mm)

    rot = np.eye(4)
    rot[:3, :3] = euler_matrix(*np.deg2rad(tilt_deg))
    affine = rot @ anat["affine"]                      # the head seen in an oblique slab
    axes = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    b0_vox = axes.T @ np.array([0.0, 0.0, 1.0])
    local = dipole_field(chi, vox, b0_vox, pad_fraction=0.3)
    cavities = air_cavities(rng, anat, head["mni_to_t2"], rot)
    air, in_air = spheres_field_on_grid(chi.shape, affine, cavities, return_inside=True)
    mag0[in_air] = 0.0
    bg = air + _shim_residual(rng, chi.shape, affine, rot[:3, :3] @ anat["head_centre"], brain, background_ppm)
    offset = np.float32(rng.uniform(-np.pi, np.pi)) + np.float32(1.5) * SmoothField(
        rng, anat["head_centre"], 3, (200.0, 400.0))(chi.shape, affine)
    r2s = np.where(brain, 20.0 * b0_tesla / 3.0, 8.0).astype(np.float32)
    sigma = float(np.median(mag0[brain])) * float(np.exp(-(te[0] - te_ref) * 20.0 * b0_tesla / 3.0)) / snr
    mags, phases = [], []
    for t in te:
        amp = mag0 * np.exp(-(t - te_ref) * r2s)
        ph = offset + np.float32(phase_rad_per_ppm(b0_tesla, t)) * (local + bg)
        s = amp * np.exp(1j * ph) + sigma * (rng.standard_normal(amp.shape) + 1j * rng.standard_normal(amp.shape))
        mags.append(np.abs(s).astype(np.float32))
        phases.append(np.angle(s).astype(np.float32))
    params = {"seed": int(seed), "voxel_mm": float(voxel_mm), "b0_tesla": b0_tesla, "echo_times_s": te,
              "snr": snr, "noise_sigma": sigma, "tilt_deg": list(tilt_deg), "b0_direction_voxel": b0_vox.tolist(),
              "background_ppm": background_ppm, "n_air_cavities": len(cavities)}
    nuclei = np.where(anat["nucleus_w"] > 0.5, anat["nucleus"], 0).astype(np.uint8)
    return MegreSim(np.stack(mags, -1), np.stack(phases, -1), te, float(b0_tesla), affine, chi, brain,
                    local.astype(np.float32), bg.astype(np.float32), lesions, nuclei, params)


def _shim_residual(rng, shape, affine, centre_mm, brain, amplitude_ppm):
    """Random first- and second-order solid harmonics (what shimming leaves), max |.| in the brain
    = ``amplitude_ppm``; harmonic, as a background field is inside the brain."""
    idx = np.indices(shape, dtype=np.float32).reshape(3, -1)
    x, y, z = ((affine[:3, :3] @ idx).T + affine[:3, 3] - centre_mm).T.reshape(3, *shape) / np.float32(80.0)
    terms = (x, y, z, x * y, x * z, y * z, x * x - y * y, 2 * z * z - x * x - y * y)
    out = sum(np.float32(c) * t for c, t in zip(rng.normal(size=len(terms)), terms))
    return (out * np.float32(amplitude_ppm / max(float(np.abs(out[brain]).max()), 1e-9))).astype(np.float32)


def _add_lesions(rng, anat, chi, mag0, n_cmb, n_calc, voxel_mm):
    """Partial-volume spheres deep in the brain (>= 10 mm from its surface, >= 15 mm apart)."""
    deep = np.argwhere(anat["sdist"] < -10.0)
    out = []
    for kind, n, r_rng, chi_rng, gre in (("cmb", n_cmb, (1.5, 2.5), (0.6, 1.5), 0.3),
                                         ("calcification", n_calc, (2.0, 3.0), (-0.6, -0.3), 0.5)):
        for _ in range(n):
            for _try in range(200):
                ijk = deep[rng.integers(len(deep))]
                if all(np.linalg.norm((ijk - les["centre_vox"]) * voxel_mm) > 15.0 for les in out):
                    break
            r = float(rng.uniform(*r_rng)) * max(1.0, voxel_mm / 1.5)
            x = float(rng.uniform(*chi_rng))
            centre = anat["affine"][:3, :3] @ ijk + anat["affine"][:3, 3]
            shape = EllipsoidUnion(centre[None], np.full((1, 3), r), np.eye(3)[None])
            for sl, frac in render_fraction(shape, chi.shape, anat["affine"], (3, 3, 3)):
                chi[sl] = chi[sl] * (1 - frac) + frac * np.float32(x)
                mag0[sl] *= 1.0 - frac * (1.0 - gre)
            out.append({"kind": kind, "centre_vox": ijk.astype(int), "radius_mm": r, "chi_ppm": x})
    return out


def write_echoes(anat_dir, prefix: str, magnitude, phase, affine, echo_times_s, b0_tesla: float,
                 phase_units: str = "scanner") -> dict:
    """Write ``<prefix>_echo-N_part-mag|phase_MEGRE.nii.gz`` (echoes on the last axis of ``magnitude``
    and ``phase``) with their sidecars (``EchoTime``, ``MagneticFieldStrength``) into ``anat_dir``;
    phase in ``"scanner"`` codes (-4096..4095) or ``"rad"``. Returns the paths by part."""
    from ..io import save_nifti, write_json

    anat_dir = Path(anat_dir)
    anat_dir.mkdir(parents=True, exist_ok=True)
    paths = {"mag": [], "phase": []}
    for n, te in enumerate(echo_times_s, start=1):
        for part, data in (("mag", magnitude[..., n - 1]), ("phase", phase[..., n - 1])):
            if part == "phase" and phase_units == "scanner":
                data = np.clip(np.round(data / np.pi * 4096), -4096, 4095).astype(np.int16)
            path = save_nifti(data, affine, anat_dir / f"{prefix}_echo-{n}_part-{part}_MEGRE.nii.gz")
            write_json({"EchoTime": float(te), "MagneticFieldStrength": float(b0_tesla)},
                       path.with_name(path.name[:-7] + ".json"))
            paths[part].append(path)
    return paths


def write_megre_bids(sim: MegreSim, out_dir, subject: str = "01", phase_units: str = "scanner") -> dict:
    """Write the echoes as BIDS (``anat/``), phase in ``"scanner"`` codes (-4096..4095) or ``"rad"``;
    truth (chi, brain mask) under ``derivatives/truth``. Returns the written paths by role."""
    import nibabel as nib

    out_dir = Path(out_dir)
    anat_dir = out_dir / f"sub-{subject}" / "anat"
    truth_dir = out_dir / "derivatives" / "truth" / f"sub-{subject}" / "anat"
    truth_dir.mkdir(parents=True, exist_ok=True)
    paths = write_echoes(anat_dir, f"sub-{subject}", sim.magnitude, sim.phase, sim.affine, sim.echo_times_s,
                         sim.b0_tesla, phase_units)
    paths["chi"] = truth_dir / f"sub-{subject}_desc-truth_Chimap.nii.gz"
    nib.save(nib.Nifti1Image(sim.chi_ppm.astype(np.float32), sim.affine), str(paths["chi"]))
    paths["mask"] = truth_dir / f"sub-{subject}_desc-brain_mask.nii.gz"
    nib.save(nib.Nifti1Image(sim.brain_mask.astype(np.uint8), sim.affine), str(paths["mask"]))
    return paths
