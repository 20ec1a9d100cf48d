"""The two imaging sessions: T2w spin echo, and GRE (SWI + QSM) with fine-grid dephasing.

``simulate_t2w`` renders the T2w contrast, lesions (partial volume), the truth label map, a
point-spread blur, a receive bias and Rician noise on an oblique axial grid.
``swi_geometry`` draws the second session's head motion and its oblique slab;
``simulate_gre`` computes the susceptibility on a fine grid over the brain box, its dipole field
(FFT), the complex GRE signal averaged to the acquisition voxels, background fields, bias and
noise; ``reconstruct_swi_qsm`` makes the SWI (phase mask) and the QSM (TKD or
Tikhonov) from it.
"""

from __future__ import annotations

import numpy as np

from .head import air_cavities
from .physics import (SmoothField, block_mean, dipole_field, motion_ringing, phase_rad_per_ppm, rician,
                      spheres_field_on_grid, swi_from_complex, tikhonov_inversion, tkd_inversion)
from .shapes import euler_matrix, render_fraction

__all__ = ["t2w_grid", "simulate_t2w", "swi_geometry", "simulate_gre", "reconstruct_swi_qsm"]


def t2w_grid(rng, anat, t2_vox):
    """An oblique axial T2w grid covering the head: ``(affine, shape)``."""
    t2_rot = euler_matrix(*np.deg2rad(rng.uniform([-6, -2, -2], [6, 2, 2])))
    return _grid_covering(anat["head_pts"], t2_rot, t2_vox, margin_mm=rng.uniform(4, 12, 3))


def simulate_t2w(rng, anat, lesions, t2_aff, t2_shape, t2_vox, contrast, params, acq=None) -> dict:
    """T2w image, clean image, bias, truth dseg, brain mask and labelled voxels per lesion.

    ``acq`` (the randomised profile's factors) gives the SNR and bias strength instead of
    drawing them here.
    """
    t2_clean, brain_t2 = _sample_t2(anat, t2_aff, t2_shape, t2_vox, anat["vox"])
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
            ijk = _centre_voxel(les.centre, t2_aff)
            if all(0 <= ijk[i] < t2_shape[i] for i in range(3)):
                dseg[ijk] = les.dseg_label
                vox.add(ijk)
        owned.append(vox)
    for i, les in enumerate(lesions):  # forced centre voxels may not be overwritten: re-assert them
        if les.dseg_label and owned[i]:
            ijk = _centre_voxel(les.centre, t2_aff)
            if ijk in owned[i]:
                dseg[ijk] = les.dseg_label
    n_vox = [sum(int(dseg[v] == les.dseg_label) for v in owned[i]) for i, les in enumerate(lesions)]
    psf_sigma = float(rng.uniform(0.0, 0.45))  # in-plane point-spread (k-space filtering), voxels
    if psf_sigma > 0.05:
        from scipy import ndimage as ndi

        t2_clean = ndi.gaussian_filter(t2_clean, (psf_sigma, psf_sigma, 0.0), truncate=3.0)
    gain = float(rng.uniform(300, 1500))
    t2_clean *= np.float32(gain)
    bias_strength = float(rng.uniform(0.15, 0.5)) if acq is None else float(acq["t2_bias_strength"])
    bias = np.exp(bias_strength * SmoothField(rng, anat["head_centre"], 6, (180.0, 450.0))(t2_shape, t2_aff))
    snr = float(rng.uniform(12, 40)) if acq is None else float(acq["t2_snr_wm"])
    t2 = t2_clean * bias
    if acq is not None and acq["t2_motion_line_fraction"] > 0:
        t2 = motion_ringing(rng, t2, acq["t2_motion_line_fraction"], acq["t2_motion_shift_mm"], float(t2_vox[1]))
    t2 = rician(rng, t2, contrast["t2"]["wm"] * gain / snr)
    params.update({"t2_psf_sigma_voxels": psf_sigma, "t2_bias_strength": bias_strength, "t2_snr_wm": snr,
                   "t2_gain": gain})
    return {"t2": t2, "t2_clean": t2_clean, "bias": bias.astype(np.float32), "dseg": dseg,
            "brain_mask": brain_t2, "n_voxels": n_vox}


