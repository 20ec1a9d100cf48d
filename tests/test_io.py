"""Input checks give one-line errors naming the file; writes are atomic."""

import gzip

import nibabel as nib
import numpy as np
import pytest

from deepmir_tasks.io import InputError, load_image, save_nifti, write_json


def _write(path, data, affine=None):
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), np.eye(4) if affine is None else affine), str(path))
    return path


def _one_line_error(exc_info, path):
    msg = str(exc_info.value)
    assert "\n" not in msg
    assert str(path) in msg
    return msg


def test_valid_image_loads(tmp_path):
    path = _write(tmp_path / "ok.nii.gz", np.random.default_rng(0).random((8, 9, 10)))
    img = load_image(path)
    assert img.shape == (8, 9, 10)


def test_4d_image_is_refused(tmp_path):
    path = _write(tmp_path / "four.nii.gz", np.ones((8, 8, 8, 3)))
    with pytest.raises(InputError) as err:
        load_image(path, what="T2w")
    assert "3-D" in _one_line_error(err, path) and "4-D" in str(err.value)


def test_single_volume_4d_is_accepted(tmp_path):
    path = _write(tmp_path / "one.nii.gz", np.ones((8, 8, 8, 1)))
    assert load_image(path).shape == (8, 8, 8)


def test_nans_are_refused(tmp_path):
    data = np.ones((8, 8, 8))
    data[1, 2, 3] = np.nan
    data[2, 2, 2] = np.inf
    path = _write(tmp_path / "nan.nii.gz", data)
    with pytest.raises(InputError) as err:
        load_image(path, what="QSM")
    assert "2 non-finite" in _one_line_error(err, path)


def test_empty_image_is_refused(tmp_path):
    path = _write(tmp_path / "zeros.nii.gz", np.zeros((8, 8, 8)))
    with pytest.raises(InputError) as err:
        load_image(path)
    assert "empty" in _one_line_error(err, path)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.nii.gz"
    with pytest.raises(InputError) as err:
        load_image(path, what="SWI")
    assert "does not exist" in _one_line_error(err, path)


def test_truncated_gzip(tmp_path):
    good = _write(tmp_path / "good.nii.gz", np.random.default_rng(1).random((16, 16, 16)))
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(InputError) as err:
        load_image(bad)
    _one_line_error(err, bad)


def test_not_a_nifti(tmp_path):
    bad = tmp_path / "text.nii.gz"
    bad.write_bytes(gzip.compress(b"hello, this is not an image" * 20))
    with pytest.raises(InputError) as err:
        load_image(bad)
    _one_line_error(err, bad)


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "out" / "x.json"

    class Boom:
        pass

    with pytest.raises(TypeError):
        write_json({"x": Boom()}, target)
    assert not target.exists()
    assert list(target.parent.iterdir()) == []
    write_json({"x": 1}, target)
    assert target.read_text().strip().startswith("{")


def test_save_nifti_round_trip(tmp_path):
    data = np.arange(27, dtype=np.uint8).reshape(3, 3, 3)
    path = save_nifti(data, np.diag([2, 2, 2, 1]), tmp_path / "lab.nii.gz")
    back = nib.load(str(path))
    assert back.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(back.dataobj), data)


def test_atomic_files_get_ordinary_permissions(tmp_path):
    import os
    import stat

    mask = os.umask(0o022)
    try:
        path = write_json({"a": 1}, tmp_path / "p.json")
    finally:
        os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_input_error_survives_pickling():
    import pickle

    err = pickle.loads(pickle.dumps(InputError("/data/sub-01_T2w.nii.gz", "is empty")))
    assert isinstance(err, InputError)
    assert str(err) == "/data/sub-01_T2w.nii.gz: is empty" and err.problem == "is empty"
