"""``deepmir evaluate`` on constructed derivatives + annotations (and on a simulated cohort)."""

from __future__ import annotations

import cc3d
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from deepmir_tasks.io import save_nifti
from deepmir_tasks.lesions.metrics import lesions_from_labels, match_lesions
from pipelines.cli import main
from helpers.lesions import labelled_volume, oblique_affine, write_pair

SHAPE = (40, 40, 32)
TRUTH = [(1, (10, 10, 10), 1.5), (1, (28, 12, 20), 1.5), (2, (20, 30, 15), 3.0)]


@pytest.fixture
def pair(tmp_path):
    """sub-01: one CMB found (1 mm off), one missed, one false CMB, iron found; sub-02: nothing predicted,
    annotation on a different grid."""
    affine = oblique_affine()
    truth = labelled_volume(SHAPE, TRUTH)
    pred = labelled_volume(SHAPE, [(1, (10, 11, 10), 1.5), (1, (30, 30, 25), 1.2), (2, (20, 30, 15), 3.0)])
    prob = np.where(pred == 1, 0.8, 0.0).astype(np.float32)
    prob[25:35, 25:35, 20:30] *= 0.75  # the false CMB scores 0.6
    pred_dir, truth_dir = write_pair(tmp_path, "01", pred, affine, truth, affine, prob_cmb=prob)
    coarse = affine.copy()
    coarse[:3, :3] *= 2.0
    write_pair(tmp_path, "02", np.zeros(SHAPE, np.uint8), affine,
               labelled_volume((20, 20, 16), [(1, (5, 5, 5), 1.0)]), coarse)
    return pred_dir, truth_dir


