"""One simulated subject: susceptibility, fields, SWI/QSM and T2w images, and the truth."""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage

from . import physics
from .acquire import bias_field, complex_noise, draw_pose, grid_for, rotation, sample
from .anatomy import build_head
from .conditions import draw_protocol, get_condition
from .lesions import paint_lesions, place_lesions
from .nuclei import nucleus_chi, nucleus_names
from .veins import paint_veins

__all__ = ["Subject", "simulate_subject", "susceptibility_map"]

# susceptibility (ppm, relative to CSF) outside the brain: air +9.4 (air ~ +0.36, water -9.05 ppm
# absolute), cortical bone about -2 (Buch et al. 2015 MRM 73:2185), scalp fat about +0.6
_CHI_AIR, _CHI_BONE, _CHI_SCALP = 9.4, -2.0, 0.6


@dataclass
class Subject:
    t2: nib.Nifti1Image
    swi: nib.Nifti1Image
    qsm: nib.Nifti1Image
    dseg: nib.Nifti1Image        # T2w grid: 1 CMB, 2 iron deposit
    brain_mask: nib.Nifti1Image  # T2w grid
    nuclei: nib.Nifti1Image      # T2w grid: deep grey nuclei labels (nuclei.nucleus_names)
    lesions: list                # records with world centres (T2w session, mm)
    swi_to_t2: np.ndarray        # 4 x 4, SWI-session world mm -> T2w-session world mm
    params: dict


def susceptibility_map(head, proto, rng, counts=None):
    """(chi, lesion R2* excess, lesions, nuclear levels) on the simulation grid."""
    chi_gm, chi_wm = rng.uniform(0.005, 0.02), rng.uniform(-0.035, -0.02)
    chi = (head.gm * chi_gm + head.wm * chi_wm).astype(np.float32)
    levels, nuc = {}, np.zeros_like(chi)
    texture = ndimage.gaussian_filter(rng.normal(0, 1, chi.shape).astype(np.float32), 2.0)
    texture /= texture.std() + 1e-6
    for label, name in enumerate(nucleus_names(), start=1):
        levels[name] = nucleus_chi(name, proto["age_years"], proto["nuclear_iron_factor"]
                                   * float(np.exp(rng.normal(0, 0.08))))
        nuc[head.nuclei == label] = levels[name]
    weight = ndimage.gaussian_filter((head.nuclei > 0).astype(np.float32), 0.8)
    nuc = ndimage.gaussian_filter(nuc, 0.8) / np.maximum(weight, 1e-3) * (1 + proto["nucleus_texture"] * texture)
    chi += weight * (nuc - chi)
    vein_occ = paint_veins(chi, head, rng)
    lesions = place_lesions(head, rng, vein_occ, counts)
    r2s_extra = np.zeros_like(chi)
    if proto["nucleus_r2s_scale"] != 1.0:   # the nuclei's own R2*, beyond relaxation()'s law
        r2s_extra += (proto["nucleus_r2s_scale"] - 1.0) * physics._R2S_PER_PPM_3T * np.clip(weight * nuc, 0.0, 0.5)
    paint_lesions(chi, lesions, r2s_extra)
    chi[head.bone], chi[head.scalp], chi[head.air] = _CHI_BONE, _CHI_SCALP, _CHI_AIR
    return chi, r2s_extra, lesions, levels


def _ball(radius_mm, voxel_mm):
    """Ellipsoidal structuring element of ``radius_mm`` on a grid of ``voxel_mm``."""
    half = [int(np.floor(radius_mm / v)) for v in voxel_mm]
    g = np.meshgrid(*[np.arange(-h, h + 1) * v for h, v in zip(half, voxel_mm)], indexing="ij")
    return sum(a ** 2 for a in g) <= radius_mm ** 2