def swi_geometry(rng, anat, swi_vox, params) -> dict:
    """Rigid head motion between the sessions, the oblique SWI slab and B0 in its voxel frame."""
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
    b0_vox = swi_rot.T @ np.array([0.0, 0.0, 1.0])  # B0 is the scanner z; the slab is tilted
    params.update({"swi_voxel_mm": np.asarray(swi_vox).tolist(), "swi_shape": list(swi_shape),
                   "motion_rotation_deg": np.rad2deg(_euler_angles(motion_rot)).tolist(),
                   "motion_translation_mm": motion_shift.tolist(), "swi_to_t2": swi_to_t2.tolist(),
                   "b0_direction_world": [0.0, 0.0, 1.0], "b0_direction_voxel": b0_vox.tolist(),
                   "b0_tilt_deg": float(np.rad2deg(np.arccos(np.clip(b0_vox[2], -1, 1))))})
    return {"swi_to_t2": swi_to_t2, "t2_to_swi": t2_to_swi, "affine": swi_aff, "shape": swi_shape,
            "b0_vox": b0_vox, "brain_pts": brain_swi, "vox": np.asarray(swi_vox)}


def _fine_maps(anat, lesions, geo, preset, te_swi: float | None = None) -> dict:
    """Susceptibility and GRE magnitude, lesions drawn in, on a fine grid over the brain box that is
    aligned with the acquisition voxels (``ss`` fine voxels per acquisition voxel along each axis);
    with ``te_swi``, also R2* (``r2s``), a lesion's extra decay being ``-ln(gre_factor) / te_swi``."""
    swi_to_t2, swi_aff, swi_shape, swi_vox = geo["swi_to_t2"], geo["affine"], geo["shape"], geo["vox"]
    box_lo, box_hi, ss = _fine_box(geo["brain_pts"], swi_aff, swi_shape, swi_vox, preset)
    fine_shape = tuple(int((box_hi[i] - box_lo[i]) * ss[i]) for i in range(3))
    to_acq = np.eye(4)
    to_acq[:3, :3] = np.diag(1.0 / ss)
    to_acq[:3, 3] = box_lo + 0.5 / ss - 0.5
    fine_aff = swi_aff @ to_acq                       # fine index -> SWI world
    fine_to_anat = np.linalg.inv(anat["affine"]) @ swi_to_t2 @ fine_aff
    chi_f = _resample(anat["chi"], fine_to_anat, fine_shape)
    mag_f = _resample(anat["gre"], fine_to_anat, fine_shape)
    r2s_f = None if te_swi is None else _resample(anat["r2s"], fine_to_anat, fine_shape)
    fine_t2world = swi_to_t2 @ fine_aff
    for les in lesions:
        for sl, frac in render_fraction(les.shape, fine_shape, fine_t2world, (2, 2, 2)):
            if les.additive:
                chi_f[sl] += frac * np.float32(les.chi_excess_ppm)
            else:
                chi_f[sl] = chi_f[sl] * (1 - frac) + frac * np.float32(les.chi_ppm)
            mag_f[sl] *= 1.0 - frac * (1.0 - les.gre_factor)
            if r2s_f is not None:
                r2s_f[sl] += frac * np.float32(-np.log(max(les.gre_factor, 1e-3)) / te_swi)
    out = {"chi": chi_f, "mag": mag_f, "shape": fine_shape, "affine": fine_aff, "ss": ss,
           "box_lo": box_lo, "box_hi": box_hi}
    if r2s_f is not None:
        out["r2s"] = r2s_f
    return out