def test_evaluate_prints_the_table_and_writes_tsvs(pair, tmp_path, capsys):
    pred_dir, truth_dir = pair
    out = tmp_path / "eval"
    assert main(["evaluate", str(pred_dir), str(truth_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "sensitivity" in printed and "cmb" in printed and "iron" in printed
    per_class = pd.read_csv(out / "per_class.tsv", sep="\t").set_index("label")
    assert tuple(per_class.loc["cmb", ["n_true", "tp", "fp", "fn"]]) == (3, 1, 1, 2)
    assert tuple(per_class.loc["iron", ["n_true", "tp", "fp", "fn"]]) == (1, 1, 0, 0)
    assert per_class.loc["cmb", "fp_per_subject"] == 0.5
    assert per_class.loc["iron", "sensitivity"] == 1.0
    per_subject = pd.read_csv(out / "per_subject.tsv", sep="\t")
    assert sorted(per_subject["participant_id"].unique()) == ["sub-01", "sub-02"]
    froc = pd.read_csv(out / "froc.tsv", sep="\t")
    cmb = froc[(froc["label"] == "cmb") & (froc["participant_id"] == "all")]
    assert cmb["threshold"].tolist() == [0.8, 0.6] and cmb["fp"].tolist() == [0, 1]
    assert cmb["fp_per_subject"].tolist() == [0.0, 0.5]
    own = froc[(froc["label"] == "cmb") & (froc["participant_id"] == "sub-01")]
    assert own["fp_per_subject"].tolist() == [0.0, 1.0] and own["sensitivity"].tolist() == [0.5, 0.5]
    assert (out / "froc.png").stat().st_size > 1000
    assert (out / "detections.tsv").exists() and (out / "evaluation.json").exists()


def test_evaluate_ignores_the_pipeline_cache_under_sourcedata(pair, tmp_path):
    pred_dir, truth_dir = pair
    # the Pydra cache keeps intermediate dsegs of the same subject under OUTPUT_DIR/sourcedata
    cached = pred_dir / "sourcedata" / "deepmir_cache" / "python-0123" / "sub-01_space-T2w_desc-deepmir_dseg.nii.gz"
    save_nifti(np.zeros(SHAPE, np.uint8), oblique_affine(), cached)
    out = tmp_path / "eval_cached"
    assert main(["evaluate", str(pred_dir), str(truth_dir), "--out", str(out)]) == 0
    per_class = pd.read_csv(out / "per_class.tsv", sep="\t").set_index("label")
    assert tuple(per_class.loc["iron", ["n_true", "tp", "fp", "fn"]]) == (1, 1, 0, 0)


def test_evaluate_accepts_a_plain_folder_and_a_subset(pair, tmp_path):
    _, truth_dir = pair
    flat = tmp_path / "flat"
    save_nifti(labelled_volume(SHAPE, TRUTH), oblique_affine(), flat / "sub-01_pred_dseg.nii.gz", dtype=np.uint8)
    out = tmp_path / "eval_flat"
    assert main(["evaluate", str(flat), str(truth_dir), "--participant-label", "sub-01", "--out", str(out),
                 "--tolerance-mm", "3"]) == 0
    per_class = pd.read_csv(out / "per_class.tsv", sep="\t").set_index("label")
    assert (per_class["f1"] == 1.0).all()


def test_sessions_pair_with_session_less_annotations(tmp_path):
    from deepmir_tasks.lesions.evaluate import evaluate_dirs

    affine = oblique_affine()
    truth = labelled_volume(SHAPE, TRUTH)
    pred_dir = tmp_path / "deepmir"
    for ses, lesions in (("1", TRUTH), ("2", TRUTH[:1])):
        save_nifti(labelled_volume(SHAPE, lesions), affine,
                   pred_dir / "sub-01" / f"ses-{ses}" / "anat" / f"sub-01_ses-{ses}_space-T2w_desc-deepmir_dseg.nii.gz",
                   dtype=np.uint8)
    save_nifti(truth, affine, tmp_path / "ann" / "sub-01" / "anat" / "sub-01_space-T2w_dseg.nii.gz", dtype=np.uint8)
    table = evaluate_dirs(pred_dir, tmp_path / "ann", out_dir=tmp_path / "ev").set_index("label")
    assert table.loc["cmb", "n_subjects"] == 2 and table.loc["cmb", "tp"] == 3 and table.loc["cmb", "fn"] == 1
    assert table.loc["iron", "sensitivity"] == 0.5
    per_subject = pd.read_csv(tmp_path / "ev" / "per_subject.tsv", sep="\t")
    assert sorted(per_subject["session_id"].unique()) == ["ses-1", "ses-2"]


def test_evaluate_errors_are_one_line(pair, tmp_path, capsys):
    pred_dir, truth_dir = pair
    assert main(["evaluate", str(pred_dir), str(truth_dir), "--participant-label", "07"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no predicted dseg for sub-07" in err and "\n" not in err
    (truth_dir / "sub-02" / "anat" / "sub-02_space-T2w_dseg.nii.gz").unlink()
    assert main(["evaluate", str(pred_dir), str(truth_dir), "--out", str(tmp_path / "e")]) == 2
    assert "no annotation dseg for sub-02" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "missing"), str(truth_dir)]) == 2
    assert "PRED_DIR is not an existing folder" in capsys.readouterr().err


def _simulated_truth_is_found(subj):
    from deepmir_tasks.lesions import extract_lesions

    dseg = np.asarray(subj.dseg.dataobj)
    affine = subj.dseg.affine
    kept, dropped = extract_lesions(None, None, dseg, affine, None, None, np.asarray(subj.brain_mask.dataobj),
                                    participant_id="01", min_voxels=1, max_cmb_diameter_mm=100.0)
    assert len(dropped) == 0
    # a lesion's centroid lies within half a voxel diagonal of the voxels that carry it
    tolerance = 0.5 * float(np.linalg.norm(np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))) + 0.1
    truth = subj.lesions
    for kind in ("cmb", "iron"):
        want = truth.loc[truth["kind"] == kind, ["x_mm", "y_mm", "z_mm"]].to_numpy(float)
        got = kept.loc[kept["label"] == kind, ["x_mm", "y_mm", "z_mm"]].to_numpy(float)
        m = match_lesions(got, want, tolerance_mm=tolerance)
        assert (m.fn, m.fp) == (0, 0), f"{kind}: {m.fn} missed and {m.fp} extra at {tolerance:.1f} mm"
    return kept


def test_perfect_prediction_from_simulated_truth_finds_every_lesion(small_subject):
    """The truth dseg as a "perfect" prediction: every CMB/iron lesion found at its coordinates."""
    kept = _simulated_truth_is_found(small_subject)
    assert len(kept) == int(small_subject.lesions["kind"].isin(["cmb", "iron"]).sum())


def test_evaluate_on_a_simulated_cohort_against_its_annotations(small_cohort, tmp_path, capsys):
    """The annotations copied as predictions, with one lesion erased from sub-01: exactly one miss."""
    ann = small_cohort / "derivatives" / "annotations"
    pred_dir = tmp_path / "pred"
    erased = None
    for n, truth in enumerate(sorted(ann.glob("sub-*/anat/sub-*_space-T2w_dseg.nii.gz"))):
        sub = truth.name.split("_")[0]
        img = nib.load(truth)
        dseg = np.asarray(img.dataobj).astype(np.uint8)
        if n == 0 and dseg.any():
            first = lesions_from_labels(dseg, np.eye(4)).iloc[0]
            erased = first["label"]
            value = 1 if erased == "cmb" else 2
            comps = cc3d.connected_components((dseg == value).astype(np.uint8), connectivity=26)
            dseg[comps == comps[tuple(np.rint(first[["i", "j", "k"]].to_numpy(float)).astype(int))]] = 0
        save_nifti(dseg, img.affine, pred_dir / sub / "anat" / f"{sub}_space-T2w_desc-deepmir_dseg.nii.gz",
                   dtype=np.uint8)
    out = tmp_path / "eval"
    assert main(["evaluate", str(pred_dir), str(small_cohort), "--out", str(out)]) == 0
    assert "f1" in capsys.readouterr().out
    per_class = pd.read_csv(out / "per_class.tsv", sep="\t").set_index("label")
    assert per_class["n_subjects"].tolist() == [2, 2] and per_class["n_true"].sum() > 0
    assert per_class["fp"].sum() == 0 and per_class["fn"].sum() == (1 if erased else 0)
    if erased:
        assert per_class.loc[erased, "tp"] == per_class.loc[erased, "n_true"] - 1


def test_predictions_in_the_swi_session_are_scored_against_truth_carried_by_its_transform(tmp_path, capsys):
    """A subject run without a T2w (space-swi) is scored in the SWI session's world: the T2w-space
    annotation is carried there by desc-truth_xfm.json; without that file it is refused in one line."""
    import json

    truth = labelled_volume(SHAPE, TRUTH)
    affine = np.eye(4)
    swi_to_t2 = np.eye(4)
    swi_to_t2[:3, 3] = (12.0, -9.0, 6.0)       # 16 mm between the sessions' worlds
    # the same lesions seen in the SWI session: its world is the T2w's moved back by swi_to_t2
    pred_dir, truth_dir = tmp_path / "deepmir", tmp_path / "annotations"
    anat = pred_dir / "sub-01" / "anat"
    save_nifti(truth, np.linalg.inv(swi_to_t2) @ affine, anat / "sub-01_space-swi_desc-deepmir_dseg.nii.gz",
               dtype=np.uint8)
    ann = truth_dir / "sub-01" / "anat"
    save_nifti(truth, affine, ann / "sub-01_space-T2w_dseg.nii.gz", dtype=np.uint8)
    out = tmp_path / "eval"
    assert main(["evaluate", str(pred_dir), str(truth_dir), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "space-swi" in err and "sub-01_desc-truth_xfm.json" in err and "Traceback" not in err
    (ann / "sub-01_desc-truth_xfm.json").write_text(json.dumps({"swi_to_t2": swi_to_t2.tolist()}))
    assert main(["evaluate", str(pred_dir), str(truth_dir), "--out", str(out)]) == 0
    per_class = pd.read_csv(out / "per_class.tsv", sep="\t").set_index("label")
    assert tuple(per_class.loc["cmb", ["n_true", "tp", "fp"]]) == (2, 2, 0)
    assert tuple(per_class.loc["iron", ["n_true", "tp", "fp"]]) == (1, 1, 0)
    assert per_class.loc["cmb", "dice_pooled"] > 0.99
