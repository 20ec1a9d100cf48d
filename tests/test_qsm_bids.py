"""Reading BIDS MEGRE files and sidecars (deepmir_tasks.qsm.bids)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from deepmir_tasks.io import InputError
from deepmir_tasks.qsm.bids import find_megre, load_megre


def _write(folder, tes=(0.005, 0.010), b0=3.0, four_d=False, drop=None, codes=True):
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    shape = (8, 9, 7)
    aff = np.diag([0.5, 0.5, 2.0, 1.0])
    phase = [rng.uniform(-np.pi, np.pi, shape) for _ in tes]
    mags = [rng.uniform(1, 2, shape) for _ in tes]

    def save(part, data, name, te):
        if part == "phase" and codes:
            data = np.round(np.asarray(data) / np.pi * 4096).clip(-4096, 4095).astype(np.int16)
        nib.save(nib.Nifti1Image(np.asarray(data), aff), str(folder / f"{name}.nii.gz"))
        meta = {"EchoTime": te, "MagneticFieldStrength": b0}
        if drop:
            meta.pop(drop)
        (folder / f"{name}.json").write_text(json.dumps(meta))

    for part, arrs in (("mag", mags), ("phase", phase)):
        if four_d:
            save(part, np.stack(arrs, -1), f"sub-01_part-{part}_MEGRE", list(tes))
        else:
            for n, (a, te) in enumerate(zip(arrs, tes), start=1):
                save(part, a, f"sub-01_echo-{n}_part-{part}_MEGRE", te)
    return np.stack(phase, -1)


@pytest.mark.parametrize("four_d", [False, True])
def test_load_megre_per_echo_or_4d(tmp_path, four_d):
    truth = _write(tmp_path, tes=(0.004, 0.008, 0.012), four_d=four_d)
    mag_files, phase_files = find_megre(tmp_path, "sub-01")
    d = load_megre(mag_files, phase_files)
    assert d.echo_times_s == [0.004, 0.008, 0.012] and d.b0_tesla == 3.0
    assert d.magnitude.shape == d.phase.shape == (8, 9, 7, 3)
    assert d.phase_units == "scanner"
    assert np.abs(np.angle(np.exp(1j * (d.phase - truth)))).max() < 2e-3
    assert d.voxel_mm == (0.5, 0.5, 2.0)


def test_echoes_sorted_numerically(tmp_path):
    _write(tmp_path, tes=tuple(0.003 * k for k in range(1, 12)))
    mag_files, _ = find_megre(tmp_path, "sub-01")
    assert [f.name.split("_")[1] for f in mag_files][:3] == ["echo-1", "echo-2", "echo-3"]
    assert mag_files[-1].name.startswith("sub-01_echo-11_")


@pytest.mark.parametrize("key", ["EchoTime", "MagneticFieldStrength"])
def test_missing_sidecar_key_names_file_and_key(tmp_path, key):
    _write(tmp_path, drop=key)
    with pytest.raises(InputError) as err:
        load_megre(*find_megre(tmp_path, "sub-01"))
    msg = str(err.value)
    assert "sub-01_echo-1_part-phase_MEGRE.json" in msg and repr(key) in msg and "\n" not in msg


def test_missing_sidecar_and_bad_values(tmp_path):
    _write(tmp_path)
    (tmp_path / "sub-01_echo-2_part-phase_MEGRE.json").unlink()
    with pytest.raises(InputError, match=r"echo-2_part-phase_MEGRE.json: JSON sidecar missing"):
        load_megre(*find_megre(tmp_path, "sub-01"))
    _write(tmp_path / "ms", tes=(5.0, 10.0))             # milliseconds, not BIDS seconds
    with pytest.raises(InputError, match="must be in seconds"):
        load_megre(*find_megre(tmp_path / "ms", "sub-01"))
    with pytest.raises(InputError, match="no sub-02"):
        find_megre(tmp_path, "sub-02")