def simulate_gre(rng, anat, lesions, geo, head, b0, te_swi, contrast, preset, params, clock=None,
                 acq=None, echoes=None) -> dict:
    """Complex GRE signal (noisy) and the voxel-averaged local field on the SWI grid.

    ``acq`` (the randomised profile's factors) gives the background-field amplitude, bias, SNR
    and air-cavity size instead of drawing them here; the background field (ppm) is then
    returned too, for a QSM with imperfect background removal. ``echoes`` (``(rng, echo times)``)
    adds ``echoes``, the raw multi-echo GRE of the same head
    (:func:`~deepmir_tasks.simulate.multiecho.echo_signals`), drawn from that ``rng`` only.
    """
    clock = clock or (lambda name: None)
    swi_to_t2, swi_aff, swi_shape, swi_vox = geo["swi_to_t2"], geo["affine"], geo["shape"], geo["vox"]
    fine = _fine_maps(anat, lesions, geo, preset, te_swi=None if echoes is None else te_swi)
    chi_f, mag_f = fine.pop("chi"), fine.pop("mag")   # popped, so that the del below frees them
    fine_shape, fine_aff, ss = fine["shape"], fine["affine"], fine["ss"]
    box_lo, box_hi, fine_vox = fine["box_lo"], fine["box_hi"], swi_vox / ss
    params.update({"fine_supersampling": ss.tolist(), "fine_shape": list(fine_shape),
                   "fine_voxel_mm": fine_vox.tolist()})
    clock("fine susceptibility")

    field_f = dipole_field(chi_f, fine_vox, geo["b0_vox"], pad_fraction=0.35, workers=_workers())
    del chi_f
    clock("dipole field")
    bg_amp = float(rng.uniform(0.05, 0.4)) if acq is None else float(acq["background_field_ppm"])
    bg = SmoothField(rng, anat["head_centre"], 4, (120.0, 300.0))
    k_ph = phase_rad_per_ppm(b0, te_swi)
    air_kw = {} if acq is None else {"scale": (0.85 * acq["air_cavity_scale"], 1.15 * acq["air_cavity_scale"]),
                                     "gap_mm": acq["air_gap_mm"]}
    air_list = air_cavities(rng, anat, head["mni_to_t2"], geo["t2_to_swi"], **air_kw)
    air_field, in_air = spheres_field_on_grid(fine_shape, fine_aff, air_list, return_inside=True)
    mag_f[in_air] = 0.0  # no signal from air
    phase_f = (field_f + np.float32(bg_amp) * bg(fine_shape, fine_aff) + air_field) * np.float32(k_ph)
    del air_field, in_air
    if echoes is not None:  # kept for the echoes: total field, magnitude, R2*
        fine.update(field=phase_f / np.float32(k_ph), mag=mag_f)
    sig_f = np.empty(fine_shape, np.complex64)
    sig_f.real = mag_f * np.cos(phase_f)
    sig_f.imag = mag_f * np.sin(phase_f)
    del phase_f, mag_f
    sig_box = block_mean(sig_f, ss).astype(np.complex64)   # intravoxel dephasing
    del sig_f
    field_box = block_mean(field_f, ss).astype(np.float32)
    del field_f

    # the acquisition grid outside the box (scalp, skull): no fine-scale structure there
    acq_to_anat = np.linalg.inv(anat["affine"]) @ swi_to_t2 @ swi_aff
    signal, bg_field = _outer_signal(anat, acq_to_anat, swi_aff, swi_shape, air_list,
                                     lambda: np.float32(bg_amp) * bg(swi_shape, swi_aff), k_ph)
    box = tuple(slice(int(box_lo[i]), int(box_hi[i])) for i in range(3))
    outer = None if echoes is None else {"mag": np.abs(signal), "field": bg_field,
                                         "r2s": _resample(anat["r2s"], acq_to_anat, swi_shape)}
    signal[box] = sig_box
    local_field = np.zeros(swi_shape, np.float32)
    local_field[box] = field_box
    bias_strength = float(rng.uniform(0.1, 0.4)) if acq is None else float(acq["swi_bias_strength"])
    bias = np.exp(bias_strength * SmoothField(rng, anat["head_centre"], 6, (180.0, 450.0))(swi_shape, swi_aff))
    signal *= bias
    snr = float(rng.uniform(15, 45)) if acq is None else float(acq["swi_snr_wm"])
    if acq is not None and acq["swi_motion_line_fraction"] > 0:
        signal = motion_ringing(rng, signal, acq["swi_motion_line_fraction"], acq["swi_motion_shift_mm"],
                                float(swi_vox[1]))
    m_wm = contrast["pd"]["wm"] * np.exp(-te_swi * contrast["r2s"]["wm"])
    sigma = m_wm / snr
    signal.real += np.float32(sigma) * _normal(rng, swi_shape)
    signal.imag += np.float32(sigma) * _normal(rng, swi_shape)
    params.update({"swi_bias_strength": bias_strength, "swi_snr_wm": snr, "background_field_ppm": bg_amp,
                   "air_cavities_swi_world": [{"centre_mm": np.round(c, 2).tolist(), "radius_mm": round(r, 2),
                                               "chi_ppm": x} for c, r, x in air_list],
                   "phase_rad_per_ppm": k_ph})
    clock("GRE signal")
    out = {"signal": signal, "local_field": local_field, "sigma": sigma, "m_wm": m_wm, "k_ph": k_ph,
           "acq_to_anat": acq_to_anat}
    if acq is not None:
        out["background_field"] = bg_field
    if echoes is not None:
        from .multiecho import echo_signals

        out["echoes"] = echo_signals(echoes[0], echoes[1], te_swi, b0, dict(fine, box=box), outer, bias, sigma,
                                     anat["head_centre"], swi_aff)
        clock("multi-echo GRE")
    return out


