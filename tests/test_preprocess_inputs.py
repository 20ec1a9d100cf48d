"""Input checks: each broken input gives its own one-line error naming the file; odd QSM scales warn."""

from __future__ import annotations

import gzip
import warnings

import nibabel as nib
import numpy as np
import pytest

from deepmir_tasks.io import InputError
from deepmir_tasks.preprocess.checks import QsmScaleWarning, check_inputs, guess_qsm_units

from helpers.preprocess import make_head_image, save


@pytest.fixture
def trio(tmp_path):
    data, aff, _ = make_head_image((24, 24, 20), (4.0, 4.0, 4.0))
    rng = np.random.default_rng(0)
    qsm = np.where(data > 0.5, rng.normal(0, 0.05, data.shape), 0).astype(np.float32)
    return {"t2": save(data, aff, tmp_path / "sub-01_T2w.nii.gz"),
            "swi": save(data, aff, tmp_path / "sub-01_swi.nii.gz"),
            "qsm": save(qsm, aff, tmp_path / "sub-01_Chimap.nii.gz")}


def _check(files, **over):
    f = {**files, **over}
    return check_inputs(f["t2"], f["swi"], f["qsm"], f.get("mask"))


def test_good_inputs_pass_without_warning(trio):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = _check(trio)
    assert report["qsm"]["units_check"].startswith("ppm")
    assert report["t2"]["shape"] == [24, 24, 20]
    assert report["warnings"] == []


@pytest.mark.parametrize("case, pattern", [
    ("missing", "does not exist"),
    ("gzip", "not a readable gzip"),
    ("4d", "must be a 3-D image"),
    ("nan", "non-finite voxels"),
    ("empty", "is empty"),
    ("zero_bytes", "0 bytes"),
])
def test_broken_input_gives_its_own_one_line_error(trio, tmp_path, case, pattern):
    bad = tmp_path / "bad_swi.nii.gz"
    aff = nib.load(trio["swi"]).affine
    if case == "gzip":
        raw = gzip.compress(nib.load(trio["swi"]).to_bytes())
        bad.write_bytes(raw[: len(raw) // 2])
    elif case == "4d":
        save(np.ones((8, 8, 8, 3)), aff, bad)
    elif case == "nan":
        d = np.ones((8, 8, 8), np.float32)
        d[2, 3, 4] = np.nan
        save(d, aff, bad)
    elif case == "empty":
        save(np.zeros((8, 8, 8)), aff, bad)
    elif case == "zero_bytes":
        bad.write_bytes(b"")
    with pytest.raises(InputError, match=pattern) as err:
        _check(trio, swi=bad)
    msg = str(err.value)
    assert "\n" not in msg and str(bad) in msg and "SWI" in msg


def test_implausible_voxel_size_and_shear_are_refused(trio, tmp_path):
    data = nib.load(trio["t2"]).get_fdata()
    big = np.diag([40.0, 40.0, 40.0, 1.0])
    with pytest.raises(InputError, match="voxel sizes"):
        _check(trio, t2=save(data, big, tmp_path / "big.nii.gz"))
    shear = np.eye(4)
    shear[0, 1] = 0.5
    with pytest.raises(InputError, match="sheared"):
        _check(trio, t2=save(data, shear, tmp_path / "shear.nii.gz"))


def test_oblique_affine_is_accepted(trio, tmp_path):
    from helpers.preprocess import rotation

    data = nib.load(trio["t2"]).get_fdata()
    aff = rotation((12, -7, 20)) @ nib.load(trio["t2"]).affine
    report = _check(trio, t2=save(data, aff, tmp_path / "obl.nii.gz"))
    assert report["t2"]["obliquity_deg"] > 5


def test_mask_on_another_grid_is_refused(trio, tmp_path):
    m = save(np.ones((10, 10, 10)), np.eye(4), tmp_path / "mask.nii.gz")
    with pytest.raises(InputError, match="does not match the T2w grid") as err:
        _check(trio, mask=m)
    assert str(m) in str(err.value)


@pytest.mark.parametrize("scale, expect", [(1000.0, "ppb"), (1e-6, "dimensionless")])
def test_scaled_qsm_warns_naming_the_file(trio, tmp_path, scale, expect):
    q = nib.load(trio["qsm"])
    bad = save(q.get_fdata() * scale, q.affine, tmp_path / "scaled_Chimap.nii.gz")
    with pytest.warns(QsmScaleWarning, match=expect) as rec:
        report = _check(trio, qsm=bad)
    assert str(bad) in str(rec[0].message)
    assert expect in report["qsm"]["units_check"]


def test_phase_in_radians_is_recognised():
    rng = np.random.default_rng(1)
    phase = rng.uniform(-np.pi, np.pi, size=20000)
    assert "radians" in guess_qsm_units(phase)
    assert guess_qsm_units(rng.normal(0, 0.05, 20000)) is None
