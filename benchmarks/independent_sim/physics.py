"""MR physics of the generator: dipole field, relaxation, GRE dephasing, SWI, dipole inversion, T2w.

Units: susceptibility and fields in ppm (relative to CSF/water), lengths in mm, times in s.
Field perturbation from a susceptibility distribution (Salomir et al. 2003 Concepts Magn Reson B
19:26; Marques & Bowtell 2005 Concepts Magn Reson B 25:65): dB/B0 = F^-1[ D(k) F[chi] ] with
D(k) = 1/3 - (k.b)^2 / |k|^2, b the unit B0 direction in the grid's axes.
"""

from __future__ import annotations

import numpy as np
from scipy import fft, ndimage

__all__ = ["GAMMA_MHZ_T", "dipole_kernel", "dipole_field", "dephasing", "relaxation", "gre_magnitude",
           "t2w_signal", "swi_from_complex", "invert_dipole"]

GAMMA_MHZ_T = 42.577  # proton gyromagnetic ratio / 2 pi, MHz/T

# 3 T relaxation and proton density of tissue classes (gm, wm, csf):
# T1, T2 from Wansapura et al. 1999 JMRI 9:531 (WM 0.83 s / 80 ms, GM 1.33 s / 110 ms);
# R2* from Langkammer et al. 2012 NeuroImage 62:1593 (GM ~ 15, WM ~ 21 s^-1
# at 3 T, growing roughly linearly with B0), ~ 28 s^-1 per ppm of iron-related susceptibility
# (Langkammer 2012's slopes, 0.0271 s^-1 and 0.00097 ppm per ug/g iron)
_PD = (0.80, 0.69, 1.00)
_T1 = (1.33, 0.83, 4.0)
_T2 = (0.100, 0.075, 1.5)
_R2S_3T = (15.0, 21.0, 1.0)
_R2S_PER_PPM_3T = 28.0


def dipole_kernel(shape, voxel_mm, b_dir) -> np.ndarray:
    """D(k) on the ``rfftn`` half-grid of ``shape`` (float32); D(0) = 0."""
    b = np.asarray(b_dir, float) / np.linalg.norm(b_dir)
    k = [fft.fftfreq(n, d) for n, d in zip(shape[:2], voxel_mm[:2])] + [fft.rfftfreq(shape[2], voxel_mm[2])]
    kx, ky, kz = np.meshgrid(*[x.astype(np.float32) for x in k], indexing="ij", sparse=True)
    k2 = kx ** 2 + ky ** 2 + kz ** 2
    kb = kx * b[0] + ky * b[1] + kz * b[2]
    with np.errstate(invalid="ignore", divide="ignore"):
        d = (1.0 / 3.0 - kb ** 2 / k2).astype(np.float32)
    d[0, 0, 0] = 0.0
    return d


def _padded(shape, pad):
    return tuple(fft.next_fast_len(int(n + 2 * pad), real=True) for n in shape)


def dipole_field(chi, voxel_mm, b_dir, pad: int = 24) -> np.ndarray:
    """Relative field (ppm) of ``chi`` (ppm); zero-padded against wrap-around."""
    full = _padded(chi.shape, pad)
    spec = fft.rfftn(chi.astype(np.float32), s=full, workers=1)
    spec *= dipole_kernel(full, voxel_mm, b_dir)
    out = fft.irfftn(spec, s=full, workers=1)
    return np.ascontiguousarray(out[: chi.shape[0], : chi.shape[1], : chi.shape[2]], np.float32)


def dephasing(field_ppm, rot_world_from_grid, voxel_world_mm, b0: float, te: float) -> np.ndarray:
    """Signal kept by intravoxel dephasing, prod_a |sinc(gamma B0 G_a dx_a TE)| (float32).

    The field gradient G (ppm/mm, from the 1 mm simulation grid) is turned into the acquisition's
    world axes; across a voxel of width dx the phase spans 2 pi gamma B0 G dx TE, whose mean
    phasor is np.sinc of that over 2 pi (Fernandez-Seara & Wehrli 2000 MRM 44:358).
    """
    grads = np.gradient(field_ppm)
    keep = np.ones(field_ppm.shape, np.float32)
    for a in range(3):
        g_world = sum(rot_world_from_grid[a, i] * grads[i] for i in range(3))
        keep *= np.abs(np.sinc(GAMMA_MHZ_T * b0 * te * voxel_world_mm[a] * g_world)).astype(np.float32)
    return keep


