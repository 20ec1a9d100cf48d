"""A QSM without an SWI: aligned to the T2w by its header or by its brain support, checked against
the simulator's true transform between the two sessions."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from deepmir_tasks.io import InputError
from deepmir_tasks.preprocess.reference import align_qsm
from deepmir_tasks.preprocess.register import transform_to_ras


@pytest.fixture(scope="module")
def files(small_subject, tmp_path_factory):
    d = tmp_path_factory.mktemp("qsm_support")
    s = small_subject
    out = {}
    for key in ("t2", "qsm", "brain_mask"):
        out[key] = d / f"{key}.nii.gz"
        nib.save(getattr(s, key), out[key])
    # the same QSM with its header carried into the T2w's scanner space (one session)
    out["qsm_same"] = d / "qsm_same.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(s.qsm.dataobj), s.swi_to_t2 @ s.qsm.affine), out["qsm_same"])
    # a map whose support is a small block: not this head's brain
    block = np.zeros(s.qsm.shape, np.float32)
    block[20:30, 20:30, 10:18] = 0.05
    out["qsm_block"] = d / "qsm_block.nii.gz"
    nib.save(nib.Nifti1Image(block, s.qsm.affine), out["qsm_block"])
    return s, out, d


def _brain_points(s):
    ijk = np.argwhere(np.asarray(s.brain_mask.dataobj) > 0).T
    return s.brain_mask.affine[:3, :3] @ ijk + s.brain_mask.affine[:3, 3:4]


def _apply(m, pts):
    return m[:3, :3] @ pts + m[:3, 3:4]


def test_a_qsm_from_another_session_is_registered_by_its_brain_support(files):
    s, f, d = files
    tx, qc = align_qsm(f["qsm"], f["t2"], f["brain_mask"], d / "q.mat")
    pts_t2 = _brain_points(s)
    pts_qsm = _apply(np.linalg.inv(s.swi_to_t2), pts_t2)       # the QSM lies in the SWI's session
    assert np.linalg.norm(pts_qsm - pts_t2, axis=0).mean() > 3.0  # the header alone is mm off
    err = np.linalg.norm(_apply(transform_to_ras(tx), pts_qsm) - pts_t2, axis=0)
    assert qc["aligned_by"] == "support" and qc["support_dice"]["support"] >= qc["support_dice"]["header"]
    assert qc["displacement_mm"] > 3.0 and err.mean() < 1.0


def test_a_qsm_in_the_t2w_scanner_space_keeps_its_header(files):
    s, f, d = files
    tx, qc = align_qsm(f["qsm_same"], f["t2"], f["brain_mask"], d / "q_same.mat")
    assert qc["aligned_by"] == "header" and qc["displacement_mm"] < 1.5
    np.testing.assert_allclose(transform_to_ras(tx), np.eye(4), atol=1e-6)


def test_a_qsm_whose_support_fits_no_way_is_refused_naming_it(files):
    s, f, d = files
    with pytest.raises(InputError) as err:
        align_qsm(f["qsm_block"], f["t2"], f["brain_mask"], d / "q_block.mat")
    assert err.value.path == str(f["qsm_block"]) and "brain support does not fit" in str(err.value)
    assert not (d / "q_block.mat").exists()


@pytest.mark.slow
def test_preprocessing_t2w_and_qsm_registers_the_qsm_and_says_so(files):
    from workflows.preprocess import preprocess_subject

    s, f, d = files
    out = preprocess_subject(f["t2"], None, f["qsm"], d / "pre", allow_resolution=True)
    report = json.loads(out["report"].read_text())
    assert report["qsm_transform"].startswith("registered by its brain support")
    assert report["registration_qc"]["qsm"]["aligned_by"] == "support"
    pts_t2 = _brain_points(s)
    pts_qsm = _apply(np.linalg.inv(s.swi_to_t2), pts_t2)
    err = np.linalg.norm(_apply(transform_to_ras(out["qsm_to_t2"]), pts_qsm) - pts_t2, axis=0)
    assert err.mean() < 1.0
