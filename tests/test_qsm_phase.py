"""Phase scaling and Laplacian unwrapping (deepmir_tasks.qsm.phase)."""

from __future__ import annotations

import numpy as np
import pytest

from deepmir_tasks.io import InputError
from deepmir_tasks.qsm.phase import laplacian_unwrap, to_radians, wrap


def _ramp(shape=(40, 40, 30), a=8.0):
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    return (a * (x * x + y * y) + a / 2 * z + 0.3).astype(np.float32), (x * x + y * y + z * z) < 0.8


@pytest.mark.parametrize("codes, units", [((-4096, 4095), "scanner"), ((0, 4095), "scanner"),
                                          ((-2048, 2047), "scanner")])
def test_scanner_integers_rescaled(codes, units):
    true, _ = _ramp()
    w = wrap(true)
    lo, hi = codes
    raw = np.round((w + np.pi) / (2 * np.pi) * (hi - lo + 1) + lo).clip(lo, hi)
    rad, found = to_radians(raw)
    assert found == units
    err = wrap(rad - w)
    assert np.abs(err).max() < 2 * np.pi / (hi - lo) * 1.01


def test_radians_kept_and_arbitrary_units_rescaled():
    true, _ = _ramp()
    w = wrap(true)
    rad, found = to_radians(w)
    assert found == "rad" and np.allclose(rad, w, atol=1e-6)
    rad, found = to_radians(w * 0.00117)       # as the ROMEO test data: about +-0.0037
    assert found == "arbitrary"
    assert np.abs(wrap(rad - w)).max() < 1e-3


def test_bad_phase_is_one_clear_error():
    with pytest.raises(InputError, match=r"x_phase.nii.gz: phase image is constant"):
        to_radians(np.zeros((4, 4, 4)), "x_phase.nii.gz")
    with pytest.raises(InputError, match="unknown phase units 'deg'"):
        to_radians(np.arange(8.0), "p.nii.gz", units="deg")


def test_laplacian_unwrap_recovers_a_steep_phase_exactly():
    true, mask = _ramp(a=20.0)                 # up to ~1.7 rad per voxel, many wraps
    u = laplacian_unwrap(wrap(true), mask)
    turns = np.round((u - true)[mask] / (2 * np.pi))
    assert np.unique(turns).size == 1          # one global 2 pi offset at most
    assert np.allclose((u - true)[mask] - 2 * np.pi * turns[0], 0, atol=1e-4)
    assert np.all(u[~mask] == 0)


def test_laplacian_unwrap_with_anisotropic_voxels_and_noise():
    rng = np.random.default_rng(0)
    true, mask = _ramp(a=10.0)
    noisy = wrap(true + rng.normal(0, 0.2, true.shape).astype(np.float32))
    u = laplacian_unwrap(noisy, mask, voxel_mm=(0.5, 0.5, 2.0))
    d = (u - true)[mask]
    assert np.abs(d - np.median(d)).max() < np.pi   # noise only, no 2 pi jumps
