"""A subject's head: random size, pose and warp of the MNI anatomy, tissue properties, shells.

``draw_head`` and ``draw_tissue`` draw the random per-subject parameters; ``build_anatomy``
pulls the MNI maps (:mod:`.anatomy`) back into the T2w-session world on an isotropic grid and
derives the tissue fractions, susceptibility, T2w contrast and GRE magnitude maps there;
``air_cavities`` places the sinuses and mastoid air cells that make the GRE background field.
All positions are T2w-session world mm unless said otherwise.
"""

from __future__ import annotations

import functools

import numpy as np

from .anatomy import AIR_CAVITIES, NUCLEI, NUCLEI_LABELS, TISSUE_CHI_PPM, mni_anatomy
from .shapes import euler_matrix

__all__ = ["draw_head", "draw_tissue", "build_anatomy", "air_cavities"]


def draw_head(rng) -> dict:
    """Random head size, pose (MNI -> T2w world affine), smooth warp and shell thicknesses."""
    overall = rng.uniform(0.86, 1.02)  # MNI152 is larger than an average head
    scale = overall * rng.uniform(0.95, 1.05, 3)
    head_rot = euler_matrix(*np.deg2rad(rng.uniform([-10, -4, -6], [10, 4, 6])))
    head_shift = rng.uniform([-6, -8, -8], [6, 8, 8]) + np.array([0.0, 15.0, 20.0])
    mni_to_t2 = np.eye(4)
    mni_to_t2[:3, :3] = head_rot @ np.diag(scale)
    mni_to_t2[:3, 3] = head_shift
    warp_amp = float(rng.uniform(1.5, 3.5))
    fine_amp = float(rng.uniform(0.5, 1.5))
    # ventricles and deep structures enlarged (atrophy) or a little smaller: a radial pull-back
    expansion = float(rng.uniform(-0.05, 0.12))
    warp = {"modes": _random_warp(rng, warp_amp, n_modes=5, wavelength_mm=(70.0, 160.0))
            + _random_warp(rng, fine_amp, n_modes=6, wavelength_mm=(35.0, 70.0)),
            "expand": (np.array([0.0, -12.0, 14.0], np.float32), 30.0, expansion)}
    shell = {"csf_mm": float(rng.uniform(1.0, 3.0)), "bone_mm": float(rng.uniform(4.0, 8.0)),
             "scalp_mm": float(rng.uniform(3.0, 7.0))}
    params = {"head_scale": scale.tolist(), "head_rotation": head_rot.tolist(),
              "head_translation_mm": head_shift.tolist(), "warp_amplitude_mm": warp_amp,
              "warp_fine_amplitude_mm": fine_amp, "ventricle_expansion": expansion, "shell_mm": shell}
    return {"mni_to_t2": mni_to_t2, "warp": warp, "shell": shell, "params": params}


def draw_tissue(rng, b0_tesla: float) -> dict:
    """Random tissue susceptibilities (ppm), nucleus iron load and contrast weights."""
    chi_t = {"csf": TISSUE_CHI_PPM["csf"], "gm": float(rng.uniform(0.005, 0.025)),
             "wm": float(rng.uniform(-0.045, -0.018))}
    age_iron = rng.uniform(0.8, 1.25)
    nucleus_chi = {}
    for nuc in NUCLEI:
        shared = nuc.chi_ppm * age_iron * rng.uniform(0.9, 1.1)
        for name, _ in nuc.instances():
            nucleus_chi[name] = float(shared * rng.uniform(0.95, 1.05))
    r2s_scale = b0_tesla / 3.0
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
    return {"chi": chi_t, "nucleus_chi": nucleus_chi, "contrast": contrast}


def build_anatomy(rng, head: dict, tissue: dict, vox: float, te_swi: float) -> dict:
    """The subject's anatomy grid: warped MNI maps plus tissue, chi, T2w and GRE maps."""
    anat = _anatomy_grid(mni_anatomy(), head["mni_to_t2"], head["warp"], vox, head["shell"])
    _tissue_images(rng, anat, tissue["chi"], tissue["nucleus_chi"], tissue["contrast"], te_swi,
                   tissue.get("nucleus_heterogeneity", 0.0), tissue.get("nucleus_texture"))
    return anat


