"""``simulate_subject``: one seeded T2w / SWI / QSM subject with ground truth.

Steps (all seeded by ``numpy.random.default_rng(seed)``):

1. Anatomy. The MNI152 2009a GM/WM maps, deep nuclei, sites and regions are pulled back into
   the T2w-session world through a random affine (size, pose) and a smooth non-linear warp,
   on an isotropic anatomy grid. A CSF rim, bone and scalp shells surround the brain.
2. Lesions and veins are placed (see :mod:`.lesions`), in T2w-session world mm.
3. T2w: a spin-echo contrast (CSF bright; iron-rich nuclei, haemosiderin, iron and calcium
   hypointense) sampled on an oblique axial grid with through-slice partial volume, lesions
   rendered with partial volume; then a smooth receive bias and Rician noise.
4. SWI/QSM (second session, random rigid head motion ``swi_to_t2``): susceptibility on a fine
   grid over the brain box of the SWI grid, field by FFT dipole convolution (B0 along the
   scanner z, which the oblique SWI slab sees tilted), GRE signal on the fine grid averaged in
   complex to the acquisition voxels (intravoxel dephasing, hence blooming), background field,
   bias and complex noise; SWI = magnitude x phase-mask^n from a high-pass-filtered phase;
   QSM = TKD inversion of the noisy, brain-masked, averaged local field.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field

import numpy as np

from .anatomy import AIR_CAVITIES, NUCLEI, NUCLEI_LABELS, TISSUE_CHI_PPM, mni_anatomy
from .lesions import DEFAULT_RANGES, place_lesions, resolve_counts
from .physics import (SmoothField, block_mean, dipole_field, phase_rad_per_ppm, rician,
                      spheres_field_on_grid, swi_from_complex, tkd_inversion)
from .shapes import euler_matrix, render_fraction

__all__ = ["SimulatedSubject", "simulate_subject", "SIZES"]

#: size presets: voxel ranges (mm), anatomy-grid spacing, fine-grid target and budget
SIZES = {
    "full": dict(anat_vox=1.0, t2_inplane=(0.8, 1.0), t2_slice=(2.5, 4.0),
                 swi_inplane=(0.5, 0.9), swi_slice=(1.0, 2.0), fine_target=0.5,
                 max_fine_voxels=24e6, lesion_scale=1.0),
    "small": dict(anat_vox=2.0, t2_inplane=(2.7, 3.1), t2_slice=(5.5, 7.0),
                  swi_inplane=(2.6, 3.0), swi_slice=(4.0, 5.0), fine_target=1.3,
                  max_fine_voxels=3e6, lesion_scale=2.0),
}

LESION_COLUMNS = ["lesion_id", "kind", "x_mm", "y_mm", "z_mm", "radius_mm", "chi_ppm",
                  "chi_excess_ppm", "region", "dseg_label", "n_voxels_t2"]


@dataclass
class SimulatedSubject:
    """A simulated subject; images are nibabel ``Nifti1Image`` objects (see module docs)."""

    t2: object
    swi: object
    qsm: object
    dseg: object
    brain_mask: object
    t2_clean: object
    bias_t2: object
    lesions: object          # pandas DataFrame
    swi_to_t2: np.ndarray    # 4x4, SWI-session world mm -> T2w-session world mm
    params: dict = field(default_factory=dict)


def simulate_subject(seed: int, size: str = "full", *, lesion_counts: dict | None = None,
                     lesion_ranges: dict | None = None) -> SimulatedSubject:
    """Simulate one subject.

    Args:
        seed: seed of ``numpy.random.default_rng``; the same seed gives identical images.
        size: ``"full"`` (T2w ~0.9x0.9x3 mm, SWI ~0.7x0.7x1.5 mm) or ``"small"`` (2.5-7 mm
            voxels, lesions scaled x2; a few seconds, for tests).
        lesion_counts: override the count ranges per kind, e.g. ``{"cmb": (20, 30), "iron": 4}``
            (kinds: cmb, iron, calcification, vein; defaults in ``lesions.DEFAULT_COUNTS``).
        lesion_ranges: override physical ranges (keys of ``lesions.DEFAULT_RANGES``).
    """
    import nibabel as nib
    import pandas as pd

    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    resolve_counts(np.random.default_rng(0), lesion_counts)  # refuse bad overrides before any work
    t_start = time.perf_counter()
    clock = _Clock()
    pre = SIZES[size]
    rng = np.random.default_rng(int(seed))
    mni = mni_anatomy()

    # ------------------------------------------------------------------ acquisition parameters
    b0 = float(rng.choice([1.5, 3.0], p=[0.2, 0.8]))
    te_swi = float(rng.uniform(0.015, 0.028) if b0 > 2 else rng.uniform(0.03, 0.045))
    p = {
        "seed": int(seed), "size": size, "b0_tesla": b0,
        "swi_echo_time_s": te_swi, "swi_repetition_time_s": float(rng.uniform(0.027, 0.045)),
        "swi_flip_angle_deg": float(rng.uniform(12, 20)),
        "t2_echo_time_s": float(rng.uniform(0.08, 0.11)),
        "t2_repetition_time_s": float(rng.uniform(3.0, 6.5)),
    }
    t2_vox = np.array([*(rng.uniform(*pre["t2_inplane"]),) * 2, rng.uniform(*pre["t2_slice"])])
    swi_vox = np.array([*(rng.uniform(*pre["swi_inplane"]),) * 2, rng.uniform(*pre["swi_slice"])])

    # ------------------------------------------------------------------ subject geometry
    overall = rng.uniform(0.86, 1.02)  # MNI152 is larger than an average head
    scale = overall * rng.uniform(0.95, 1.05, 3)
    head_rot = euler_matrix(*np.deg2rad(rng.uniform([-10, -4, -6], [10, 4, 6])))
    head_shift = rng.uniform([-6, -8, -8], [6, 8, 8]) + np.array([0.0, 15.0, 20.0])
    mni_to_t2 = np.eye(4)
    mni_to_t2[:3, :3] = head_rot @ np.diag(scale)
    mni_to_t2[:3, 3] = head_shift
    warp_amp = float(rng.uniform(1.5, 3.5))
    warp = _random_warp(rng, warp_amp, n_modes=5, wavelength_mm=(70.0, 160.0))
    shell = {"csf_mm": float(rng.uniform(1.0, 3.0)), "bone_mm": float(rng.uniform(4.0, 8.0)),
             "scalp_mm": float(rng.uniform(3.0, 7.0))}
    p.update({"head_scale": scale.tolist(), "head_rotation": head_rot.tolist(),
              "head_translation_mm": head_shift.tolist(), "warp_amplitude_mm": warp_amp,
              "shell_mm": shell})

    # ------------------------------------------------------------------ tissue properties
    chi_t = {"csf": TISSUE_CHI_PPM["csf"], "gm": float(rng.uniform(0.005, 0.025)),
             "wm": float(rng.uniform(-0.045, -0.018))}
    age_iron = rng.uniform(0.8, 1.25)
    nucleus_chi = {}
    for nuc in NUCLEI:
        shared = nuc.chi_ppm * age_iron * rng.uniform(0.9, 1.1)
        for name, _ in nuc.instances():
            nucleus_chi[name] = float(shared * rng.uniform(0.95, 1.05))
    r2s_scale = b0 / 3.0
    contrast = {
        "t2": {"csf": 1.0, "gm": rng.uniform(0.48, 0.6), "wm": rng.uniform(0.33, 0.45),
               "bone": rng.uniform(0.03, 0.1), "scalp": rng.uniform(0.55, 0.9),
               "iron_k_per_ppm": rng.uniform(2.5, 4.0)},
        "pd": {"csf": 1.0, "gm": rng.uniform(0.8, 0.9), "wm": rng.uniform(0.65, 0.75),
               "bone": rng.uniform(0.04, 0.1), "scalp": rng.uniform(0.6, 0.85)},
        "r2s": {"csf": 4.0 * r2s_scale, "gm": rng.uniform(14, 18) * r2s_scale,
                "wm": rng.uniform(18, 24) * r2s_scale, "bone": 150.0, "scalp": 30.0 * r2s_scale,
                "iron_per_ppm": rng.uniform(150, 250) * r2s_scale},
    }
    contrast = {k: {kk: float(vv) for kk, vv in v.items()} for k, v in contrast.items()}
    p.update({"tissue_chi_ppm": chi_t, "nucleus_chi_ppm": nucleus_chi, "contrast": contrast})

    # ------------------------------------------------------------------ anatomy grid (T2w world)
    anat = _anatomy_grid(mni, mni_to_t2, warp, pre["anat_vox"], shell)
    _tissue_images(rng, anat, chi_t, nucleus_chi, contrast, te_swi)
    clock("anatomy")

    # ------------------------------------------------------------------ T2w grid
    t2_rot = euler_matrix(*np.deg2rad(rng.uniform([-6, -2, -2], [6, 2, 2])))
    t2_aff, t2_shape = _grid_covering(anat["head_pts"], t2_rot, t2_vox, margin_mm=rng.uniform(4, 12, 3))
    p.update({"t2_voxel_mm": t2_vox.tolist(), "t2_shape": list(t2_shape)})

    # ------------------------------------------------------------------ lesions
    counts = resolve_counts(rng, lesion_counts)
    margin = max(2.0, float(t2_vox.max()) * 0.75)
    lesions = place_lesions(rng, anat, counts, t2_affine=t2_aff, t2_shape=t2_shape,
                            lesion_scale=pre["lesion_scale"], ranges=lesion_ranges,
                            nucleus_chi=nucleus_chi, margin_mm=margin)
    p["lesion_counts_requested"] = counts
    p["lesion_counts"] = {k: sum(les.kind == k for les in lesions) for k in counts}

    # ------------------------------------------------------------------ T2w image and truth
    clock("lesion placement")
    t2_clean, brain_t2 = _sample_t2(anat, t2_aff, t2_shape, t2_vox, pre["anat_vox"])
    dseg = np.zeros(t2_shape, np.uint8)
    ss_t2 = tuple(int(min(8, np.ceil(v / 0.3))) for v in t2_vox)
    owned = []
    for les in lesions:
        patches = render_fraction(les.shape, t2_shape, t2_aff, ss_t2)
        for sl, frac in patches:
            t2_clean[sl] *= 1.0 - frac * (1.0 - les.t2_factor)
        vox = set()
        if les.dseg_label:
            for sl, frac in patches:
                sub = dseg[sl]
                sub[frac >= 0.5] = les.dseg_label
                vox.update(tuple(int(v) for v in row) for row in np.argwhere(frac >= 0.5) + [s.start for s in sl])
            ijk = tuple(int(v) for v in np.rint(np.linalg.solve(t2_aff[:3, :3], les.centre - t2_aff[:3, 3])))
            if all(0 <= ijk[i] < t2_shape[i] for i in range(3)):
                dseg[ijk] = les.dseg_label
                vox.add(ijk)
        owned.append(vox)
    for i, les in enumerate(lesions):  # forced centre voxels may not be overwritten: re-assert them
        if les.dseg_label and owned[i]:
            ijk = tuple(int(v) for v in np.rint(np.linalg.solve(t2_aff[:3, :3], les.centre - t2_aff[:3, 3])))
            if ijk in owned[i]:
                dseg[ijk] = les.dseg_label
    n_vox = [sum(int(dseg[v] == les.dseg_label) for v in owned[i]) for i, les in enumerate(lesions)]
    psf_sigma = float(rng.uniform(0.0, 0.45))  # in-plane point-spread (k-space filtering), voxels
    if psf_sigma > 0.05:
        from scipy import ndimage as ndi

        t2_clean = ndi.gaussian_filter(t2_clean, (psf_sigma, psf_sigma, 0.0), truncate=3.0)
    p["t2_psf_sigma_voxels"] = psf_sigma
    gain_t2 = float(rng.uniform(300, 1500))
    t2_clean *= np.float32(gain_t2)
    head_centre = anat["head_centre"]
    bias_strength = float(rng.uniform(0.15, 0.5))
    bias_t2 = np.exp(bias_strength * SmoothField(rng, head_centre, 6, (180.0, 450.0))(t2_shape, t2_aff))
    snr_t2 = float(rng.uniform(12, 40))
    sigma_t2 = contrast["t2"]["wm"] * gain_t2 / snr_t2
    t2_img = rician(rng, t2_clean * bias_t2, sigma_t2)
    p.update({"t2_bias_strength": bias_strength, "t2_snr_wm": snr_t2, "t2_gain": gain_t2})
    clock("T2w")

    # ------------------------------------------------------------------ SWI session geometry
    motion_rot = euler_matrix(*np.deg2rad(rng.uniform(-5, 5, 3)))
    motion_shift = rng.uniform(-6, 6, 3)
    swi_to_t2 = np.eye(4)
    swi_to_t2[:3, :3] = motion_rot
    swi_to_t2[:3, 3] = motion_shift
    t2_to_swi = np.linalg.inv(swi_to_t2)
    swi_rot = euler_matrix(*np.deg2rad(rng.uniform([-8, -5, -3], [8, 5, 3])))
    head_swi = anat["head_pts"] @ t2_to_swi[:3, :3].T + t2_to_swi[:3, 3]
    brain_swi = anat["brain_pts"] @ t2_to_swi[:3, :3].T + t2_to_swi[:3, 3]
    swi_aff, swi_shape = _grid_covering(head_swi, swi_rot, swi_vox, margin_mm=rng.uniform(3, 10, 3),
                                        z_points=brain_swi, z_margin_mm=rng.uniform(4, 12))
    b0_vox = swi_rot.T @ np.array([0.0, 0.0, 1.0])
    p.update({"swi_voxel_mm": swi_vox.tolist(), "swi_shape": list(swi_shape),
              "motion_rotation_deg": np.rad2deg(_euler_angles(motion_rot)).tolist(),
              "motion_translation_mm": motion_shift.tolist(), "swi_to_t2": swi_to_t2.tolist(),
              "b0_direction_world": [0.0, 0.0, 1.0], "b0_direction_voxel": b0_vox.tolist(),
              "b0_tilt_deg": float(np.rad2deg(np.arccos(np.clip(b0_vox[2], -1, 1))))})

    # ------------------------------------------------------------------ fine grid over the brain box
    box_lo, box_hi, ss = _fine_box(brain_swi, swi_aff, swi_shape, swi_vox, pre)
    fine_shape = tuple(int((box_hi[i] - box_lo[i]) * ss[i]) for i in range(3))
    to_acq = np.eye(4)
    to_acq[:3, :3] = np.diag(1.0 / ss)
    to_acq[:3, 3] = box_lo + 0.5 / ss - 0.5
    fine_aff = swi_aff @ to_acq                       # fine index -> SWI world
    fine_to_anat = np.linalg.inv(anat["affine"]) @ swi_to_t2 @ fine_aff
    chi_f = _resample(anat["chi"], fine_to_anat, fine_shape)
    mag_f = _resample(anat["gre"], fine_to_anat, fine_shape)
    fine_t2world = swi_to_t2 @ fine_aff
    ss_f = (2, 2, 2)
    for les in lesions:
        for sl, frac in render_fraction(les.shape, fine_shape, fine_t2world, ss_f):
            if les.additive:
                chi_f[sl] += frac * np.float32(les.chi_excess_ppm)
            else:
                chi_f[sl] = chi_f[sl] * (1 - frac) + frac * np.float32(les.chi_ppm)
            mag_f[sl] *= 1.0 - frac * (1.0 - les.gre_factor) * 1.0
    fine_vox = swi_vox / ss
    p.update({"fine_supersampling": ss.tolist(), "fine_shape": list(fine_shape),
              "fine_voxel_mm": fine_vox.tolist()})

    clock("fine susceptibility")
    field_f = dipole_field(chi_f, fine_vox, b0_vox, pad_fraction=0.35, workers=_workers())
    clock("dipole field")
    del chi_f
    bg_amp = float(rng.uniform(0.05, 0.4))
    bg = SmoothField(rng, head_centre, 4, (120.0, 300.0))
    k_ph = phase_rad_per_ppm(b0, te_swi)
    air = _air_cavities(rng, anat, mni_to_t2, t2_to_swi)
    air_field, in_air = spheres_field_on_grid(fine_shape, fine_aff, air, return_inside=True)
    mag_f[in_air] = 0.0  # no signal from air
    phase_f = (field_f + np.float32(bg_amp) * bg(fine_shape, fine_aff) + air_field) * np.float32(k_ph)
    del air_field, in_air
    sig_f = np.empty(fine_shape, np.complex64)
    sig_f.real = mag_f * np.cos(phase_f)
    sig_f.imag = mag_f * np.sin(phase_f)
    del phase_f, mag_f
    sig_box = block_mean(sig_f, ss).astype(np.complex64)
    del sig_f
    field_box = block_mean(field_f, ss).astype(np.float32)
    del field_f

    acq_to_anat = np.linalg.inv(anat["affine"]) @ swi_to_t2 @ swi_aff
    mag_acq = _resample(anat["gre"], acq_to_anat, swi_shape)
    air_field, in_air = spheres_field_on_grid(swi_shape, swi_aff, air, return_inside=True)
    mag_acq[in_air] = 0.0
    bg_phase = np.float32(k_ph) * (np.float32(bg_amp) * bg(swi_shape, swi_aff) + air_field)
    del air_field, in_air
    signal = np.empty(swi_shape, np.complex64)
    signal.real = mag_acq * np.cos(bg_phase)
    signal.imag = mag_acq * np.sin(bg_phase)
    del bg_phase
    box = tuple(slice(int(box_lo[i]), int(box_hi[i])) for i in range(3))
    signal[box] = sig_box
    local_field = np.zeros(swi_shape, np.float32)
    local_field[box] = field_box
    bias_swi_strength = float(rng.uniform(0.1, 0.4))
    signal *= np.exp(bias_swi_strength * SmoothField(rng, head_centre, 6, (180.0, 450.0))(swi_shape, swi_aff))
    snr_swi = float(rng.uniform(15, 45))
    m_wm = contrast["pd"]["wm"] * np.exp(-te_swi * contrast["r2s"]["wm"])
    sigma_swi = m_wm / snr_swi
    noisy = signal
    noisy.real += np.float32(sigma_swi) * _normal(rng, swi_shape)
    noisy.imag += np.float32(sigma_swi) * _normal(rng, swi_shape)
    hpf_sigma = float(rng.uniform(3.0, 6.0))
    power = int(rng.choice([3, 4, 4, 5]))
    clock("GRE signal")
    swi, _ = swi_from_complex(noisy, swi_vox, hpf_sigma_mm=hpf_sigma, power=power)
    clock("SWI")
    gain_swi = float(rng.uniform(200, 1200))
    swi = (swi * gain_swi).astype(np.float32)

    # ------------------------------------------------------------------ QSM
    # brain mask eroded as a background-field removal step would (distance to the brain surface,
    # in template mm, sampled on the SWI grid)
    erosion_mm = float(rng.uniform(0.0, 2.5))
    qsm_mask = _resample(anat["sdist"], acq_to_anat, swi_shape, cval=99.0) < -erosion_mm
    sigma_field = np.float32(sigma_swi / k_ph) / np.maximum(np.abs(noisy), np.float32(0.3 * m_wm))
    meas_field = local_field + _normal(rng, swi_shape) * sigma_field
    tkd_t = float(rng.uniform(0.12, 0.25))
    qsm = tkd_inversion(meas_field, qsm_mask, swi_vox, b0_vox, threshold=tkd_t, workers=_workers())
    clock("QSM")
    p.update({"swi_bias_strength": bias_swi_strength, "swi_snr_wm": snr_swi, "swi_gain": gain_swi,
              "background_field_ppm": bg_amp,
              "air_cavities_swi_world": [{"centre_mm": np.round(c, 2).tolist(), "radius_mm": round(r, 2),
                                          "chi_ppm": x} for c, r, x in air], "swi_hpf_sigma_mm": hpf_sigma, "swi_phase_mask_power": power,
              "qsm_method": "TKD", "qsm_tkd_threshold": tkd_t, "qsm_mask_erosion_mm": erosion_mm,
              "phase_rad_per_ppm": k_ph})

    # ------------------------------------------------------------------ outputs
    rows = []
    for i, les in enumerate(lesions):
        c = les.centre
        rows.append({"lesion_id": i + 1, "kind": les.kind, "x_mm": c[0], "y_mm": c[1], "z_mm": c[2],
                     "radius_mm": les.radius_mm, "chi_ppm": les.chi_ppm,
                     "chi_excess_ppm": les.chi_excess_ppm, "region": les.region,
                     "dseg_label": les.dseg_label, "n_voxels_t2": n_vox[i]})
    table = pd.DataFrame(rows, columns=LESION_COLUMNS)
    for col in ("x_mm", "y_mm", "z_mm", "radius_mm", "chi_ppm", "chi_excess_ppm"):
        table[col] = table[col].astype(float).round(4)
    p["seconds"] = round(time.perf_counter() - t_start, 3)
    p["timings_s"] = clock.laps

    def img(data, affine, dtype):
        out = nib.Nifti1Image(np.asarray(data, dtype=dtype), affine)
        out.set_qform(affine, code=1)
        out.set_sform(affine, code=1)
        out.header.set_xyzt_units("mm", "sec")
        out.set_data_dtype(dtype)
        return out

    return SimulatedSubject(
        t2=img(t2_img, t2_aff, np.float32), swi=img(swi, swi_aff, np.float32),
        qsm=img(qsm, swi_aff, np.float32), dseg=img(dseg, t2_aff, np.uint8),
        brain_mask=img(brain_t2, t2_aff, np.uint8), t2_clean=img(t2_clean, t2_aff, np.float32),
        bias_t2=img(bias_t2, t2_aff, np.float32), lesions=table, swi_to_t2=swi_to_t2, params=p)


# ====================================================================== helpers
class _Clock:
    """Seconds spent per stage (kept in ``params['timings_s']``)."""

    def __init__(self):
        self.t = time.perf_counter()
        self.laps = {}

    def __call__(self, name):
        now = time.perf_counter()
        self.laps[name] = round(now - self.t, 3)
        self.t = now


def _workers() -> int:
    """FFT threads: ``DEEPMIR_THREADS`` if set, else the number of CPUs."""
    import os

    try:
        return max(1, int(os.environ.get("DEEPMIR_THREADS", "")))
    except ValueError:
        return os.cpu_count() or 1


def _air_cavities(rng, anat, mni_to_t2, t2_to_swi):
    """Sinuses and mastoid air cells of this head as ``(centre SWI world, radius, chi)``.

    Each cavity may be absent, is resized and moved a little, and is shrunk to stay at least
    2 mm away from the brain.
    """
    inv = np.linalg.inv(anat["affine"])
    size = float(np.cbrt(abs(np.linalg.det(mni_to_t2[:3, :3]))))
    out = []
    for cav in AIR_CAVITIES:
        for _, centre in cav.instances():
            if rng.random() < 0.1:
                continue
            c_t2 = mni_to_t2[:3, :3] @ (np.asarray(centre) + rng.uniform(-3, 3, 3)) + mni_to_t2[:3, 3]
            r = cav.radii[0] * size * rng.uniform(0.7, 1.3)
            ijk = inv[:3, :3] @ c_t2 + inv[:3, 3]
            from scipy import ndimage as ndi

            depth = float(ndi.map_coordinates(anat["sdist"], ijk[:, None], order=1, cval=60.0)[0])
            r = min(r, depth - 2.0)
            if r < 3.0:
                continue
            out.append(((t2_to_swi[:3, :3] @ c_t2 + t2_to_swi[:3, 3]), float(r), float(cav.chi_ppm)))
    return out


def _random_warp(rng, amp, n_modes, wavelength_mm):
    modes = []
    for _ in range(n_modes):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        k = 2 * np.pi / rng.uniform(*wavelength_mm) * direction
        a = rng.normal(size=3)
        a *= amp * rng.uniform(0.3, 1.0) / (np.linalg.norm(a) * np.sqrt(n_modes))
        modes.append((k.astype(np.float32), float(rng.uniform(0, 2 * np.pi)), a.astype(np.float32)))
    return modes


def _apply_warp(modes, u):
    """u: (3, N) MNI-like points -> displaced points (float32)."""
    out = u.copy()
    for k, ph, a in modes:
        s = np.sin(k @ u + np.float32(ph))
        out += a[:, None] * s[None, :]
    return out


def _anatomy_grid(mni, mni_to_t2, warp, vox, shell):
    """Pull the MNI maps back onto an isotropic grid in the T2w world."""
    from scipy import ndimage as ndi

    reach = shell["csf_mm"] + shell["bone_mm"] + shell["scalp_mm"] + 6.0
    lo_mni = np.array([-72.0, -108.0, -64.0]) - reach
    hi_mni = np.array([72.0, 75.0, 83.0]) + reach
    corners = np.array([[x, y, z] for x in (lo_mni[0], hi_mni[0]) for y in (lo_mni[1], hi_mni[1])
                        for z in (lo_mni[2], hi_mni[2])])
    cw = corners @ mni_to_t2[:3, :3].T + mni_to_t2[:3, 3]
    lo = np.floor(cw.min(0) / vox) * vox
    shape = tuple(int(n) for n in np.ceil((cw.max(0) - lo) / vox) + 1)
    aff = np.eye(4)
    aff[:3, :3] = np.eye(3) * vox
    aff[:3, 3] = lo
    t2_to_mni = np.linalg.inv(mni_to_t2)
    mni_inv = np.linalg.inv(mni.affine)
    codes = _mni_codes()
    out = {k: np.empty(shape, np.float32) for k in ("gm", "wm", "sdist", "nucleus_w")}
    out.update({k: np.empty(shape, np.uint8) for k in ("nucleus", "site", "region")})
    jj, kk = np.meshgrid(np.arange(shape[1], dtype=np.float32), np.arange(shape[2], dtype=np.float32), indexing="ij")
    lin = (t2_to_mni[:3, :3] @ aff[:3, :3]).astype(np.float32)
    off = (t2_to_mni[:3, :3] @ aff[:3, 3] + t2_to_mni[:3, 3]).astype(np.float32)
    step = max(1, int(2e6 // (shape[1] * shape[2])))
    for i0 in range(0, shape[0], step):
        i1 = min(shape[0], i0 + step)
        ii = np.arange(i0, i1, dtype=np.float32)[:, None, None]
        ijk = np.stack(np.broadcast_arrays(ii, jj[None], kk[None])).reshape(3, -1)
        u = lin @ ijk + off[:, None]
        x = _apply_warp(warp, u)
        idx = (mni_inv[:3, :3].astype(np.float32) @ x) + mni_inv[:3, 3].astype(np.float32)[:, None]
        sub = (i1 - i0, shape[1], shape[2])
        for name, cval in (("gm", 0.0), ("wm", 0.0), ("sdist", 60.0), ("nucleus_w", 0.0)):
            out[name][i0:i1] = ndi.map_coordinates(getattr(mni, name), idx, order=1, cval=cval,
                                                   mode="constant", prefilter=False).reshape(sub)
        code = ndi.map_coordinates(codes, idx, order=0, cval=0, mode="constant", prefilter=False).reshape(sub)
        out["nucleus"][i0:i1] = code % 16
        out["site"][i0:i1] = (code // 16) % 8
        out["region"][i0:i1] = code // 128
    out["affine"] = aff
    out["vox"] = vox
    out["shell"] = shell
    return out


@functools.lru_cache(maxsize=1)
def _mni_codes():
    """Nucleus, site and region labels packed in one map (one nearest-neighbour lookup)."""
    mni = mni_anatomy()
    assert mni.nucleus.max() < 16 and mni.site.max() < 8 and mni.region.max() < 8
    return (mni.nucleus.astype(np.uint16) + 16 * mni.site.astype(np.uint16)
            + 128 * mni.region.astype(np.uint16))


def _tissue_images(rng, anat, chi_t, nucleus_chi, contrast, te_swi):
    """Tissue fractions, susceptibility, T2w and GRE magnitude maps on the anatomy grid."""
    from scipy import ndimage as ndi

    vox = anat["vox"]
    sd = anat["sdist"]
    shell = anat["shell"]

    def below(b):  # fraction of the voxel with sdist < b
        return np.clip((b - sd) / vox + 0.5, 0.0, 1.0)

    brain = below(0.0)
    f_csf_out = below(shell["csf_mm"]) - brain
    f_bone = below(shell["csf_mm"] + shell["bone_mm"]) - below(shell["csf_mm"])
    head = below(shell["csf_mm"] + shell["bone_mm"] + shell["scalp_mm"])
    f_scalp = head - below(shell["csf_mm"] + shell["bone_mm"])
    gm = np.minimum(anat["gm"], brain)
    wm = np.minimum(anat["wm"], np.maximum(brain - gm, 0))
    csf = np.clip(brain - gm - wm, 0, 1) + f_csf_out
    lab = anat["nucleus"]
    w = anat["nucleus_w"] * (lab > 0)
    chi_lut = np.zeros(len(NUCLEI_LABELS) + 1, np.float32)
    for i, name in enumerate(NUCLEI_LABELS):
        chi_lut[i + 1] = nucleus_chi[name]
    chi_nuc = chi_lut[lab]
    chi = gm * chi_t["gm"] + wm * chi_t["wm"] + csf * chi_t["csf"]
    chi = ((1 - w) * chi + w * chi_nuc * brain).astype(np.float32)
    chi *= (brain > 0) | (f_csf_out > 0)
    texture = ndi.gaussian_filter(rng.standard_normal(sd.shape).astype(np.float32), 1.2 / vox)
    texture *= np.float32(rng.uniform(0.02, 0.05) / (texture.std() + 1e-6))
    ct, cp, cr = contrast["t2"], contrast["pd"], contrast["r2s"]
    t2 = csf * ct["csf"] + gm * ct["gm"] + wm * ct["wm"] + f_bone * ct["bone"] + f_scalp * ct["scalp"]
    t2 *= 1.0 - w * (1.0 - np.exp(-ct["iron_k_per_ppm"] * np.maximum(chi_nuc, 0)))
    t2 *= 1.0 + texture * (brain > 0.5)

    def gre(pd_key):
        return cp[pd_key] * np.exp(-te_swi * cr[pd_key])
    mag = csf * gre("csf") + gm * gre("gm") + wm * gre("wm") + f_bone * gre("bone") + f_scalp * gre("scalp")
    mag *= 1.0 - w * (1.0 - np.exp(-te_swi * cr["iron_per_ppm"] * np.maximum(chi_nuc, 0)))
    mag *= 1.0 + texture * (brain > 0.5)
    anat["brain"] = brain.astype(np.float32)
    anat["chi"] = chi.astype(np.float32)
    anat["t2"] = t2.astype(np.float32)
    anat["gre"] = mag.astype(np.float32)
    A = anat["affine"]
    step = 3
    pts = np.argwhere(head[::step, ::step, ::step] > 0.5) * step
    anat["head_pts"] = pts @ A[:3, :3].T + A[:3, 3]
    bpts = np.argwhere(brain[::step, ::step, ::step] > 0.5) * step
    anat["brain_pts"] = bpts @ A[:3, :3].T + A[:3, 3]
    anat["head_centre"] = anat["brain_pts"].mean(0)


def _grid_covering(points, rot, vox, margin_mm, z_points=None, z_margin_mm=0.0):
    """Oblique grid (rotation ``rot``, voxel sizes ``vox``) covering ``points`` (N, 3).

    With ``z_points``, the slice direction covers those (e.g. the brain) instead.
    """
    v = points @ rot  # coordinates along the grid axes
    lo = v.min(0) - margin_mm
    hi = v.max(0) + margin_mm
    if z_points is not None:
        vz = z_points @ rot
        lo[2] = vz[:, 2].min() - z_margin_mm
        hi[2] = vz[:, 2].max() + z_margin_mm
    shape = np.ceil((hi - lo) / vox).astype(int)
    shape[:2] += shape[:2] % 2
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag(vox)
    aff[:3, 3] = rot @ (lo + 0.5 * vox)
    return aff, tuple(int(s) for s in shape)


def _fine_box(brain_swi_pts, swi_aff, swi_shape, swi_vox, pre):
    """Acquisition-voxel box around the brain and the supersampling factors for it."""
    inv = np.linalg.inv(swi_aff)
    idx = brain_swi_pts @ inv[:3, :3].T + inv[:3, 3]
    m = np.ceil(5.0 / swi_vox)
    lo = np.maximum(np.floor(idx.min(0) - m), 0).astype(int)
    hi = np.minimum(np.ceil(idx.max(0) + m) + 1, swi_shape).astype(int)
    n_acq = float(np.prod(hi - lo))
    target = pre["fine_target"]
    while True:
        ss = np.maximum(1, np.rint(swi_vox / target)).astype(int)
        if n_acq * np.prod(ss) <= pre["max_fine_voxels"] or np.all(ss == 1):
            return lo.astype(float), hi.astype(float), ss
        target *= 1.1


def _normal(rng, shape):
    return rng.standard_normal(shape, dtype=np.float32)


def _resample(volume, index_affine, shape, order=1, cval=0.0):
    """Sample ``volume`` at ``index_affine`` @ (output index) with ``affine_transform``."""
    from scipy import ndimage as ndi

    return ndi.affine_transform(volume, index_affine[:3, :3], offset=index_affine[:3, 3],
                                output_shape=tuple(shape), order=order, mode="constant", cval=cval,
                                prefilter=False, output=np.float32)


def _sample_t2(anat, t2_aff, t2_shape, t2_vox, anat_vox):
    """T2w contrast and brain fraction on the T2w grid with through-slice partial volume."""
    n_sub = int(max(1, np.ceil(t2_vox[2] / anat_vox)))
    t2 = np.zeros(t2_shape, np.float32)
    brain = np.zeros(t2_shape, np.float32)
    base = np.linalg.inv(anat["affine"]) @ t2_aff
    for s in range(n_sub):
        shift = np.eye(4)
        shift[2, 3] = (s + 0.5) / n_sub - 0.5
        m = base @ shift
        t2 += _resample(anat["t2"], m, t2_shape)
        brain += _resample(anat["brain"], m, t2_shape)
    t2 /= n_sub
    brain /= n_sub
    return t2, (brain >= 0.5).astype(np.uint8)


def _euler_angles(r):
    """Inverse of ``euler_matrix`` (x, y, z angles in radians)."""
    b = -np.arcsin(np.clip(r[2, 0], -1, 1))
    a = np.arctan2(r[2, 1], r[2, 2])
    c = np.arctan2(r[1, 0], r[0, 0])
    return np.array([a, b, c])