def relaxation(head, chi, lesion_r2s, b0: float) -> dict:
    """PD, T1, T2 (spin echo) and R2* maps from tissue fractions, iron and lesions."""
    tissues = (head.gm, head.wm, head.csf)
    frac = sum(tissues) + 1e-6
    mix = lambda vals: sum(v * t for v, t in zip(vals, tissues)) / frac  # noqa: E731
    pd = mix(_PD)
    pd = np.where(head.scalp, 0.9, np.where(head.bone, 0.05, np.where(head.air, 0.0, pd)))
    para = np.clip(chi, 0.0, 0.5) * (head.brain | (head.csf > 0))
    dia = np.clip(-chi - 0.05, 0.0, 1.0) * head.brain          # calcification: few protons
    pd = (pd * (1.0 - np.clip(dia / 0.3, 0.0, 0.6))).astype(np.float32)
    t1 = np.maximum(np.where(head.scalp, 0.4, mix(_T1)), 0.1).astype(np.float32)
    r2 = 1.0 / np.maximum(np.where(head.scalp, 0.08, mix(_T2)), 0.005) + np.minimum(25.0 * para, 4.0)
    r2s = (b0 / 3.0) * (mix(_R2S_3T) + _R2S_PER_PPM_3T * para + lesion_r2s)
    r2s = np.where(head.bone | head.scalp, 60.0 * b0 / 3.0, r2s)
    return {"pd": pd, "t1": t1, "r2": r2.astype(np.float32), "r2s": r2s.astype(np.float32)}


def gre_magnitude(maps, keep, te, tr=0.03, flip_deg=15.0) -> np.ndarray:
    """Spoiled GRE magnitude: Ernst T1 weighting x exp(-TE R2*) x dephasing ``keep``."""
    e1 = np.exp(-tr / maps["t1"])
    a = np.radians(flip_deg)
    s = maps["pd"] * np.sin(a) * (1 - e1) / (1 - np.cos(a) * e1)
    return (s * np.exp(-te * maps["r2s"]) * keep).astype(np.float32)


def t2w_signal(maps, te, tr) -> np.ndarray:
    """Spin-echo T2 weighting: PD (1 - exp(-TR/T1)) exp(-TE R2)."""
    return (maps["pd"] * (1 - np.exp(-tr / maps["t1"])) * np.exp(-te * maps["r2"])).astype(np.float32)


def swi_from_complex(z, voxel_mm, power: int, hp_sigma_mm: float = 4.0) -> np.ndarray:
    """SWI (Haacke et al. 2004 MRM 52:612): |z| x phase-mask^power from homodyne high-pass phase.

    Phase convention: paramagnetic sources give negative phase; the mask is (pi + phase) / pi
    for negative phase and 1 otherwise.
    """
    sig = [hp_sigma_mm / v for v in voxel_mm]
    low = ndimage.gaussian_filter(z.real, sig, truncate=2.5) \
        + 1j * ndimage.gaussian_filter(z.imag, sig, truncate=2.5)
    phase = np.angle(z * np.conj(low)).astype(np.float32)
    mask = np.where(phase < 0, (np.pi + phase) / np.pi, 1.0).astype(np.float32)
    return (np.abs(z) * mask ** power).astype(np.float32)


def invert_dipole(field_ppm, mask, voxel_mm, b_dir, method: str, reg: float, pad: int = 16) -> np.ndarray:
    """Susceptibility (ppm) from a local field by TKD (Shmueli et al. 2009 MRM 62:1510) or closed-form
    Tikhonov, chi = F^-1[ D F[f] / (D^2 + lambda) ]; zero outside ``mask``."""
    full = _padded(field_ppm.shape, pad)
    spec = fft.rfftn(np.where(mask, field_ppm, 0).astype(np.float32), s=full, workers=1)
    d = dipole_kernel(full, voxel_mm, b_dir)
    if method == "TKD":
        inv = np.where(np.abs(d) > reg, 1.0 / np.where(d == 0, 1, d), np.sign(d) / reg)
    elif method == "Tikhonov":
        inv = d / (d ** 2 + reg)
    else:
        raise ValueError(f"unknown dipole inversion {method!r} (TKD or Tikhonov)")
    spec *= inv.astype(np.float32)
    out = fft.irfftn(spec, s=full, workers=1)[: field_ppm.shape[0], : field_ppm.shape[1], : field_ppm.shape[2]]
    return np.where(mask, out, 0).astype(np.float32)
