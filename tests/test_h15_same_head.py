"""An SWI from another head (issue 15): the SWI must be dark where its own QSM is paramagnetic.

Small synthetic heads (tests/helpers/preprocess.py) with sparse paramagnetic blobs (veins, nuclei,
lesions in miniature) that are bright on the QSM and dark on the SWI of the same head; another
seed gives another head's blobs. The SWI of another head registers well to the T2w (same outline),
so only the agreement with the QSM tells it apart.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from deepmir_tasks.io import InputError
from deepmir_tasks.preprocess.register import register_to_t2
from deepmir_tasks.preprocess.regqc import MIN_SWI_DARKENING, check_same_head, swi_qsm_agreement

from helpers.preprocess import make_head_image, save

SHAPE, ZOOMS = (64, 72, 56), (1.6, 1.6, 1.6)


def _subject(d, seed: int, name: str) -> dict:
    """T2w, SWI, QSM and brain mask of one head whose paramagnetic blobs are drawn with ``seed``."""
    data, aff, brain = make_head_image(SHAPE, ZOOMS, seed=0)
    rng = np.random.default_rng(seed)
    blobs = ndimage.gaussian_filter(rng.normal(size=SHAPE), 1.0)
    blobs = np.clip(blobs / blobs.std() - 1.5, 0, None)
    inner = ndimage.binary_erosion(brain, iterations=2)
    qsm = np.where(inner, 0.15 * blobs + 0.01 * rng.normal(size=SHAPE), 0)
    swi = np.abs(data * np.exp(-np.where(brain, blobs, 0)) + 0.01 * rng.normal(size=SHAPE))
    return {"t2": save(data, aff, d / f"{name}_T2w.nii.gz"), "swi": save(swi, aff, d / f"{name}_swi.nii.gz"),
            "qsm": save(qsm, aff, d / f"{name}_Chimap.nii.gz"), "mask": save(brain, aff, d / f"{name}_mask.nii.gz")}


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    d = tmp_path_factory.mktemp("heads")
    return _subject(d, 1, "sub-01"), _subject(d, 2, "sub-02")


def _register(subject, swi, tmp_path):
    swi_tx, _ = register_to_t2(swi, subject["t2"], tmp_path / "swi.mat", mask_file=subject["mask"], check=False)
    return register_to_t2(subject["qsm"], subject["t2"], tmp_path / "qsm.mat", mask_file=subject["mask"],
                          same_session_file=swi, same_session_transform=swi_tx, what="QSM")


def test_a_subjects_own_swi_and_qsm_agree(heads, tmp_path):
    own = heads[0]
    _, qc = _register(own, own["swi"], tmp_path)
    assert qc["shared_with"] == "sub-01_swi.nii.gz"
    assert qc["swi_contrast_at_qsm_peaks"] < MIN_SWI_DARKENING - 1, qc


def test_an_swi_of_another_head_fails_with_one_line_naming_it(heads, tmp_path):
    own, other = heads
    with pytest.raises(InputError) as err:
        _register(own, other["swi"], tmp_path)
    msg = str(err.value)
    assert err.value.path == str(other["swi"]) and "\n" not in msg
    assert "another head" in msg and "sub-01_Chimap.nii.gz" in msg and f"{MIN_SWI_DARKENING:+.1f}" in msg


@pytest.mark.slow
def test_a_qsm_on_a_grid_of_its_own_is_compared_by_its_transform_or_headers(heads, tmp_path):
    """A QSM cropped onto its own grid and registered on its own: the check still measures, through
    both transforms or by the headers, and passes its own SWI and refuses another head's."""
    from deepmir_tasks.preprocess.register import register_rigid

    own, other = heads
    img = nib.load(own["qsm"])
    crop = tmp_path / "sub-01_Chimap.nii.gz"
    shifted = img.affine.copy()
    shifted[:3, 3] += img.affine[:3, :3] @ [3, 3, 3]
    # a grid of its own that is not the SWI's scanner space for same_space (rotated 5 degrees)
    from helpers.preprocess import rotation

    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[3:-3, 3:-3, 3:-3], rotation((0, 0, 5)) @ shifted), str(crop))
    for swi, agrees in ((own["swi"], True), (other["swi"], False)):
        swi_tx = register_rigid(swi, own["t2"], tmp_path / "swi.mat", fixed_mask_file=own["mask"])
        qsm_tx = register_rigid(crop, own["t2"], tmp_path / "qsm.mat", fixed_mask_file=own["mask"])
        if agrees:
            qc = check_same_head(swi, crop, own["mask"], swi_tx, qsm_tx)
            assert qc["swi_contrast_at_qsm_peaks"] < MIN_SWI_DARKENING - 1, qc
        else:
            with pytest.raises(InputError, match="another head"):
                check_same_head(swi, crop, own["mask"], swi_tx, qsm_tx)