def _nucleus_texture(inside, vox: float, rel_sd: float, grain_mm: float, seed: int) -> np.ndarray:
    """Multiplicative fine texture (float32, 1 outside ``inside``; inside, mean about 1 and relative
    SD ``rel_sd``, floored at 0.2), computed on the box around ``inside`` only."""
    from scipy import ndimage as ndi

    out = np.ones(inside.shape, np.float32)
    if not inside.any():
        return out
    pad = int(np.ceil(4 * grain_mm / vox))
    idx = np.argwhere(inside)
    box = tuple(slice(max(a - pad, 0), b + pad + 1) for a, b in zip(idx.min(0), idx.max(0)))
    noise = np.random.default_rng(seed).standard_normal(out[box].shape, dtype=np.float32)
    field = ndi.gaussian_filter(noise, grain_mm / vox)
    sd = max(float(field[inside[box]].std()), 1e-6)
    out[box] = np.maximum(1.0 + np.float32(rel_sd / sd) * field, np.float32(0.2))
    return out


def air_cavities(rng, anat, mni_to_t2, t2_to_swi, scale=(0.7, 1.3), gap_mm=2.0):
    """Sinuses and mastoid air cells of this head as ``(centre SWI world, radius, chi)``.

    Each cavity may be absent, is resized (by a factor in ``scale``) and moved a little, and is
    shrunk to stay at least ``gap_mm`` away from the brain.
    """
    inv = np.linalg.inv(anat["affine"])
    size = float(np.cbrt(abs(np.linalg.det(mni_to_t2[:3, :3]))))
    out = []
    for cav in AIR_CAVITIES:
        for _, centre in cav.instances():
            if rng.random() < 0.1:
                continue
            c_t2 = mni_to_t2[:3, :3] @ (np.asarray(centre) + rng.uniform(-3, 3, 3)) + mni_to_t2[:3, 3]
            r = cav.radii[0] * size * rng.uniform(*scale)
            ijk = inv[:3, :3] @ c_t2 + inv[:3, 3]
            from scipy import ndimage as ndi

            depth = float(ndi.map_coordinates(anat["sdist"], ijk[:, None], order=1, cval=60.0)[0])
            r = min(r, depth - gap_mm)
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


def _apply_warp(warp, u):
    """u: (3, N) affinely mapped points -> MNI points (float32): radial expansion + smooth modes."""
    centre, sigma, alpha = warp["expand"]
    d = u - centre[:, None]
    g = np.exp(-np.einsum("ij,ij->j", d, d) / np.float32(sigma * sigma))
    out = u - np.float32(alpha) * g[None, :] * d   # pull-back towards the centre: enlarged
    for k, ph, a in warp["modes"]:
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


def _tissue_images(rng, anat, chi_t, nucleus_chi, contrast, te_swi, heterogeneity=0.0, texture=None):
    """Tissue fractions, susceptibility, T2w and GRE magnitude maps on the anatomy grid.

    ``heterogeneity`` > 0 varies each nucleus's level smoothly (wavelengths 10-30 mm) by up to
    that fraction, as iron gradients within normal nuclei do (none: the original simulator).
    ``texture`` = ``(relative SD, grain mm, seed)`` adds fine-grained iron patches within the nuclei
    (a Gaussian-smoothed noise field of that grain, from its own random stream so that every other
    draw stays the same); the iron darkens T2w and the GRE magnitude where it is, as the level does.
    """
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
    if heterogeneity > 0:
        from .physics import SmoothField

        centre = anat["affine"][:3, :3] @ (np.asarray(sd.shape) / 2.0) + anat["affine"][:3, 3]
        smooth = SmoothField(rng, centre, 8, (10.0, 30.0))(sd.shape, anat["affine"])
        chi_nuc = chi_nuc * (1.0 + np.float32(heterogeneity) * smooth)
    if texture is not None and texture[0] > 0:
        chi_nuc = chi_nuc * _nucleus_texture(lab > 0, vox, *texture)
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
    # the magnitude's effective R2* (1/s; for multi-echo GRE): fraction-weighted, nuclear iron included
    r2s = csf * cr["csf"] + gm * cr["gm"] + wm * cr["wm"] + f_bone * cr["bone"] + f_scalp * cr["scalp"]
    anat["r2s"] = (r2s + w * cr["iron_per_ppm"] * np.maximum(chi_nuc, 0)).astype(np.float32)
    A = anat["affine"]
    step = 3
    pts = np.argwhere(head[::step, ::step, ::step] > 0.5) * step
    anat["head_pts"] = pts @ A[:3, :3].T + A[:3, 3]
    bpts = np.argwhere(brain[::step, ::step, ::step] > 0.5) * step
    anat["brain_pts"] = bpts @ A[:3, :3].T + A[:3, 3]
    anat["head_centre"] = anat["brain_pts"].mean(0)


