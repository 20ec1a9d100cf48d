"""MR physics of the simulator: dipole field, GRE signal, SWI, TKD-QSM, bias fields and noise.

Units: susceptibility and field perturbations are in ppm (of B0); lengths in mm; times in s.
The dipole kernel is the Lorentz-corrected one, D(k) = 1/3 - (k.b)^2/|k|^2 with D(0) = 0, so the
field of a uniformly magnetised sphere is zero inside it and chi a^3 (3 cos^2 t - 1) / (3 r^3)
outside it.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "GAMMA_MHZ_PER_T",
    "dipole_kernel",
    "dipole_field",
    "sphere_field",
    "tkd_inversion",
    "tikhonov_inversion",
    "spheres_field_on_grid",
    "block_mean",
    "phase_rad_per_ppm",
    "swi_from_complex",
    "rician",
    "smooth_field",
    "SmoothField",
    "motion_ringing",
]

#: proton gyromagnetic ratio / 2 pi
GAMMA_MHZ_PER_T = 42.577478


def phase_rad_per_ppm(b0_tesla: float, te_s: float) -> float:
    """Phase (rad) accumulated at echo time ``te_s`` per ppm of field offset."""
    return 2.0 * np.pi * GAMMA_MHZ_PER_T * b0_tesla * te_s


def _padded_shape(shape, pad_fraction):
    from scipy import fft

    return tuple(fft.next_fast_len(int(n + max(8, int(np.ceil(n * pad_fraction)))), real=True)
                 for n in shape)


def dipole_kernel(shape, voxel_mm, b0_dir=(0.0, 0.0, 1.0), *, real=True) -> np.ndarray:
    """Lorentz-corrected dipole kernel on the (r)FFT grid of ``shape`` (float32).

    ``b0_dir`` is the field direction in the grid's voxel-axis frame (normalised here).
    With ``real`` the last axis is halved as for ``scipy.fft.rfftn``.
    """
    b = np.asarray(b0_dir, float)
    b = b / np.linalg.norm(b)
    ks = []
    for ax, (n, d) in enumerate(zip(shape, voxel_mm)):
        k = np.fft.rfftfreq(n, d) if (real and ax == len(shape) - 1) else np.fft.fftfreq(n, d)
        ks.append(k.astype(np.float32))
    kx, ky, kz = np.meshgrid(*ks, indexing="ij", sparse=True)
    kb = kx * np.float32(b[0]) + ky * np.float32(b[1]) + kz * np.float32(b[2])
    k2 = kx * kx + ky * ky + kz * kz
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.float32(1.0 / 3.0) - kb * kb / k2
    d[0, 0, 0] = 0.0
    return d.astype(np.float32, copy=False)


def dipole_field(chi_ppm, voxel_mm, b0_dir=(0.0, 0.0, 1.0), pad_fraction: float = 0.5, workers=None):
    """Field perturbation (ppm of B0) of a susceptibility map, by FFT with zero padding."""
    from scipy import fft

    chi = np.asarray(chi_ppm, np.float32)
    shp = _padded_shape(chi.shape, pad_fraction)
    spec = fft.rfftn(chi, s=shp, workers=workers)
    spec *= dipole_kernel(shp, voxel_mm, b0_dir)
    out = fft.irfftn(spec, s=shp, workers=workers)
    return np.ascontiguousarray(out[: chi.shape[0], : chi.shape[1], : chi.shape[2]], dtype=np.float32)


def sphere_field(points_mm, centre_mm, radius_mm, chi_ppm, b0_dir=(0.0, 0.0, 1.0)):
    """Analytic Lorentz-corrected field (ppm) of a uniformly magnetised sphere at ``points_mm``."""
    b = np.asarray(b0_dir, float)
    b = b / np.linalg.norm(b)
    d = np.asarray(points_mm, float) - np.asarray(centre_mm, float)
    r = np.linalg.norm(d, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = (d @ b) / r
        out = chi_ppm * radius_mm ** 3 * (3 * cos * cos - 1) / (3 * r ** 3)
    return np.where(r > radius_mm, out, 0.0)


def spheres_field_on_grid(shape, affine, spheres, b0_dir=(0.0, 0.0, 1.0), chunk: int = 8,
                          return_inside: bool = False):
    """Analytic field (ppm) of uniformly magnetised spheres on a grid (float32, slab by slab).

    ``spheres``: iterable of ``(centre_mm, radius_mm, chi_ppm)`` in the grid's world frame;
    ``b0_dir`` in that world frame. Inside a sphere the (Lorentz-corrected) field is 0.
    With ``return_inside`` also returns the boolean map of voxels inside any sphere.
    """
    shape = tuple(int(n) for n in shape)
    b = np.asarray(b0_dir, float)
    b = b / np.linalg.norm(b)
    a = np.asarray(affine, float)
    ii = np.arange(shape[0], dtype=np.float32)[:, None, None]
    jj = np.arange(shape[1], dtype=np.float32)[None, :, None]
    out = np.zeros(shape, np.float32)
    inside = np.zeros(shape, bool) if return_inside else None
    for k0 in range(0, shape[2], chunk):
        kk = np.arange(k0, min(shape[2], k0 + chunk), dtype=np.float32)[None, None, :]
        for centre, radius, chi in spheres:
            off = a[:3, 3] - np.asarray(centre, float)
            d = [np.float32(a[ax, 0]) * ii + np.float32(a[ax, 1]) * jj + np.float32(a[ax, 2]) * kk
                 + np.float32(off[ax]) for ax in range(3)]
            r2 = d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
            db = np.float32(b[0]) * d[0] + np.float32(b[1]) * d[1] + np.float32(b[2]) * d[2]
            r2 = np.maximum(r2, np.float32(radius * radius))  # 0 inside (see below)
            f = np.float32(chi * radius ** 3 / 3.0) * (3 * db * db / r2 - 1) / (r2 * np.sqrt(r2))
            within = r2 <= np.float32(radius * radius)
            f[within] = 0.0
            out[:, :, k0:k0 + kk.shape[2]] += f
            if return_inside:
                inside[:, :, k0:k0 + kk.shape[2]] |= within
    return (out, inside) if return_inside else out


def tkd_inversion(field_ppm, mask, voxel_mm, b0_dir, threshold: float = 0.19,
                  pad_fraction: float = 0.3, workers=None):
    """Thresholded k-space division: chi = F^-1[F(field) / D_t], |D_t| >= threshold.

    No correction factor is applied, so contrasts are underestimated and streaks remain,
    as in a plain TKD reconstruction. The result is masked.
    """
    from scipy import fft

    f = np.asarray(field_ppm, np.float32) * (mask > 0)
    shp = _padded_shape(f.shape, pad_fraction)
    d = dipole_kernel(shp, voxel_mm, b0_dir)
    small = np.abs(d) < threshold
    d = np.where(small, np.where(d < 0, -threshold, threshold), d).astype(np.float32)
    spec = fft.rfftn(f, s=shp, workers=workers)
    spec /= d
    spec[0, 0, 0] = 0.0
    out = fft.irfftn(spec, s=shp, workers=workers)[: f.shape[0], : f.shape[1], : f.shape[2]]
    return np.ascontiguousarray(out * (mask > 0), dtype=np.float32)


def tikhonov_inversion(field_ppm, mask, voxel_mm, b0_dir, regularisation: float = 0.05,
                       pad_fraction: float = 0.3, workers=None):
    """Closed-form Tikhonov (L2) dipole inversion: chi = F^-1[D F(field) / (D^2 + lambda)].

    Like TKD it damps the k-space cone where D ~ 0, so contrasts are underestimated; it is
    smoother and streaks less. The result is masked.
    """
    from scipy import fft

    f = np.asarray(field_ppm, np.float32) * (mask > 0)
    shp = _padded_shape(f.shape, pad_fraction)
    d = dipole_kernel(shp, voxel_mm, b0_dir)
    spec = fft.rfftn(f, s=shp, workers=workers)
    spec *= d / (d * d + np.float32(regularisation))
    out = fft.irfftn(spec, s=shp, workers=workers)[: f.shape[0], : f.shape[1], : f.shape[2]]
    return np.ascontiguousarray(out * (mask > 0), dtype=np.float32)


def block_mean(a, factors):
    """Mean over non-overlapping blocks of ``factors`` voxels (shape must divide exactly)."""
    fx, fy, fz = (int(f) for f in factors)
    nx, ny, nz = a.shape
    return a.reshape(nx // fx, fx, ny // fy, fy, nz // fz, fz).mean(axis=(1, 3, 5))


def swi_from_complex(signal, voxel_mm, hpf_sigma_mm: float = 4.0, power: int = 4):
    """SWI (Haacke 2004): magnitude times a high-pass-filtered phase mask to the ``power``.

    The phase is high-pass filtered by complex division by a Gaussian low-pass of the complex
    image. Positive filtered phase (paramagnetic in this simulator's convention) is attenuated:
    mask = (pi - phase)/pi for phase > 0, 1 otherwise. Returns ``(swi, filtered_phase)``.
    """
    from scipy import ndimage as ndi

    sigma = [hpf_sigma_mm / v for v in voxel_mm]
    low = ndi.gaussian_filter(signal.real, sigma) + 1j * ndi.gaussian_filter(signal.imag, sigma)
    phase = np.angle(signal * np.conj(low)).astype(np.float32)
    mask = np.where(phase > 0, (np.pi - phase) / np.pi, 1.0).astype(np.float32)
    swi = np.abs(signal).astype(np.float32) * mask ** power
    return swi, phase


def rician(rng, image, sigma):
    """Magnitude of ``image`` plus complex Gaussian noise of std ``sigma`` per channel."""
    re = image + np.float32(sigma) * rng.standard_normal(image.shape, dtype=np.float32)
    im = np.float32(sigma) * rng.standard_normal(image.shape, dtype=np.float32)
    return np.sqrt(re * re + im * im).astype(np.float32)


class SmoothField:
    """A smooth random field from a few low-frequency cosine modes, defined in world mm.

    Evaluates consistently on any grid (``field(shape, affine)``); |value| <= 1 everywhere.
    """

    def __init__(self, rng, centre_mm, n_modes: int = 6, wavelength_mm=(150.0, 400.0)):
        self.centre = np.asarray(centre_mm, float)
        self.modes = []
        for _ in range(n_modes):
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            k = 2 * np.pi / rng.uniform(*wavelength_mm) * direction
            self.modes.append((k, rng.uniform(0, 2 * np.pi), rng.normal()))
        self.norm = sum(abs(a) for _, _, a in self.modes) or 1.0

    def __call__(self, shape, affine) -> np.ndarray:
        lin = np.asarray(affine, float)[:3, :3]
        off = np.asarray(affine, float)[:3, 3] - self.centre
        out = np.zeros(shape, np.float32)
        for k, phase, amp in self.modes:
            kk = k @ lin  # phase step per voxel along each axis; cos is separable in exp form
            e = [np.exp(1j * kk[ax] * np.arange(n)).astype(np.complex64) for ax, n in enumerate(shape)]
            e[0] = e[0] * np.complex64(amp / self.norm * np.exp(1j * (float(k @ off) + phase)))
            plane = e[0][:, None] * e[1][None, :]
            out += (plane[:, :, None] * e[2][None, None, :]).real
        return out


def smooth_field(rng, shape, affine, centre_mm, n_modes: int = 6, wavelength_mm=(150.0, 400.0)):
    """A smooth random field on one grid (see :class:`SmoothField`)."""
    return SmoothField(rng, centre_mm, n_modes, wavelength_mm)(shape, affine)


def motion_ringing(rng, image, line_fraction: float, max_shift_mm: float, voxel_mm: float, axis: int = 1):
    """Ghosts and ringing of motion during a Cartesian acquisition.

    A random ``line_fraction`` of the phase-encode lines (along ``axis``) is acquired with the
    head shifted along that axis by up to ``max_shift_mm``: those lines carry the linear phase of
    the shift (Zaitsev et al. 2015, JMRI 42:887). Real input returns the magnitude, complex
    input the complex image.
    """
    from scipy import fft

    n = image.shape[axis]
    moved = rng.random(n) < line_fraction
    shift = np.where(moved, rng.uniform(-max_shift_mm, max_shift_mm, n), 0.0)
    ky = np.fft.fftfreq(n, voxel_mm)
    ramp = np.exp(-2j * np.pi * ky * shift).astype(np.complex64)
    shape = [1] * image.ndim
    shape[axis] = n
    k = fft.fft(np.asarray(image, np.complex64), axis=axis)
    k *= ramp.reshape(shape)
    out = fft.ifft(k, axis=axis)
    return np.abs(out).astype(np.float32) if not np.iscomplexobj(image) else out.astype(np.complex64)
