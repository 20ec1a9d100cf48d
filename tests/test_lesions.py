"""Per-lesion extraction, MARS regions and cohort tables on constructed cases."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nibabel.affines import apply_affine

from deepmir_tasks.io import InputError, save_nifti
from deepmir_tasks.lesions import (
    LESION_COLUMNS,
    combine_tables,
    extract_lesions,
    extract_lesions_files,
)
from deepmir_tasks.lesions.extract import qsm_peak_shape
from deepmir_tasks.lesions.regions import REGIONS, classify_mni, classify_world
from helpers.lesions import ball, labelled_volume, oblique_affine

SHAPE = (40, 40, 32)


def _maps(shape=SHAPE):
    rng = np.random.default_rng(0)
    return (np.zeros(shape, np.float32), np.zeros(shape, np.float32),
            rng.normal(0.0, 0.005, shape).astype(np.float32), rng.normal(0.0, 1.0, shape).astype(np.float32))


def test_measures_and_world_coordinates_follow_an_oblique_affine():
    affine = oblique_affine()
    prob_cmb, prob_iron, qsm, swi = _maps()
    centres = [(10, 12, 9), (27, 25, 20)]
    for c in centres:
        lesion = ball(SHAPE, c, 1.8)
        prob_cmb[lesion] = 0.9
        qsm[lesion] = 0.25
        swi[lesion] -= 5.0
    kept, dropped = extract_lesions(prob_cmb, None, None, affine, qsm, swi, None, participant_id="01")
    assert list(kept.columns) == [c for c in LESION_COLUMNS if c != "session_id"]
    assert len(kept) == 2 and len(dropped) == 0
    assert (kept["participant_id"] == "sub-01").all() and (kept["label"] == "cmb").all()
    ijk = kept[["i", "j", "k"]].to_numpy(float)
    np.testing.assert_allclose(ijk, np.asarray(centres, float), atol=1e-6)
    np.testing.assert_allclose(kept[["x_mm", "y_mm", "z_mm"]].to_numpy(float), apply_affine(affine, ijk),
                               atol=1e-6)
    n = int(ball(SHAPE, centres[0], 1.8).sum())
    voxel_mm3 = abs(np.linalg.det(affine[:3, :3]))
    row = kept.iloc[0]
    assert row["n_voxels"] == n
    assert row["volume_mm3"] == pytest.approx(n * voxel_mm3)
    assert row["diameter_mm"] == pytest.approx((6 * n * voxel_mm3 / np.pi) ** (1 / 3))
    assert row["prob_max"] == pytest.approx(0.9) and row["prob_mean"] == pytest.approx(0.9)
    assert row["qsm_mean_ppm"] == pytest.approx(0.25) and row["qsm_max_ppm"] == pytest.approx(0.25)
    # dark on SWI against noise of sd 1: the shell contrast is about 5 standard deviations
    assert 3.0 < row["swi_contrast"] < 8.0
    assert (kept["region"] == "n/a").all()  # no T2w->MNI affine given


def test_negative_qsm_candidate_is_dropped_as_calcification():
    prob_cmb, prob_iron, qsm, swi = _maps()
    calc, bleed = ball(SHAPE, (10, 10, 10), 1.5), ball(SHAPE, (30, 30, 20), 1.5)
    prob_cmb[calc | bleed] = 0.95
    qsm[calc] = -0.15
    qsm[bleed] = 0.3
    prob_iron[ball(SHAPE, (10, 30, 10), 2.0)] = 0.9
    qsm[ball(SHAPE, (10, 30, 10), 2.0)] = -0.05
    kept, dropped = extract_lesions(prob_cmb, prob_iron, None, np.eye(4), qsm, swi, participant_id="01")
    assert kept[["label", "i"]].values.tolist() == [["cmb", 30.0]]
    assert sorted(dropped["label"]) == ["cmb", "iron"]
    assert (dropped["reason"] == "negative_qsm").all()
    assert (dropped["qsm_mean_ppm"] < 0).all()
    # with the rule relaxed the same candidates are kept
    kept2, _ = extract_lesions(prob_cmb, prob_iron, None, np.eye(4), qsm, swi, participant_id="01",
                               qsm_min_ppm=-1.0)
    assert len(kept2) == 3


def test_oversized_cmb_is_flagged_not_kept_but_iron_of_that_size_is_kept():
    prob_cmb, prob_iron, qsm, swi = _maps()
    big = ball(SHAPE, (20, 20, 16), 6.0)  # 13 mm across at 1 mm voxels
    prob_cmb[big] = 0.9
    qsm[big] = 0.2
    kept, dropped = extract_lesions(prob_cmb, None, None, np.eye(4), qsm, swi, participant_id="01")
    assert len(kept) == 0
    assert dropped["reason"].tolist() == ["too_large_for_cmb"]
    assert dropped["diameter_mm"].iloc[0] > 10.0
    # the same blob as iron is a valid (large) iron deposit
    kept, dropped = extract_lesions(None, prob_cmb, None, np.eye(4), qsm, swi, participant_id="01")
    assert kept["label"].tolist() == ["iron"] and len(dropped) == 0
    # an elongated CMB candidate, small in volume but 14 mm long, is too large as well
    prob_cmb[:] = 0
    prob_cmb[10:24, 20, 16] = 0.9
    kept, dropped = extract_lesions(prob_cmb, None, None, np.eye(4), qsm, swi, participant_id="01")
    assert len(kept) == 0 and dropped["reason"].tolist() == ["too_large_for_cmb"]


def test_small_and_outside_mask_candidates_are_dropped():
    prob_cmb, prob_iron, qsm, swi = _maps()
    qsm[:] = 0.1
    prob_cmb[5, 5, 5] = 0.9                       # one voxel
    prob_cmb[ball(SHAPE, (30, 30, 25), 1.5)] = 0.9  # outside the mask
    prob_cmb[ball(SHAPE, (15, 20, 12), 1.5)] = 0.9  # kept
    mask = np.zeros(SHAPE, np.uint8)
    mask[:, :, :20] = 1
    kept, dropped = extract_lesions(prob_cmb, None, None, np.eye(4), qsm, swi, mask, participant_id="01")
    assert kept[["i", "j", "k"]].values.tolist() == [[15.0, 20.0, 12.0]]
    assert dict(zip(dropped["i"], dropped["reason"])) == {5.0: "too_small", 30.0: "outside_mask"}


def test_cmb_candidate_on_a_vein_is_dropped_as_vein_like_and_a_microbleed_is_kept():
    prob_cmb, prob_iron, qsm, swi = _maps()
    qsm[2:38, 20:22, 10:12] = 0.3              # a vein: a paramagnetic tube 2 mm wide, 36 mm long
    bleed = ball(SHAPE, (20, 8, 24), 1.2)
    qsm[bleed] = 0.5
    prob_cmb[18:21, 20:22, 10:12] = 0.9        # the network fires on a short stretch of the vein
    prob_cmb[bleed] = 0.9
    kept, dropped = extract_lesions(prob_cmb, None, None, np.eye(4), qsm, swi, participant_id="01")
    assert kept[["i", "j", "k"]].values.tolist() == [[20.0, 8.0, 24.0]]
    assert kept["qsm_extent_mm"].iloc[0] < 3.0 and kept["qsm_elongation"].iloc[0] < 1.5
    assert dropped["reason"].tolist() == ["vein_like"]
    assert dropped["qsm_extent_mm"].iloc[0] > 6.0 and dropped["qsm_elongation"].iloc[0] > 3.0
    # the rule switched off keeps both; an iron candidate is tested for elongation only
    kept2, _ = extract_lesions(prob_cmb, None, None, np.eye(4), qsm, swi, participant_id="01",
                               max_cmb_qsm_extent_mm=None, max_cmb_qsm_elongation=None)
    assert len(kept2) == 2
    kept3, dropped3 = extract_lesions(None, prob_cmb, None, np.eye(4), qsm, swi, participant_id="01")
    assert kept3["label"].tolist() == ["iron"] and dropped3["reason"].tolist() == ["vein_like"]
    kept4, _ = extract_lesions(None, prob_cmb, None, np.eye(4), qsm, swi, participant_id="01",
                               max_iron_qsm_elongation=None)
    assert kept4["label"].tolist() == ["iron", "iron"]


def test_microbleed_inside_an_iron_rich_nucleus_is_measured_against_the_nucleus():
    prob_cmb, prob_iron, qsm, swi = _maps()
    qsm[ball(SHAPE, (20, 20, 16), 14.0)] = 0.25  # a nucleus brighter than half the bleed's peak
    bleed = ball(SHAPE, (22, 19, 15), 1.0)
    qsm[bleed] = 0.45
    prob_cmb[bleed] = 0.9
    kept, dropped = extract_lesions(prob_cmb, None, None, np.eye(4), qsm, swi, participant_id="01")
    assert len(kept) == 1 and len(dropped) == 0
    assert kept["qsm_extent_mm"].iloc[0] <= 1.0 + 1e-6  # the bleed, measured from its centre
    # (half the bleed's peak, 0.225 ppm, is below the nucleus: measured against zero the region
    # would have been the whole nucleus, 28 mm across, and the bleed dropped as vein-like)
    # a flat QSM has no peak to measure
    assert np.isnan(qsm_peak_shape(np.full(SHAPE, 0.1, np.float32), (5, 5, 5), (1, 1, 1))[0])


def test_low_probability_rule_per_class():
    prob_cmb, prob_iron, qsm, swi = _maps()
    weak, strong, iron = ball(SHAPE, (10, 10, 10), 1.5), ball(SHAPE, (30, 30, 20), 1.5), ball(SHAPE, (10, 30, 10), 2.0)
    prob_cmb[weak], prob_cmb[strong], prob_iron[iron] = 0.7, 0.99, 0.7
    qsm[weak | strong | iron] = 0.3
    kept, dropped = extract_lesions(prob_cmb, prob_iron, None, np.eye(4), qsm, swi, participant_id="01",
                                    min_prob_max={"cmb": 0.95, "iron": 0.6})
    assert kept[["label", "i"]].values.tolist() == [["cmb", 30.0], ["iron", 10.0]]
    assert dropped[["label", "i", "reason"]].values.tolist() == [["cmb", 10.0, "low_probability"]]


def test_threshold_and_class_overlap():
    prob_cmb, prob_iron, qsm, swi = _maps()
    qsm[:] = 0.1
    lesion = ball(SHAPE, (20, 20, 16), 2.0)
    prob_cmb[lesion] = 0.55
    prob_iron[lesion] = 0.7
    kept, _ = extract_lesions(prob_cmb, prob_iron, None, np.eye(4), qsm, swi, participant_id="01")
    assert kept["label"].tolist() == ["iron"]  # above threshold for both: the more probable class
    kept, _ = extract_lesions(prob_cmb, prob_iron, None, np.eye(4), qsm, swi, participant_id="01",
                              threshold=0.75)
    assert len(kept) == 0


def test_26_connectivity_joins_diagonal_voxels():
    prob_cmb, _, qsm, swi = _maps()
    qsm[:] = 0.1
    for d in range(4):
        prob_cmb[10 + d, 10 + d, 10 + d] = 0.9
    kept, _ = extract_lesions(prob_cmb, None, None, np.eye(4), qsm, swi, participant_id="01")
    assert kept["n_voxels"].tolist() == [4]


def test_empty_maps_give_empty_tables_with_the_columns():
    prob_cmb, prob_iron, qsm, swi = _maps()
    kept, dropped = extract_lesions(prob_cmb, prob_iron, None, np.eye(4), qsm, swi, participant_id="sub-02",
                                    session_id="1")
    assert len(kept) == 0 and len(dropped) == 0
    assert list(kept.columns) == list(LESION_COLUMNS)
    assert list(dropped.columns) == list(LESION_COLUMNS) + ["reason"]


@pytest.mark.parametrize("point,region", [
    ((25, 2, 1), "deep"), ((-25, 2, 1), "deep"), ((-11, -18, 7), "deep"),          # putamen, thalamus
    ((0, -25, -30), "infratentorial"), ((25, -65, -35), "infratentorial"),           # pons, cerebellum
    ((-40, -60, -40), "infratentorial"), ((0, -40, -55), "infratentorial"),        # medulla
    ((15, -100, 5), "lobar-occipital"), ((-15, -98, 0), "lobar-occipital"),         # occipital poles
    ((20, 30, 55), "lobar-frontal"), ((-40, -32, 55), "lobar-parietal"),
    ((60, -20, 5), "lobar-temporal"), ((28, -22, -12), "lobar-temporal"),           # STG, hippocampus
    ((-38, 0, 5), "lobar-insula"), ((25, -10, 35), "deep"),                         # centrum semiovale
])
def test_mars_regions_in_mni_space(point, region):
    assert classify_mni(point) == [region]


def test_regions_through_a_world_to_mni_affine_and_without_one():
    shift = np.eye(4)
    shift[:3, 3] = [5.0, -10.0, 3.0]  # subject world = MNI + (-5, 10, -3)
    pts = np.array([[25, 2, 1], [15, -100, 5], [0, -25, -30]], float) - shift[:3, 3]
    assert classify_world(pts, shift) == ["deep", "lobar-occipital", "infratentorial"]
    assert classify_world(pts, None) == ["n/a"] * 3
    assert set(classify_mni(np.random.default_rng(1).uniform(-90, 90, (200, 3)))) <= set(REGIONS)


def test_importing_regions_reads_no_template():
    code = ("import deepmir_tasks.lesions as L, deepmir_tasks.lesions.regions as r;"
            "print(r._atlas.cache_info().currsize)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"


def _write_subject(tmp_path, affine, *, with_lesions=True):
    prob_cmb, prob_iron, qsm, swi = _maps()
    if with_lesions:
        prob_cmb[ball(SHAPE, (12, 12, 10), 1.5)] = 0.8
        prob_iron[ball(SHAPE, (25, 25, 20), 2.5)] = 0.9
        qsm[prob_cmb + prob_iron > 0] = 0.2
        prob_cmb[ball(SHAPE, (30, 10, 10), 1.5)] = 0.8
        qsm[ball(SHAPE, (30, 10, 10), 1.5)] = -0.2
    files = {}
    for name, data in (("pc", prob_cmb), ("pi", prob_iron), ("q", qsm), ("s", swi)):
        files[name] = save_nifti(data, affine, tmp_path / f"{name}.nii.gz")
    files["m"] = save_nifti(np.ones(SHAPE, np.uint8), affine, tmp_path / "m.nii.gz")
    return files


def test_extract_lesions_files_writes_bids_tables(tmp_path):
    affine = oblique_affine()
    f = _write_subject(tmp_path / "in", affine)
    xfm = tmp_path / "t2_to_mni.txt"
    np.savetxt(xfm, np.eye(4))
    out = extract_lesions_files(f["pc"], f["pi"], None, f["q"], f["s"], f["m"], tmp_path / "out", "01",
                                session_id="pre", t2_to_mni=xfm)
    assert out["lesions"].name == "sub-01_ses-pre_space-T2w_desc-deepmir_lesions.tsv"
    assert out["dropped"].name == "sub-01_ses-pre_space-T2w_desc-dropped_lesions.tsv"
    assert out["summary"].name == "sub-01_ses-pre_space-T2w_desc-deepmir_summary.tsv"
    lesions = pd.read_csv(out["lesions"], sep="\t", dtype={"participant_id": str, "session_id": str})
    assert list(lesions.columns) == list(LESION_COLUMNS)
    assert lesions["label"].tolist() == ["cmb", "iron"] and (lesions["session_id"] == "ses-pre").all()
    assert set(lesions["region"]) <= set(REGIONS)
    sidecar = json.loads(out["lesions_json"].read_text())
    assert set(sidecar) == set(LESION_COLUMNS)
    assert all("Description" in v for v in sidecar.values())
    assert sidecar["volume_mm3"]["Units"] == "mm^3" and sidecar["x_mm"]["Units"] == "mm"
    dropped = pd.read_csv(out["dropped"], sep="\t")
    assert dropped["reason"].tolist() == ["negative_qsm"]
    # the dseg holds the kept lesions only (not the dropped calcification)
    import nibabel as nib

    dseg = np.asarray(nib.load(out["dseg"]).dataobj)
    assert out["dseg"].name == "sub-01_ses-pre_space-T2w_desc-deepmir_dseg.nii.gz"
    assert int((dseg == 1).sum()) == lesions["n_voxels"].iloc[0] and int((dseg == 2).sum()) == lesions["n_voxels"].iloc[1]
    assert dseg[30, 10, 10] == 0 and dseg[12, 12, 10] == 1 and dseg[25, 25, 20] == 2
    summary = pd.read_csv(out["summary"], sep="\t")
    assert summary.loc[0, "n_cmb"] == 1 and summary.loc[0, "n_iron"] == 1
    assert summary.loc[0, "n_dropped_negative_qsm"] == 1
    assert summary.loc[0, "total_iron_volume_mm3"] == pytest.approx(lesions["volume_mm3"].iloc[1], rel=1e-3)


def test_extract_lesions_files_rejects_a_map_on_another_grid(tmp_path):
    f = _write_subject(tmp_path, np.eye(4))
    save_nifti(np.zeros((20, 20, 20), np.float32), np.eye(4), tmp_path / "q_other.nii.gz")
    with pytest.raises(InputError, match="q_other.nii.gz: QSM is not on the grid"):
        extract_lesions_files(f["pc"], f["pi"], None, tmp_path / "q_other.nii.gz", f["s"], None,
                              tmp_path / "out", "01")
    with pytest.raises(InputError, match="missing.nii.gz: SWI file does not exist"):
        extract_lesions_files(f["pc"], f["pi"], None, f["q"], tmp_path / "missing.nii.gz", None,
                              tmp_path / "out", "01")


def test_combine_tables_keeps_subjects_without_lesions(tmp_path):
    a = extract_lesions_files(*_subject_files(tmp_path / "a", True), None, None, None, tmp_path / "d", "01")
    b = extract_lesions_files(*_subject_files(tmp_path / "b", False), None, None, None, tmp_path / "d", "02")
    lesions = combine_tables([a["lesions"], b["lesions"]])
    summary = combine_tables([a["summary"], b["summary"]])
    assert set(lesions["participant_id"]) == {"sub-01"} and len(lesions) == 2
    assert summary["participant_id"].tolist() == ["sub-01", "sub-02"]
    assert summary["n_cmb"].tolist() == [1, 0]
    assert combine_tables([b["lesions"]]).columns.tolist() == [c for c in LESION_COLUMNS if c != "session_id"]
    with pytest.raises(InputError, match="does not exist"):
        combine_tables([tmp_path / "nope.tsv"])


def _subject_files(folder, with_lesions):
    folder.mkdir(parents=True)
    dseg = labelled_volume(SHAPE, [(1, (10, 10, 10), 1.5), (2, (25, 25, 20), 2.0)] if with_lesions else [])
    return (None, None, save_nifti(dseg, np.eye(4), folder / "dseg.nii.gz", dtype=np.uint8))


def test_pydra_tasks_run_under_each_worker(tmp_path, worker):
    from deepmir_tasks.lesions.tasks import CombineTables, ExtractLesions

    if worker == "slurm":  # pydra's own slurm worker needs sacct (accounting); DEEPMIR's does not
        from pipelines.slurm import slurm_worker

        worker = slurm_worker(poll_delay=0.2)

    f = _write_subject(tmp_path / "in", np.eye(4))
    outs = [ExtractLesions(probseg_cmb=f["pc"], probseg_iron=f["pi"], qsm=f["q"], swi=f["s"], mask=f["m"],
                           participant_id=sub)(worker=worker, cache_root=tmp_path / "cache")
            for sub in ("01", "02")]
    assert str(outs[0].lesions).endswith("sub-01_space-T2w_desc-deepmir_lesions.tsv")
    group = CombineTables(lesions=[o.lesions for o in outs], summaries=[o.summary for o in outs])(
        worker=worker, cache_root=tmp_path / "cache")
    summary = pd.read_csv(str(group.group_summary), sep="\t")
    assert summary["participant_id"].tolist() == ["sub-01", "sub-02"]
    assert summary["n_cmb"].tolist() == [1, 1] and summary["n_dropped"].tolist() == [1, 1]
    assert len(pd.read_csv(str(group.group_lesions), sep="\t")) == 4


def test_one_class_map_without_qsm_or_swi_gives_na_measures():
    prob_iron = np.zeros(SHAPE, np.float32)
    prob_iron[ball(SHAPE, (20, 20, 16), 2.0)] = 0.9
    kept, dropped = extract_lesions(None, prob_iron, None, np.eye(4), None, None, participant_id="01")
    assert kept["label"].tolist() == ["iron"] and len(dropped) == 0
    assert kept[["qsm_mean_ppm", "qsm_max_ppm", "swi_contrast"]].isna().all().all()


@settings(max_examples=25, deadline=None)
@given(angles=st.tuples(*[st.floats(-np.pi, np.pi)] * 3),
       zooms=st.tuples(*[st.floats(0.4, 3.0)] * 3),
       centre=st.tuples(st.integers(4, 35), st.integers(4, 35), st.integers(4, 27)))
def test_world_centroid_is_the_affine_of_the_voxel_centroid(angles, zooms, centre):
    affine = np.eye(4)
    a, b, c = angles
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    affine[:3, :3] = rz @ ry @ rx @ np.diag(zooms)
    affine[:3, 3] = [12.5, -40.0, 7.0]
    prob = np.zeros(SHAPE, np.float32)
    prob[centre[0] - 1:centre[0] + 2, centre[1]:centre[1] + 2, centre[2]] = 0.9
    kept, dropped = extract_lesions(prob, None, None, affine, None, None, participant_id="01",
                                    max_cmb_diameter_mm=100.0)
    assert len(kept) == 1 and len(dropped) == 0
    ijk = kept[["i", "j", "k"]].to_numpy(float)[0]
    np.testing.assert_allclose(ijk, [centre[0], centre[1] + 0.5, centre[2]], atol=1e-9)
    np.testing.assert_allclose(kept[["x_mm", "y_mm", "z_mm"]].to_numpy(float)[0], apply_affine(affine, ijk),
                               atol=1e-6)
    assert kept["volume_mm3"].iloc[0] == pytest.approx(6 * np.prod(zooms))
