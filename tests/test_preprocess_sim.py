"""Preprocessing on a small simulated subject, checked against the simulator's truth."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from deepmir_tasks.preprocess.brain import dice

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sim(small_subject, tmp_path_factory):
    """The small simulated subject written to disk (BIDS-like names) plus its truth."""
    d = tmp_path_factory.mktemp("sim_pre")
    files = {}
    for key, name in [("t2", "sub-11_T2w"), ("swi", "sub-11_swi"), ("qsm", "sub-11_Chimap"),
                      ("brain_mask", "brain_mask"), ("t2_clean", "t2_clean"), ("bias_t2", "bias_t2")]:
        files[key] = d / f"{name}.nii.gz"
        nib.save(getattr(small_subject, key), str(files[key]))
    return small_subject, files, d


@pytest.fixture(scope="module")
def t2_n4(sim):
    from deepmir_tasks.preprocess.bias import n4_correct

    subject, files, d = sim
    return n4_correct(files["t2"], d / "t2_n4.nii.gz", bias_file=d / "t2_bias.nii.gz", what="T2w")


@pytest.fixture(scope="module")
def preprocessed(sim):
    from workflows.preprocess import preprocess_subject

    subject, files, d = sim
    return preprocess_subject(files["t2"], files["swi"], files["qsm"], d / "out", allow_resolution=True)


def _brain_points(mask_img, step=3):
    ijk = np.argwhere(np.asarray(mask_img.dataobj) > 0)[::step].T
    return mask_img.affine[:3, :3] @ ijk + mask_img.affine[:3, 3:4]


def _apply(m, pts):
    return m[:3, :3] @ pts + m[:3, 3:4]


def test_n4_removes_the_known_bias(sim, t2_n4):
    subject, files, d = sim
    brain = np.asarray(subject.brain_mask.dataobj) > 0
    clean = subject.t2_clean.get_fdata()[brain]
    before = np.corrcoef(subject.t2.get_fdata()[brain], clean)[0, 1]
    after = np.corrcoef(nib.load(t2_n4).get_fdata()[brain], clean)[0, 1]
    assert after > before


def test_n4_removes_a_strong_synthetic_bias(sim, tmp_path):
    """The clean T2w times a ±35 % linear field: N4 must undo most of it."""
    from deepmir_tasks.preprocess.bias import n4_correct

    subject, files, d = sim
    clean = subject.t2_clean.get_fdata().astype(np.float32)
    i = np.linspace(-1, 1, clean.shape[0])[:, None, None]
    k = np.linspace(-1, 1, clean.shape[2])[None, None, :]
    field = np.broadcast_to(1 + 0.25 * i + 0.1 * k, clean.shape).astype(np.float32)
    biased = tmp_path / "biased.nii.gz"
    nib.save(nib.Nifti1Image(clean * field, subject.t2.affine), str(biased))
    out = n4_correct(biased, tmp_path / "n4.nii.gz", bias_file=tmp_path / "field.nii.gz")
    brain = np.asarray(subject.brain_mask.dataobj) > 0
    before = np.corrcoef((clean * field)[brain], clean[brain])[0, 1]
    after = np.corrcoef(nib.load(out).get_fdata()[brain], clean[brain])[0, 1]
    est = nib.load(tmp_path / "field.nii.gz").get_fdata()
    assert after > before + 0.5 * (1 - before)          # at least half of the damage undone
    assert np.corrcoef(est[brain], field[brain])[0, 1] > 0.8  # measured 0.89


def test_brain_mask_dice_and_mni_affine(sim, t2_n4):
    from deepmir_tasks.preprocess.brain import extract_brain
    from deepmir_tasks.preprocess.template import read_matrix, register_to_template

    subject, files, d = sim
    mni = register_to_template(t2_n4, d / "t2_to_mni.txt")
    mask = extract_brain(t2_n4, d / "mask.nii.gz", t2_to_mni_file=mni)
    truth = np.asarray(subject.brain_mask.dataobj) > 0
    assert dice(np.asarray(nib.load(mask).dataobj) > 0, truth) >= 0.95
    # the affine agrees with the simulator's MNI -> T2w pose to within its non-linear warp
    p = subject.params
    mni_to_t2 = np.eye(4)
    mni_to_t2[:3, :3] = np.asarray(p["head_rotation"]) @ np.diag(p["head_scale"])
    mni_to_t2[:3, 3] = p["head_translation_mm"]
    pts = _brain_points(subject.brain_mask)
    err = np.linalg.norm(_apply(read_matrix(mni), pts) - _apply(np.linalg.inv(mni_to_t2), pts), axis=0)
    assert err.mean() < 2.0 + p["warp_amplitude_mm"]


def test_swi_to_t2_registration_error_is_below_half_a_mm(sim, t2_n4):
    from deepmir_tasks.preprocess.register import register_to_t2, transform_to_ras

    subject, files, d = sim
    tx, qc = register_to_t2(files["swi"], t2_n4, d / "swi.mat", mask_file=files["brain_mask"])
    assert qc["rotation_deg"] < 20 and set(qc["alternatives"]) and all(  # the alignment check passed
        v > qc["mutual_information"] - 0.03 * abs(qc["mutual_information"]) for v in qc["alternatives"].values())
    assert qc["suspect"] is None
    pts_t2 = _brain_points(subject.brain_mask, step=1)
    pts_swi = _apply(np.linalg.inv(subject.swi_to_t2), pts_t2)
    err = np.linalg.norm(_apply(transform_to_ras(tx), pts_swi) - pts_t2, axis=0)
    assert np.linalg.norm(pts_swi - pts_t2, axis=0).mean() > 1.0   # there is motion to recover
    assert err.mean() < 0.5


def _extreme(data, affine, centre, radius_mm, sign):
    """Sign-aware extreme of ``data`` within ``radius_mm`` (+ half a voxel) of a world point."""
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    ijk = np.indices(data.shape).reshape(3, -1)
    world = affine[:3, :3] @ ijk + affine[:3, 3:4]
    near = np.linalg.norm(world - np.asarray(centre)[:, None], axis=0) <= radius_mm + 0.5 * zooms.max()
    vals = data.reshape(-1)[near]
    return float(vals[np.argmax(sign * vals)]) if vals.size else 0.0


def test_qsm_lesion_peaks_survive_resampling(sim, preprocessed, tmp_path):
    """At every CMB, iron deposit and calcification the resampled QSM keeps sign and >= 70 % of peak."""
    from deepmir_tasks.preprocess.resample import resample_to_grid

    subject, files, d = sim
    grid = preprocessed["mask"]
    out = nib.load(resample_to_grid(files["qsm"], grid, tmp_path / "q.nii.gz",
                                    transform_file=preprocessed["swi_to_t2"]))
    qsm = subject.qsm
    t2_to_swi = np.linalg.inv(subject.swi_to_t2)
    les = subject.lesions[subject.lesions.kind.isin(["cmb", "iron", "calcification"])]
    assert len(les) >= 3
    q_native, q_out = qsm.get_fdata(), out.get_fdata()
    for row in les.itertuples():
        c = np.array([row.x_mm, row.y_mm, row.z_mm])
        sign = 1.0 if row.chi_ppm > 0 else -1.0
        native = _extreme(q_native, qsm.affine, _apply(t2_to_swi, c[:, None])[:, 0], row.radius_mm, sign)
        after = _extreme(q_out, out.affine, c, row.radius_mm, sign)
        assert np.sign(native) == sign, row
        assert np.sign(after) == sign and abs(after) >= 0.7 * abs(native), (row.kind, native, after)


def test_preprocess_subject_outputs_share_one_normalised_grid(sim, preprocessed):
    from deepmir_tasks.preprocess.resample import resample_labels

    subject, files, d = sim
    assert set(preprocessed) == {"t2", "swi", "qsm", "mask", "swi_to_t2", "qsm_to_t2", "t2_to_mni", "report"}
    assert preprocessed["t2"].name == "sub-11_space-T2w_desc-preproc_T2w.nii.gz"
    imgs = {k: nib.load(preprocessed[k]) for k in ("t2", "swi", "qsm", "mask")}
    ref = imgs["mask"]
    for img in imgs.values():
        assert img.shape == ref.shape and np.allclose(img.affine, ref.affine)
    # 1 mm isotropic, along the T2w's axes
    np.testing.assert_allclose(np.linalg.norm(ref.affine[:3, :3], axis=0), 1.0, atol=1e-5)
    t2_dirs = subject.t2.affine[:3, :3] / np.linalg.norm(subject.t2.affine[:3, :3], axis=0)
    np.testing.assert_allclose(ref.affine[:3, :3], t2_dirs, atol=1e-5)
    mask = np.asarray(ref.dataobj) > 0
    assert np.asarray(ref.dataobj).dtype == np.uint8
    truth = resample_labels(files["brain_mask"], preprocessed["mask"], d / "truth_grid.nii.gz")
    assert dice(mask, np.asarray(nib.load(truth).dataobj) > 0) >= 0.93
    for k in ("t2", "swi"):
        x = imgs[k].get_fdata()
        q25, q50, q75 = np.percentile(x[mask], [25, 50, 75])
        assert abs(q50) < 1e-3 and abs(q75 - q25 - 1.349) < 1e-2 and np.all(x[~mask] == 0)
    q = imgs["qsm"].get_fdata()
    assert q.min() >= -1.0 and q.max() <= 2.0 and np.all(q[~mask] == 0)
    report = json.loads(preprocessed["report"].read_text())
    assert report["coverage"]["swi"] > 0.99 and report["qsm_transform"].startswith("reused")
    assert set(report["timings_s"]) >= {"n4_t2", "register_swi", "resample", "total"}


def test_preprocess_workflow_runs_end_to_end(sim, preprocessed, tmp_path):
    from workflows.preprocess import PreprocessSubject

    subject, files, d = sim
    wf = PreprocessSubject(t2=files["t2"], swi=files["swi"], qsm=files["qsm"], mask=files["brain_mask"],
                           allow_resolution=True)
    out = wf(worker="debug", cache_root=tmp_path / "cache")
    mask = nib.load(out.mask.fspath)
    # the user's mask was used: it is the truth carried into the working grid
    from deepmir_tasks.preprocess.resample import resample_labels

    truth = resample_labels(files["brain_mask"], out.mask.fspath, tmp_path / "truth.nii.gz")
    assert dice(np.asarray(mask.dataobj) > 0, np.asarray(nib.load(truth).dataobj) > 0) > 0.97
    for name in ("t2", "swi", "qsm"):
        img = nib.load(getattr(out, name).fspath)
        assert img.shape == mask.shape and np.allclose(img.affine, mask.affine)
    report = json.loads(open(out.report.fspath).read())
    assert report["coverage"]["qsm"] > 0.99
    from deepmir_tasks.preprocess.template import read_matrix

    np.testing.assert_allclose(read_matrix(out.t2_to_mni.fspath),
                               read_matrix(preprocessed["t2_to_mni"]), atol=1e-3)


@pytest.mark.parametrize("change", ["flip", "rotate_x", "rotate_z"])
def test_a_t2w_header_flipped_or_rotated_against_the_swi_is_caught(sim, t2_n4, change):
    """A T2w whose header alone is mirrored, or rotated 30°, does not line up with the SWI: a
    rotation beyond 20° fails naming the SWI; a mirrored header (voxel axes of the other
    handedness) that fits better mirrored fails naming the T2w; any other better fit in another
    pose is a warning the report shows and the tables flag (it also fires, rarely, on valid data)."""
    from deepmir_tasks.io import InputError
    from deepmir_tasks.preprocess.checks import input_flags
    from deepmir_tasks.preprocess.register import register_to_t2
    from deepmir_tasks.preprocess.regqc import _rotation_about

    subject, files, d = sim
    mask = subject.brain_mask
    centre = _brain_points(mask, step=1).mean(axis=1)
    if change == "flip":
        moved = _rotation_about(0, 0.0, centre)
        moved[0] *= -1
        moved[0, 3] += 2 * centre[0]
    else:
        moved = _rotation_about(0 if change == "rotate_x" else 2, 30.0, centre)
    t2 = nib.load(t2_n4)
    t2_file, mask_file = d / f"t2_{change}.nii.gz", d / f"mask_{change}.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(t2.dataobj), moved @ t2.affine), str(t2_file))
    nib.save(nib.Nifti1Image(np.asarray(mask.dataobj).astype(np.uint8), moved @ mask.affine), str(mask_file))
    try:
        _, qc = register_to_t2(files["swi"], t2_file, d / f"swi_{change}.mat", mask_file=mask_file)
    except InputError as err:
        if change == "flip":  # mirrored handedness and a better mirrored fit: the T2w is named
            assert "T2w header is mirrored against the SWI" in str(err) and err.path == str(t2_file)
        else:
            assert "rotation to meet the T2w" in str(err) and err.path == str(files["swi"])
        assert "\n" not in str(err)
        return
    assert change not in ("rotate_z", "flip"), qc         # recovered by registration: the rotation limit
    assert qc["suspect"] and ("mirrored left-right" if change == "flip" else "rotated") in qc["suspect"], qc
    assert input_flags({"registration_qc": {"swi": qc}}) == "registration_suspect"


def test_an_swi_stored_in_the_other_voxel_order_is_not_a_flip(sim, t2_n4):
    """Voxel axes of the other handedness with the header saying so (the same world): valid data,
    registered as usual, neither failed nor flagged."""
    from deepmir_tasks.preprocess.register import register_to_t2

    _, files, d = sim
    swi = nib.load(files["swi"])
    n = swi.shape[0]
    reorder = np.array([[-1.0, 0, 0, n - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    swi_file = d / "swi_reordered.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(swi.dataobj)[::-1].copy(), swi.affine @ reorder), str(swi_file))
    _, qc = register_to_t2(swi_file, t2_n4, d / "swi_reordered.mat", mask_file=files["brain_mask"])
    assert qc["handedness_differs"] and qc["suspect"] is None, qc


def test_the_graph_names_the_users_t2w_when_its_header_is_mirrored(sim):
    """Through the preprocessing graph, where the check sees the bias-corrected copy of the T2w,
    the failure still names the user's file."""
    from deepmir_tasks.io import InputError
    from workflows.preprocess import preprocess_subject

    subject, files, d = sim
    t2 = nib.load(files["t2"])
    centre = _brain_points(subject.brain_mask, step=1).mean(axis=1)
    mirror = np.diag([-1.0, 1.0, 1.0, 1.0])
    mirror[0, 3] = 2 * centre[0]
    (d / "flip").mkdir(exist_ok=True)
    t2_file = d / "flip" / "sub-11_T2w.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(t2.dataobj), mirror @ t2.affine), str(t2_file))
    with pytest.raises(InputError) as err:
        preprocess_subject(t2_file, files["swi"], files["qsm"], d / "out_flip", allow_resolution=True)
    assert err.value.path == str(t2_file) and "T2w header is mirrored against the SWI" in str(err.value)
