"""The simulator's physics on analytic cases: dipole field, TKD, GRE dephasing (blooming), SWI."""

from __future__ import annotations

import numpy as np
import pytest

from deepmir_tasks.simulate.physics import (block_mean, dipole_field, dipole_kernel, phase_rad_per_ppm,
                                            sphere_field, swi_from_complex, tkd_inversion)
from deepmir_tasks.simulate.shapes import EllipsoidUnion, Tube, render_fraction


def _sphere_grid(shape, voxel, radius, chi=1.0, ss=4):
    """A uniformly magnetised sphere at the grid centre with partial volume; returns chi, centre, affine."""
    aff = np.diag([*voxel, 1.0])
    centre = (np.asarray(shape) - 1) / 2.0 * np.asarray(voxel)
    sph = EllipsoidUnion(centre, [radius] * 3, np.eye(3))
    vol = np.zeros(shape, np.float32)
    for sl, frac in render_fraction(sph, shape, aff, (ss, ss, ss)):
        vol[sl] = frac * chi
    return vol, centre, aff


def _points(shape, aff):
    ijk = np.indices(shape).reshape(3, -1).T
    return ijk @ aff[:3, :3].T + aff[:3, 3]


@pytest.mark.parametrize("voxel, b0", [
    ((0.5, 0.5, 0.5), (0.0, 0.0, 1.0)),
    ((0.5, 0.5, 1.0), (np.sin(np.deg2rad(12)), 0.0, np.cos(np.deg2rad(12)))),
])
def test_fft_dipole_field_of_a_sphere_matches_the_analytic_field(voxel, b0):
    shape = (64, 64, 48) if voxel[2] == 0.5 else (64, 64, 32)
    radius = 4.0
    chi, centre, aff = _sphere_grid(shape, voxel, radius, chi=1.0)
    field = dipole_field(chi, voxel, b0, pad_fraction=1.0)
    pts = _points(shape, aff)
    exact = sphere_field(pts, centre, radius, 1.0, b0).reshape(shape)
    r = np.linalg.norm(pts - centre, axis=1).reshape(shape)

    outside = (r > 1.4 * radius) & (r < 3.0 * radius)
    scale = np.abs(exact[outside]).max()  # about chi/3 * 2 * (1/1.4)^3
    err = np.abs(field[outside] - exact[outside])
    assert err.max() < 0.05 * scale, err.max() / scale
    assert np.median(err) < 0.01 * scale
    # along B0 at 2 radii the field is +2/3 chi (a/r)^3 = chi/12; across it -chi/24
    b = np.asarray(b0) / np.linalg.norm(b0)
    on_axis = sphere_field((centre + 2 * radius * b)[None], centre, radius, 1.0, b0)[0]
    assert on_axis == pytest.approx(1.0 / 12.0)
    from scipy import ndimage as ndi
    ijk = (centre + 2 * radius * b) / np.asarray(voxel)
    fft_on_axis = ndi.map_coordinates(field, ijk[:, None], order=1)[0]
    assert fft_on_axis == pytest.approx(on_axis, rel=0.03)
    # Lorentz-corrected: (almost) no field inside a uniformly magnetised sphere
    assert np.abs(field[r < 0.5 * radius]).max() < 0.03


def test_dipole_kernel_is_the_lorentz_corrected_kernel():
    d = dipole_kernel((16, 16, 16), (1.0, 1.0, 1.0), (0, 0, 1), real=False)
    assert d[0, 0, 0] == 0.0
    assert d[0, 0, 3] == pytest.approx(1 / 3 - 1)      # k parallel to B0
    assert d[3, 0, 0] == pytest.approx(1 / 3)          # k perpendicular to B0
    assert d.min() >= -2 / 3 - 1e-6 and d.max() <= 1 / 3 + 1e-6


def test_tkd_underestimates_streaks_and_keeps_the_sign():
    shape, voxel, radius = (48, 48, 48), (0.6, 0.6, 0.6), 3.0
    for chi_true in (0.8, -0.4):
        chi, centre, aff = _sphere_grid(shape, voxel, radius, chi=chi_true)
        field = dipole_field(chi, voxel, (0, 0, 1))
        mask = np.ones(shape, np.uint8)
        rec = tkd_inversion(field, mask, voxel, (0, 0, 1), threshold=0.2)
        r = np.linalg.norm(_points(shape, aff) - centre, axis=1).reshape(shape)
        inner = rec[r < 0.6 * radius].mean()
        assert np.sign(inner) == np.sign(chi_true)
        assert 0.3 * abs(chi_true) < abs(inner) < 0.95 * abs(chi_true)  # underestimated
        # streaks: clearly non-zero values around the sphere where the truth is zero
        assert np.abs(rec[(r > 1.5 * radius) & (r < 3 * radius)]).max() > 0.02 * abs(chi_true)
    # a lower threshold recovers more of the contrast
    chi, centre, aff = _sphere_grid(shape, voxel, radius, chi=0.8)
    field = dipole_field(chi, voxel, (0, 0, 1))
    r = np.linalg.norm(_points(shape, aff) - centre, axis=1).reshape(shape)
    hi_t = tkd_inversion(field, np.ones(shape), voxel, (0, 0, 1), threshold=0.25)[r < 0.6 * radius].mean()
    lo_t = tkd_inversion(field, np.ones(shape), voxel, (0, 0, 1), threshold=0.1)[r < 0.6 * radius].mean()
    assert lo_t > hi_t


