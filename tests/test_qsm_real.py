"""The chain on a real 3-echo crop (ROMEO.jl test data, MIT licence: ../shared/data/real_megre_crop)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from deepmir_tasks.qsm.bids import find_megre, load_megre
from deepmir_tasks.qsm.pipeline import reconstruct

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_megre_crop"
TES = [0.004, 0.008, 0.012]

pytestmark = pytest.mark.skipif(not (REAL / "phase_3echo.nii.gz").exists(),
                                reason="the shared real MEGRE crop is not on this machine")


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """The crop as BIDS 4-D files with sidecars (3 T; echo times from its README), reconstructed."""
    d = tmp_path_factory.mktemp("real")
    for part, name in (("mag", "mag_3echo"), ("phase", "phase_3echo")):
        shutil.copy(REAL / f"{name}.nii.gz", d / f"sub-real_part-{part}_MEGRE.nii.gz")
        (d / f"sub-real_part-{part}_MEGRE.json").write_text(json.dumps({"EchoTime": TES, "MagneticFieldStrength": 3.0}))
    data = load_megre(*find_megre(d, "sub-real"))
    return data, reconstruct(data)


def _pairs(mask, ax):
    n = mask.shape[ax]
    return np.take(mask, range(0, n - 1), axis=ax) & np.take(mask, range(1, n), axis=ax)


def test_phase_read_as_arbitrary_units(real):
    data, _ = real
    assert data.phase_units == "arbitrary"
    assert data.phase.min() == pytest.approx(-np.pi, abs=1e-4) and data.phase.max() == pytest.approx(np.pi, abs=1e-4)


def test_no_two_pi_jumps_left_in_the_brain(real):
    _, out = real
    m, u = out["mask"], out["unwrapped"]
    assert m.mean() > 0.5                                  # a brain-only crop: most of it is kept
    for ax in range(3):
        pairs = _pairs(m, ax)
        d = [np.diff(u[..., n], axis=ax)[pairs] for n in range(3)]
        assert np.abs(d[0]).max() < np.pi                  # first echo: every neighbour step < pi
        for n in (1, 2):                                   # later echoes: steps grow with TE as the
            assert np.percentile(np.abs(d[n]), 99.9) < np.pi   # field does (a vein may exceed pi),
            assert np.abs(d[n] - d[0] * TES[n] / TES[0]).max() < np.pi   # never by a 2 pi jump


def test_field_is_smooth_and_agrees_across_echoes(real):
    _, out = real
    m, f = out["mask"], out["field_hz"]
    steps = np.concatenate([np.abs(np.diff(f, axis=ax))[_pairs(m, ax)] for ax in range(3)])
    assert np.median(steps) < 4.0 and np.percentile(steps, 99) < 15.0   # Hz per voxel (veins: the tail)
    from deepmir_tasks.qsm.swi import highpass_field
    fine = np.abs(highpass_field(f, m, (0.47, 0.47, 1.0), sigma_mm=1.0)[m])
    assert np.median(fine) < 0.01 * np.ptp(f[m])          # detail under 1 mm: noise and veins, ~1 % of the
    assert fine.max() < 0.5 / TES[-1]                      # span, and nothing like a wrap (1/TE Hz)
    assert np.ptp(f[m]) > 100.0                            # the field itself spans over 100 Hz
    for n, te in enumerate(TES):
        per_echo = out["unwrapped"][..., n] / (2 * np.pi * te)
        assert np.median(np.abs(per_echo - f)[m]) < 1.0    # Hz


def test_chain_gives_finite_plausible_qsm_and_swi(real):
    _, out = real
    chi, q = out["chi"], out["qsm_mask"]
    assert q.sum() > 0.2 * q.size and np.all(np.isfinite(chi))   # V-SHARP erodes a 24x24x41 mm crop
    lo, hi = np.percentile(chi[q], [0.5, 99.5])
    assert -0.5 < lo < -0.02 and 0.02 < hi < 0.6           # ppm: tissue and veins
    swi, mag = out["swi"], out["magnitude"]
    assert np.all(np.isfinite(swi)) and np.all(swi <= mag + 1e-9)
    ratio = swi / np.maximum(mag, 1e-12)
    veins = q & (mag < 0.7 * np.median(mag[q])) & (chi > 0.1)    # dark in magnitude, paramagnetic
    assert veins.sum() > 30
    assert np.median(ratio[veins]) < 0.7 and np.median(ratio[out["mask"]]) > 0.9
    assert (ratio[out["mask"]] < 0.7).mean() < 0.35        # the veins, not the whole brain