def _gre_images(head, chi, maps, proto, pose, rng):
    """(SWI, QSM, grid shape, grid affine) of the GRE session under ``pose``."""
    b0, te, vox = proto["b0_tesla"], proto["gre_te_s"], np.asarray(proto["swi_voxel_mm"])
    rot = pose[:3, :3]
    b_sim = rot.T @ np.array([0.0, 0.0, 1.0])           # B0 (scanner z) in the head's axes
    # referenced to air for the FFT, so that the zero padding around the box is air as around a real
    # head; the body is continued 60 mm below the box (the neck) instead of ending at its floor
    neck = 60
    body = np.pad(np.where(head.air, 0.0, chi - _CHI_AIR).astype(np.float32), ((0, 0), (0, 0), (neck, 0)),
                  mode="edge")
    total = physics.dipole_field(body, (1.0, 1.0, 1.0), b_sim)[:, :, neck:]
    del body
    local = physics.dipole_field(np.where(head.brain, chi, 0), (1.0, 1.0, 1.0), b_sim)
    mag = physics.gre_magnitude(maps, physics.dephasing(total, rot, vox, b0, te), te)
    s_wm = float(np.median(mag[head.wm > 0.9]))
    shape, aff = grid_for(head.shape, head.affine, pose, vox, margin_mm=12.0, mask=head.brain)
    smp = lambda a, **kw: sample(a, head.affine, pose, shape, aff, **kw)  # noqa: E731
    sigma = s_wm / proto["snr_swi"]
    rad_per_ppm = 2 * np.pi * physics.GAMMA_MHZ_T * b0 * te
    total_g, local_g = smp(total), smp(local)
    z = smp(mag) * bias_field(shape, aff, rng, 0.2) * np.exp(-1j * rad_per_ppm * total_g)
    z = (z + complex_noise(shape, sigma, rng)).astype(np.complex64)
    swi = physics.swi_from_complex(z, vox, proto["phase_mask_power"])
    brain = smp(head.brain.astype(np.float32)) > 0.5
    qmask = ndimage.binary_erosion(brain, _ball(1.5, vox))
    noise_ppm = np.minimum(sigma / np.maximum(np.abs(z), sigma) / rad_per_ppm, 0.1)
    field = local_g + proto["residual_background"] * (total_g - local_g)
    field += proto["residual_poly_ppm"] * (bias_field(shape, aff, rng, 1.0) - 1.0)
    field += rng.normal(0, 1, shape).astype(np.float32) * noise_ppm
    qsm = physics.invert_dipole(field, qmask, vox, (0.0, 0.0, 1.0), proto["qsm_method"],
                                proto["qsm_regularisation"])
    vent = (smp(((head.csf > 0.9) & (head.depth_mm > 12)).astype(np.float32)) > 0.5) & qmask
    if vent.any():
        qsm = np.where(qmask, qsm - np.median(qsm[vent]), 0).astype(np.float32)
    return swi, qsm, shape, aff


def simulate_subject(seed: int, condition: str = "default", crop=None, counts=None, overrides=None) -> Subject:
    """Simulate one subject of ``condition`` (see conditions.CONDITIONS); ``crop`` (slices of the
    template grid) makes small test volumes; ``counts`` fixes the number of lesions per kind;
    ``overrides`` replaces fields of the condition named in ``conditions.ABLATIONS`` (e.g.
    ``{"nucleus_texture": 0.0}``) without
    changing the random draws, so the same seed gives the same subject otherwise."""
    from dataclasses import replace

    from .conditions import check_ablations
    from .truth import truth_on_grid

    cond = replace(get_condition(condition), **check_ablations(dict(overrides or {})))
    rng = np.random.default_rng(seed)
    proto = draw_protocol(cond, rng)
    head = build_head(crop)
    chi, r2s_extra, lesions, levels = susceptibility_map(head, proto, rng, counts)
    maps = physics.relaxation(head, chi, r2s_extra, proto["b0_tesla"])
    pose_t2 = draw_pose(rng)
    motion = np.eye(4)
    motion[:3, :3] = rotation(rng.uniform(-3, 3, 3))
    motion[:3, 3] = rng.uniform(-3, 3, 3)
    pose_swi = motion @ pose_t2
    swi, qsm, g_shape, g_aff = _gre_images(head, chi, maps, proto, pose_swi, rng)
    t2_sim = physics.t2w_signal(maps, proto["t2_te_s"], proto["t2_tr_s"])
    t_shape, t_aff = grid_for(head.shape, head.affine, pose_t2, proto["t2_voxel_mm"], 15.0, head.brain)
    t2 = sample(t2_sim, head.affine, pose_t2, t_shape, t_aff) * bias_field(t_shape, t_aff, rng, 0.25)
    s_wm = float(np.median(t2_sim[head.wm > 0.9]))
    t2 = np.abs(t2 + complex_noise(t_shape, s_wm / proto["snr_t2"], rng)).astype(np.float32)
    truth = truth_on_grid(head, lesions, pose_t2, t_shape, t_aff)
    params = dict(proto, seed=int(seed), nuclear_chi_ppm={k: round(v, 4) for k, v in levels.items()},
                  b0_direction_head=(pose_swi[:3, :3].T @ [0, 0, 1.0]).round(5).tolist(),
                  swi_shape=list(g_shape), t2_shape=list(t_shape))
    img = lambda a, aff: nib.Nifti1Image(np.asarray(a, np.float32), aff)  # noqa: E731
    return Subject(t2=img(t2, t_aff), swi=img(swi, g_aff), qsm=img(qsm, g_aff),
                   dseg=nib.Nifti1Image(truth["dseg"], t_aff), brain_mask=nib.Nifti1Image(truth["brain"], t_aff),
                   nuclei=nib.Nifti1Image(truth["nuclei"], t_aff), lesions=truth["lesions"],
                   swi_to_t2=pose_t2 @ np.linalg.inv(pose_swi), params=params)