def _outer_signal(anat, acq_to_anat, swi_aff, swi_shape, air_list, smooth_bg, k_ph):
    """GRE signal on the whole acquisition grid from the anatomy grid, with the background field
    (smooth shim residual ``smooth_bg()`` plus air cavities, ppm); returns ``(signal, field)``."""
    mag_acq = _resample(anat["gre"], acq_to_anat, swi_shape)
    air_field, in_air = spheres_field_on_grid(swi_shape, swi_aff, air_list, return_inside=True)
    mag_acq[in_air] = 0.0
    bg_field = smooth_bg() + air_field
    bg_phase = np.float32(k_ph) * bg_field
    del air_field, in_air
    signal = np.empty(swi_shape, np.complex64)
    signal.real = mag_acq * np.cos(bg_phase)
    signal.imag = mag_acq * np.sin(bg_phase)
    return signal, bg_field


def reconstruct_swi_qsm(rng, anat, geo, gre, params, clock=None, acq=None) -> dict:
    """SWI (high-pass phase mask^n) and QSM (TKD or Tikhonov inversion of the noisy, masked local field).

    ``acq`` (the randomised profile's factors) chooses the filter, mask power, minIP slab, QSM
    method, mask erosion and the share of background field left in the local field.
    """
    clock = clock or (lambda name: None)
    swi_shape, swi_vox = geo["shape"], geo["vox"]
    noisy = gre["signal"]
    hpf_sigma = float(rng.uniform(3.0, 6.0)) if acq is None else float(acq["swi_hpf_sigma_mm"])
    power = int(rng.choice([3, 4, 4, 5])) if acq is None else int(acq["swi_phase_mask_power"])
    swi, _ = swi_from_complex(noisy, swi_vox, hpf_sigma_mm=hpf_sigma, power=power)
    if acq is not None:
        swi, params["swi_minip_slices"] = _minip(swi, float(acq["swi_minip_mm"]), float(swi_vox[2]))
    gain = float(rng.uniform(200, 1200))
    swi = (swi * gain).astype(np.float32)
    clock("SWI")
    # brain mask eroded as a background-field removal step would (distance to the brain surface,
    # in template mm, sampled on the SWI grid)
    erosion_mm = float(rng.uniform(0.0, 2.5)) if acq is None else float(acq["qsm_mask_erosion_mm"])
    qsm_mask = _resample(anat["sdist"], gre["acq_to_anat"], swi_shape, cval=99.0) < -erosion_mm
    # phase noise grows where the magnitude is low (capped in signal voids)
    sigma_field = np.float32(gre["sigma"] / gre["k_ph"]) / np.maximum(np.abs(noisy), np.float32(0.3 * gre["m_wm"]))
    meas_field = gre["local_field"] + _normal(rng, swi_shape) * sigma_field
    if acq is not None:  # imperfect background removal leaves part of the background field
        meas_field += np.float32(acq["qsm_residual_background"]) * gre["background_field"]
    # two dipole inversions with their own artefacts, so that a model does not learn one of them
    if acq is not None:
        method, reg = str(acq["qsm_method"]), float(acq["qsm_regularisation"])
    elif rng.random() < 0.7:
        method, reg = "TKD", float(rng.uniform(0.12, 0.25))
    else:
        method, reg = "Tikhonov", float(rng.uniform(0.02, 0.08))
    if method == "TKD":
        qsm = tkd_inversion(meas_field, qsm_mask, swi_vox, geo["b0_vox"], threshold=reg, workers=_workers())
    else:
        qsm = tikhonov_inversion(meas_field, qsm_mask, swi_vox, geo["b0_vox"], regularisation=reg,
                                 workers=_workers())
    params.update({"swi_gain": gain, "swi_hpf_sigma_mm": hpf_sigma, "swi_phase_mask_power": power,
                   "qsm_method": method, "qsm_regularisation": reg, "qsm_mask_erosion_mm": erosion_mm})
    clock("QSM")
    return {"swi": swi, "qsm": qsm}


def _minip(swi, slab_mm, slice_mm):
    """Sliding minimum-intensity projection over a slab of ``slab_mm`` along the slices (0: none)."""
    n = int(round(slab_mm / slice_mm)) if slab_mm > 0 else 1
    if n < 2:
        return swi, 1
    from scipy import ndimage as ndi

    return ndi.minimum_filter1d(swi, size=n, axis=2, mode="nearest"), n


def _centre_voxel(centre, affine):
    return tuple(int(v) for v in np.rint(np.linalg.solve(affine[:3, :3], np.asarray(centre) - affine[:3, 3])))


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


def _workers() -> int:
    """FFT threads: ``DEEPMIR_THREADS`` if set, else the number of CPUs."""
    import os

    try:
        return max(1, int(os.environ.get("DEEPMIR_THREADS", "")))
    except ValueError:
        return os.cpu_count() or 1


