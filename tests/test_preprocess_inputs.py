"""Input checks: each broken input gives its own one-line error naming the file; a QSM not in ppm and
an unsupported resolution fail unless overridden, and are then flagged."""

from __future__ import annotations

import gzip
import struct
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from deepmir_tasks.io import InputError
from deepmir_tasks.preprocess.checks import QsmScaleWarning, check_inputs, guess_qsm_units, input_flags

from helpers.preprocess import make_head_image, save


@pytest.fixture
def trio(tmp_path):
    data, aff, _ = make_head_image((30, 30, 26), (4.0, 4.0, 4.0))
    rng = np.random.default_rng(0)
    qsm = np.where(data > 0.5, rng.normal(0, 0.05, data.shape), 0).astype(np.float32)
    return {"t2": save(data, aff, tmp_path / "sub-01_T2w.nii.gz"),
            "swi": save(data, aff, tmp_path / "sub-01_swi.nii.gz"),
            "qsm": save(qsm, aff, tmp_path / "sub-01_Chimap.nii.gz")}


def _check(files, qsm_units="auto", allow_resolution=True, **over):
    """check_inputs on the trio with some files replaced (its 4 mm voxels are run with the override)."""
    f = {**files, **over}
    return check_inputs(f["t2"], f["swi"], f["qsm"], f.get("mask"), qsm_units=qsm_units,
                        allow_resolution=allow_resolution, qsm_out=Path(files["qsm"]).with_name("qsm_ppm.nii.gz"))


def test_good_inputs_pass_without_warning(trio):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = _check(trio)
    assert report["qsm"]["units_check"].startswith("ppm")
    assert report["t2"]["shape"] == [30, 30, 26]
    assert len(report["warnings"]) == 3 and all("outside the supported range" in w for w in report["warnings"])
    assert input_flags(report) == "outside_supported_resolution"


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
def test_scaled_qsm_fails_naming_the_file_unless_trusted(trio, tmp_path, scale, expect):
    q = nib.load(trio["qsm"])
    bad = save(q.get_fdata() * scale, q.affine, tmp_path / "scaled_Chimap.nii.gz")
    with pytest.raises(InputError, match=expect) as err:
        _check(trio, qsm=bad)
    assert err.value.path == str(bad) and "--qsm-units ppm" in str(err.value) and "\n" not in str(err.value)
    with pytest.warns(QsmScaleWarning, match=expect) as rec:           # trusted: run, warned and flagged
        report = _check(trio, qsm=bad, qsm_units="ppm")
    assert str(bad) in str(rec[0].message)
    assert expect in report["qsm"]["units_check"] and "qsm_units_unverified" in input_flags(report)


def test_qsm_in_ppb_is_converted_when_asked(trio, tmp_path):
    q = nib.load(trio["qsm"])
    ppb = save(q.get_fdata() * 1000.0, q.affine, tmp_path / "ppb_Chimap.nii.gz")
    report = _check(trio, qsm=ppb, qsm_units="ppb")
    converted = nib.load(report["qsm_file"]).get_fdata()
    assert report["qsm_file"] != str(ppb) and np.allclose(converted, q.get_fdata(), atol=1e-5)
    assert report["qsm"]["units_check"].startswith("ppm") and "qsm_units_unverified" not in input_flags(report)
    with pytest.raises(InputError, match="ppb"):                          # ppm data called ppb: now tiny
        _check(trio, qsm_units="ppb")


def test_wrapped_phase_given_as_qsm_fails(trio, tmp_path):
    aff = nib.load(trio["qsm"]).affine
    rng = np.random.default_rng(3)
    head = nib.load(trio["t2"]).get_fdata() > 0.5
    phase = save(np.where(head, rng.uniform(-np.pi, np.pi, head.shape), 0), aff, tmp_path / "phase_Chimap.nii.gz")
    with pytest.raises(InputError, match="phase image in radians") as err:
        _check(trio, qsm=phase)
    assert err.value.path == str(phase)


def test_complex_swi_is_refused(trio, tmp_path):
    img = nib.load(trio["swi"])
    bad = tmp_path / "complex_swi.nii.gz"
    nib.save(nib.Nifti1Image((img.get_fdata() * (1 + 1j)).astype(np.complex64), img.affine), str(bad))
    with pytest.raises(InputError, match="complex-valued") as err:
        _check(trio, swi=bad)
    assert err.value.path == str(bad)


def test_header_with_zero_voxel_size_is_refused(trio, tmp_path):
    """nibabel reads pixdim 0 as 1 mm; the header is broken and must be refused, not guessed."""
    img = nib.load(trio["t2"])
    out = nib.Nifti1Image(np.asarray(img.dataobj), img.affine)
    out.set_qform(img.affine, code=1)
    out.set_sform(None, code=0)
    raw = bytearray(out.to_bytes())
    raw[80:92] = struct.pack("<3f", 0.0, 0.0, 0.0)                      # pixdim[1:4]
    bad = tmp_path / "pixdim0_T2w.nii.gz"
    bad.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(InputError, match="invalid voxel sizes") as err:
        _check(trio, t2=bad)
    assert err.value.path == str(bad)


def test_image_too_small_to_hold_a_brain_is_refused(trio, tmp_path):
    tiny = save(np.ones((6, 6, 6)), np.eye(4), tmp_path / "tiny_T2w.nii.gz")
    with pytest.raises(InputError, match="too small to hold a brain") as err:
        _check(trio, t2=tiny)
    assert err.value.path == str(tiny)


def test_unsupported_resolution_fails_unless_allowed(trio):
    with pytest.raises(InputError, match="outside the supported range") as err:
        _check(trio, allow_resolution=False)
    assert err.value.path == str(trio["t2"]) and "--allow-resolution" in str(err.value)


def test_supported_resolution_passes_unflagged(tmp_path):
    data, aff, _ = make_head_image((150, 150, 50), (1.0, 1.0, 3.0))
    f = {"t2": save(data, aff, tmp_path / "t2.nii.gz"), "swi": save(data, aff, tmp_path / "swi.nii.gz"),
         "qsm": save(np.where(data > 0.5, 0.02, 0.0), aff, tmp_path / "qsm.nii.gz")}
    report = check_inputs(f["t2"], f["swi"], f["qsm"])
    assert report["outside_supported_resolution"] is False and input_flags(report) == ""


def test_phase_in_radians_is_recognised():
    rng = np.random.default_rng(1)
    phase = rng.uniform(-np.pi, np.pi, size=20000)
    assert "radians" in guess_qsm_units(phase)
    assert guess_qsm_units(rng.normal(0, 0.05, 20000)) is None
