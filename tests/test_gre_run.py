"""``deepmir run`` on a subject with raw multi-echo GRE instead of an SWI and a QSM (issue 14)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from deepmir_tasks.bids_files import find_subjects
from pipelines.run import run_cohort

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gre_cohort(tmp_path_factory):
    """sub-01: T2w + raw 4-echo GRE only (3 mm, scanner-integer phase); its truth."""
    from deepmir_tasks.simulate.megre import simulate_megre, write_megre_bids

    root = tmp_path_factory.mktemp("gre_bids")
    sim = simulate_megre(3, voxel_mm=3.0)
    paths = write_megre_bids(sim, root, phase_units="scanner")
    (root / "dataset_description.json").write_text(json.dumps({"Name": "gre", "BIDSVersion": "1.9.0"}))
    # a T2w of the same head on the same grid (the first echo's magnitude stands in for it)
    nib.save(nib.Nifti1Image(sim.magnitude[..., 0], sim.affine), str(root / "sub-01" / "anat" / "sub-01_T2w.nii.gz"))
    return root, sim, paths


def test_gre_subject_is_found_with_swi_and_qsm_computable(gre_cohort):
    root, _, paths = gre_cohort
    (subj,) = find_subjects(root)
    assert subj.missing == [] and subj.files["swi"] is None and subj.files["qsm"] is None
    assert list(subj.megre[0]) == paths["mag"] and list(subj.megre[1]) == paths["phase"]


def test_incomplete_gre_is_that_subject_s_problem(gre_cohort, tmp_path):
    import shutil

    root, _, _ = gre_cohort
    copy = tmp_path / "bids"
    shutil.copytree(root, copy)
    next((copy / "sub-01" / "anat").glob("*echo-2_part-phase_MEGRE.nii.gz")).unlink()
    (subj,) = find_subjects(copy)
    assert subj.megre == () and "4 magnitude but 3 phase MEGRE files" in subj.problems[0]


def test_run_computes_qsm_and_swi_from_gre_and_publishes_them(gre_cohort, tmp_path):
    root, sim, _ = gre_cohort
    result = run_cohort(root, tmp_path / "out", worker="debug", cache_dir=tmp_path / "cache",
                        allow_resolution=True, group=False)
    assert result.ok, result.failed
    files = result.subjects[0].files
    assert files["gre_qsm"].name == "sub-01_desc-deepmir_Chimap.nii.gz"
    assert files["gre_swi"].name == "sub-01_desc-deepmir_swi.nii.gz"
    chi = np.asarray(nib.load(files["gre_qsm"]).dataobj)
    swi = np.asarray(nib.load(files["gre_swi"]).dataobj)
    assert chi.shape == sim.chi_ppm.shape and np.isfinite(chi).all() and np.isfinite(swi).all()
    q = (chi != 0) & sim.brain_mask
    assert np.corrcoef(chi[q], sim.chi_ppm[q])[0, 1] > 0.7          # the susceptibility, not noise
    for les in sim.lesions:                                          # signs: CMB +, calcification -
        i, j, k = les["centre_vox"]
        near = chi[i - 1:i + 2, j - 1:j + 2, k - 1:k + 2]
        assert (near.max() > 0.1) if les["kind"] == "cmb" else (near.min() < -0.05), les
    report = json.loads(files["preproc_report"].read_text())
    assert report["qsm_transform"].startswith("reused the SWI transform")   # both on the GRE grid
    assert (tmp_path / "out" / "sub-01" / "anat" / "sub-01_space-T2w_desc-deepmir_lesions.tsv").exists()