def test_intravoxel_dephasing_makes_a_microbleed_bloom_on_gre_but_not_on_qsm():
    """Fine-grid GRE averaged to 0.5x0.5x1.5 mm voxels: the dark region exceeds the sphere."""
    fine_vox = np.array([0.25, 0.25, 0.25])
    ss = np.array([2, 2, 6])
    shape = (96, 96, 96)
    radius, chi_cmb = 1.0, 1.0
    chi, centre, aff = _sphere_grid(shape, fine_vox, radius, chi=chi_cmb)
    field = dipole_field(chi, fine_vox, (0, 0, 1))
    k = phase_rad_per_ppm(3.0, 0.02)
    signal = block_mean(np.exp(1j * k * field).astype(np.complex64), ss)
    acq_vox = fine_vox * ss
    mag = np.abs(signal)
    dark = np.count_nonzero(mag < 0.5) * np.prod(acq_vox)
    true_volume = 4 / 3 * np.pi * radius ** 3
    assert dark > 3 * true_volume          # blooming: apparent size on GRE >> real size
    # no susceptibility, no dephasing
    assert np.allclose(np.abs(block_mean(np.ones(shape, np.complex64), ss)), 1.0)
    # QSM from the voxel-averaged field: the bright region stays near the true size
    qsm = tkd_inversion(block_mean(field, ss), np.ones(mag.shape), acq_vox, (0, 0, 1), threshold=0.15)
    bright = np.count_nonzero(qsm > 0.5 * qsm.max()) * np.prod(acq_vox)
    assert bright < dark / 1.5             # dark extent on GRE/SWI exceeds bright extent on QSM
    assert qsm.max() > 0


def test_swi_phase_mask_darkens_paramagnetic_phase_only():
    shape, vox = (40, 40, 20), (1.0, 1.0, 1.0)
    phase = np.zeros(shape, np.float32)
    phase[10:14, 10:14, 8:12] = 1.5      # paramagnetic (positive in this convention)
    phase[26:30, 26:30, 8:12] = -1.5     # diamagnetic
    signal = np.exp(1j * phase).astype(np.complex64)
    swi, hp = swi_from_complex(signal, vox, hpf_sigma_mm=4.0, power=4)
    assert swi[12, 12, 10] < 0.3          # ((pi - phase)/pi)^4 with the filtered phase
    assert swi[28, 28, 10] == pytest.approx(1.0, abs=0.02)
    assert swi[2, 2, 2] == pytest.approx(1.0, abs=0.02)
    assert hp[12, 12, 10] > 0.5


def test_partial_volume_rendering_conserves_volume():
    aff = np.diag([0.9, 0.9, 3.0, 1.0])
    sph = EllipsoidUnion([10.2, 11.7, 14.9], [1.3, 2.0, 1.6], np.eye(3))
    vol = sum(f.sum() for _, f in render_fraction(sph, (30, 30, 12), aff, (6, 6, 12))) * 0.9 * 0.9 * 3.0
    assert vol == pytest.approx(sph.volume_mm3(), rel=0.03)
    tube = Tube(np.array([[5.0, 5.0, 10.0], [20.0, 6.0, 12.0]]), 1.0)
    frac = np.zeros((30, 30, 12), np.float32)
    for sl, f in render_fraction(tube, frac.shape, aff, (6, 6, 12)):
        np.maximum(frac[sl], f, out=frac[sl])
    length = np.linalg.norm([15.0, 1.0, 2.0])
    expected = np.pi * length + 4 / 3 * np.pi  # capsule of radius 1
    assert frac.sum() * 0.9 * 0.9 * 3.0 == pytest.approx(expected, rel=0.05)


def test_air_cavity_field_on_an_oblique_grid_matches_the_point_formula():
    from deepmir_tasks.simulate.physics import spheres_field_on_grid
    from deepmir_tasks.simulate.shapes import euler_matrix

    aff = np.eye(4)
    aff[:3, :3] = euler_matrix(0.1, -0.05, 0.2) @ np.diag([1.5, 1.5, 2.0])
    aff[:3, 3] = [-20.0, -25.0, -15.0]
    shape = (24, 30, 18)
    spheres = [((5.0, 2.0, 3.0), 6.0, 9.4), ((-10.0, 8.0, 12.0), 3.0, -2.0)]
    b0 = (0.1, 0.0, 1.0)
    field, inside = spheres_field_on_grid(shape, aff, spheres, b0, chunk=5, return_inside=True)
    pts = _points(shape, aff)
    expected = sum(sphere_field(pts, c, r, chi, b0) for c, r, chi in spheres).reshape(shape)
    assert np.allclose(field, expected, atol=1e-4 * np.abs(expected).max())
    d0 = np.linalg.norm(pts - np.array(spheres[0][0]), axis=1).reshape(shape)
    assert np.array_equal(inside, (d0 <= 6.0) | (np.linalg.norm(pts - np.array(spheres[1][0]), axis=1)
                                                 .reshape(shape) <= 3.0))


def test_tikhonov_inversion_underestimates_and_keeps_the_sign():
    from deepmir_tasks.simulate.physics import tikhonov_inversion

    shape, voxel, radius = (48, 48, 48), (0.6, 0.6, 0.6), 3.0
    for chi_true in (0.8, -0.4):
        chi, centre, aff = _sphere_grid(shape, voxel, radius, chi=chi_true)
        field = dipole_field(chi, voxel, (0, 0, 1))
        r = np.linalg.norm(_points(shape, aff) - centre, axis=1).reshape(shape)
        inner = {lam: tikhonov_inversion(field, np.ones(shape), voxel, (0, 0, 1), regularisation=lam)
                 [r < 0.6 * radius].mean() for lam in (0.02, 0.08)}
        for value in inner.values():
            assert np.sign(value) == np.sign(chi_true)
            assert 0.3 * abs(chi_true) < abs(value) < 0.95 * abs(chi_true)
        assert abs(inner[0.02]) > abs(inner[0.08])  # more regularisation, more underestimation