def test_too_little_overlap_is_not_measured(heads, tmp_path):
    own = heads[0]
    img = nib.load(own["qsm"])
    far = img.affine.copy()
    far[:3, 3] += 400.0
    moved = tmp_path / "far_Chimap.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), far), str(moved))
    assert swi_qsm_agreement(own["swi"], moved)["swi_contrast_at_qsm_peaks"] is None


@pytest.mark.slow
def test_deepmir_run_fails_a_subject_given_another_heads_swi_naming_the_swi(copy_cohort, tmp_path):
    """End to end: sub-01's folder holds sub-02's SWI; sub-01 fails with one line naming its SWI."""
    import json
    import shutil

    from pipelines.run import run_cohort

    swi = copy_cohort / "sub-01" / "anat" / "sub-01_swi.nii.gz"
    shutil.copy(copy_cohort / "sub-02" / "anat" / "sub-02_swi.nii.gz", swi)
    (copy_cohort / "sub-02" / "anat" / "sub-02_T2w.nii.gz").write_bytes(b"")  # keep the run short
    result = run_cohort(copy_cohort, tmp_path / "out", worker="debug", cache_dir=tmp_path / "cache",
                        group=False, allow_resolution=True)
    reason = result.failed["sub-01"]
    assert reason.startswith(f"{swi}: SWI is not darker where the QSM sub-01_Chimap.nii.gz is paramagnetic"), reason
    assert "another head" in reason and "\n" not in reason
    status = json.loads((tmp_path / "out" / "logs" / "sub-01_status.json").read_text())
    assert status["reason"] == reason


@pytest.mark.slow
def test_a_0p4_mm_swi_and_qsm_register_and_pass_the_check(heads, tmp_path):
    """A 0.4 mm SWI and QSM (a reduced field of view: the synthetic head, 256 x 288 x 224 voxels)
    register to the T2w and pass the same-head check; the whole-pipeline run of a 600 x 600 x 400
    SWI is in the report of issue 15 (6 min, 6.3 GB)."""
    from deepmir_tasks.preprocess.register import transform_to_ras

    own, other = heads
    fine = {}
    for key, src in (("swi", own["swi"]), ("qsm", own["qsm"]), ("other_swi", other["swi"])):
        img = nib.load(src)
        data = ndimage.zoom(np.asarray(img.dataobj, np.float32), 4, order=1, mode="nearest")
        aff = img.affine.copy()
        aff[:3, :3] /= 4
        aff[:3, 3] += img.affine[:3, :3] @ np.full(3, -0.375)   # same field of view, voxel edges kept
        fine[key] = save(data, aff, tmp_path / f"fine_{key}.nii.gz")
    assert nib.load(fine["swi"]).shape == (256, 288, 224)
    swi_tx, _ = register_to_t2(fine["swi"], own["t2"], tmp_path / "swi.mat", mask_file=own["mask"], check=False)
    np.testing.assert_allclose(transform_to_ras(swi_tx)[:3, 3], 0, atol=1.0)     # the same head, unmoved
    _, qc = register_to_t2(fine["qsm"], own["t2"], tmp_path / "qsm.mat", mask_file=own["mask"],
                           same_session_file=fine["swi"], same_session_transform=swi_tx, what="QSM")
    assert qc["swi_contrast_at_qsm_peaks"] < MIN_SWI_DARKENING - 1, qc
    with pytest.raises(InputError, match="another head"):
        register_to_t2(fine["qsm"], own["t2"], tmp_path / "qsm2.mat", mask_file=own["mask"],
                       same_session_file=fine["other_swi"], same_session_transform=swi_tx, what="QSM")
