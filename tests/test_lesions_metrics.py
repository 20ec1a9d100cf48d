"""Lesion-wise metrics: matching, sensitivity/precision/F1, Dice and FROC on constructed cases."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nibabel.affines import apply_affine

from deepmir_tasks.lesions.metrics import (
    detection_scores,
    evaluate_subject,
    froc,
    lesions_from_labels,
    match_lesions,
    plot_froc,
    pool_counts,
    voxel_dice,
)
from helpers.lesions import labelled_volume, oblique_affine

SHAPE = (40, 40, 32)
TRUTH = [(1, (10, 10, 10), 1.5), (1, (28, 12, 20), 1.5), (2, (20, 30, 15), 3.0)]


def _row(counts, label):
    return counts.set_index("label").loc[label]


def test_perfect_prediction_scores_one():
    affine = oblique_affine()
    dseg = labelled_volume(SHAPE, TRUTH)
    counts, det, tru = evaluate_subject(dseg, affine, dseg, affine)
    for label in ("cmb", "iron"):
        row = _row(counts, label)
        assert row["sensitivity"] == row["precision"] == row["f1"] == row["dice"] == 1.0
    assert det["matched"].all() and tru["detected"].all()
    assert np.allclose(det["distance_mm"], 0.0)


def test_shift_inside_or_outside_tolerance_flips_the_match():
    truth = np.array([[0.0, 0.0, 0.0]])
    assert match_lesions([[0.0, 4.9, 0.0]], truth, tolerance_mm=5.0).tp == 1
    m = match_lesions([[0.0, 5.1, 0.0]], truth, tolerance_mm=5.0)
    assert (m.tp, m.fp, m.fn) == (0, 1, 1)
    # the same on label maps: a CMB moved by 3 voxels (3 mm) matches at 5 mm, not at 2 mm
    true_dseg = labelled_volume(SHAPE, [(1, (15, 15, 15), 1.5)])
    pred_dseg = labelled_volume(SHAPE, [(1, (18, 15, 15), 1.5)])
    counts, _, _ = evaluate_subject(pred_dseg, np.eye(4), true_dseg, np.eye(4), tolerance_mm=5.0)
    assert _row(counts, "cmb")["tp"] == 1
    counts, _, _ = evaluate_subject(pred_dseg, np.eye(4), true_dseg, np.eye(4), tolerance_mm=2.0)
    assert tuple(_row(counts, "cmb")[["tp", "fp", "fn"]]) == (0, 1, 1)


def test_two_predictions_near_one_truth_give_one_tp_and_one_fp():
    m = match_lesions([[1.0, 0, 0], [0, 2.0, 0]], [[0.0, 0, 0]], tolerance_mm=5.0)
    assert (m.tp, m.fp, m.fn) == (1, 1, 0)
    assert m.pairs == [(0, 0, 1.0)] and m.unmatched_pred == [1]
    scores = detection_scores(m.tp, m.fp, m.fn)
    assert scores["sensitivity"] == 1.0 and scores["precision"] == 0.5


def test_matching_is_greedy_by_distance_and_class_aware():
    # prediction 0 is closest to truth 0; prediction 1 then takes truth 1
    m = match_lesions([[0, 0, 0], [3, 0, 0]], [[1, 0, 0], [4.5, 0, 0]], tolerance_mm=5.0)
    assert sorted((p, t) for p, t, _ in m.pairs) == [(0, 0), (1, 1)]
    # a CMB predicted where an iron deposit is: one FP CMB and one missed iron
    true_dseg = labelled_volume(SHAPE, [(2, (15, 15, 15), 2.0)])
    pred_dseg = labelled_volume(SHAPE, [(1, (15, 15, 15), 2.0)])
    counts, _, _ = evaluate_subject(pred_dseg, np.eye(4), true_dseg, np.eye(4))
    assert tuple(_row(counts, "cmb")[["tp", "fp", "fn"]]) == (0, 1, 0)
    assert tuple(_row(counts, "iron")[["tp", "fp", "fn"]]) == (0, 0, 1)


def test_empty_prediction_gives_zero_sensitivity_without_division_errors():
    true_dseg = labelled_volume(SHAPE, TRUTH)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        counts, det, _ = evaluate_subject(np.zeros(SHAPE, np.uint8), np.eye(4), true_dseg, np.eye(4))
        pooled = pool_counts(counts.assign(participant_id="sub-01"))
    assert len(det) == 0
    for table in (counts, pooled):
        row = _row(table, "cmb")
        assert row["sensitivity"] == 0.0 and row["f1"] == 0.0 and math.isnan(row["precision"])
    assert _row(counts, "cmb")["dice"] == 0.0


def test_nothing_to_find_and_nothing_found_is_nan_not_an_error():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        empty = np.zeros(SHAPE, np.uint8)
        counts, _, _ = evaluate_subject(empty, np.eye(4), empty, np.eye(4))
        pooled = pool_counts(counts.assign(participant_id="sub-01"))
    for col in ("sensitivity", "precision", "f1", "dice"):
        assert counts[col].isna().all()
    assert pooled["fp_per_subject"].tolist() == [0.0, 0.0] and pooled["dice_mean"].isna().all()
    assert math.isnan(voxel_dice(empty, empty))


def test_prediction_and_truth_on_different_grids_match_in_world_mm():
    pred_affine = oblique_affine()
    true_affine = pred_affine.copy()
    true_affine[:3, :3] *= 0.5  # truth on a grid twice as fine, same origin and orientation
    true_dseg = labelled_volume((80, 80, 64), [(1, (20, 20, 20), 3.0), (2, (40, 60, 30), 6.0)])
    pred_dseg = labelled_volume(SHAPE, [(1, (10, 10, 10), 1.5), (2, (20, 30, 15), 3.0)])
    counts, det, tru = evaluate_subject(pred_dseg, pred_affine, true_dseg, true_affine)
    assert (counts["tp"] == 1).all() and (counts["fp"] == 0).all()
    assert (counts["dice"] > 0.6).all()
    assert det["distance_mm"].max() < 0.5


def test_lesions_from_labels_centroids_follow_the_affine():
    affine = oblique_affine()
    table = lesions_from_labels(labelled_volume(SHAPE, TRUTH), affine)
    assert table["label"].tolist() == ["cmb", "cmb", "iron"]
    ijk = np.array([c for _, c, _ in TRUTH], float)
    np.testing.assert_allclose(table[["i", "j", "k"]].to_numpy(float), ijk, atol=1e-6)
    np.testing.assert_allclose(table[["x_mm", "y_mm", "z_mm"]].to_numpy(float), apply_affine(affine, ijk),
                               atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(*[st.floats(-20, 20)] * 3), max_size=8),
       st.lists(st.tuples(*[st.floats(-20, 20)] * 3), max_size=8),
       st.floats(0.1, 15))
def test_matching_is_one_to_one_and_within_tolerance(pred, true, tol):
    m = match_lesions(np.array(pred).reshape(-1, 3), np.array(true).reshape(-1, 3), tol)
    assert m.tp + m.fp == len(pred) and m.tp + m.fn == len(true)
    assert len({p for p, _, _ in m.pairs}) == m.tp == len({t for _, t, _ in m.pairs})
    assert all(d <= tol for _, _, d in m.pairs)
    # no unmatched prediction is within tolerance of an unmatched truth (greedy leaves none behind)
    for p in m.unmatched_pred:
        for t in m.unmatched_true:
            assert np.linalg.norm(np.subtract(pred[p], true[t])) > tol


def test_froc_is_monotone_and_uses_scores(tmp_path):
    truths = pd.DataFrame({"participant_id": ["a", "a", "b"], "label": "cmb",
                           "x_mm": [0.0, 20.0, 0.0], "y_mm": 0.0, "z_mm": 0.0})
    dets = pd.DataFrame({"participant_id": ["a", "a", "a", "b"], "label": "cmb",
                         "x_mm": [0.5, 20.5, 50.0, 40.0], "y_mm": 0.0, "z_mm": 0.0,
                         "score": [0.9, 0.6, 0.7, 0.3]})
    table = froc(dets, truths, n_subjects=2)
    assert table["threshold"].tolist() == [0.9, 0.7, 0.6, 0.3]
    assert table["tp"].tolist() == [1, 1, 2, 2] and table["fp"].tolist() == [0, 1, 1, 2]
    assert table["sensitivity"].is_monotonic_increasing
    assert table["fp_per_subject"].tolist() == [0.0, 0.5, 0.5, 1.0]
    png = plot_froc(table, tmp_path / "froc.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert froc(dets.iloc[:0], truths.iloc[:0], n_subjects=1).empty


def test_probability_maps_give_detection_scores():
    pred = labelled_volume(SHAPE, [(1, (10, 10, 10), 1.5), (1, (30, 30, 20), 1.5)])
    prob = np.where(pred == 1, 0.6, 0.0).astype(np.float32)
    prob[10, 10, 10] = 0.95
    table = lesions_from_labels(pred, np.eye(4), prob_maps={"cmb": prob})
    assert table["score"].tolist() == pytest.approx([0.95, 0.6])
