"""Calibrating the lesion rules of a model on constructed subjects: the QSM-peak floor, the operating precision."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from deepmir_tasks.lesions import extract_lesions
from deepmir_tasks.model.calibrate import calibrate_rules, candidate_tables, score_tables
from deepmir_tasks.model.modelfile import LESION_RULE_DEFAULTS
from helpers.lesions import ball

SHAPE = (40, 40, 32)


def _subject(seed: int):
    """A subject with one CMB and one iron deposit, both found by a confident network, and a
    confident false call of each class where the QSM is void (zero: outside its eroded mask)."""
    rng = np.random.default_rng(seed)
    qsm = rng.normal(0.0, 0.004, SHAPE).astype(np.float32)
    swi = rng.normal(0.0, 1.0, SHAPE).astype(np.float32)
    qsm[:, :, 26:] = 0.0                                  # the void rim
    probs = np.zeros((3,) + SHAPE, np.float32)
    dseg = np.zeros(SHAPE, np.uint8)
    for value, centre, chi in ((1, (10, 12, 10), 0.4), (2, (28, 26, 12), 0.12)):
        blob = ball(SHAPE, centre, 1.8)
        dseg[blob], qsm[blob] = value, qsm[blob] + chi
        swi[blob] -= 4.0
        probs[value][blob] = 0.99999
    for value, centre in ((1, (12, 28, 29)), (2, (28, 10, 29))):   # false calls in the void
        blob = ball(SHAPE, centre, 1.8)
        probs[value][blob] = 0.99999
        swi[blob] -= 4.0
    probs[0] = 1.0 - probs[1] - probs[2]
    return SimpleNamespace(key=f"sub-{seed:02d}", affine=np.eye(4), mask=np.ones(SHAPE, bool), dseg=dseg,
                           extra={"volumes": {"qsm": qsm, "swi": swi}}), probs


def test_a_call_with_no_positive_qsm_is_dropped_as_weak_qsm_only_when_there_is_a_qsm():
    s, probs = _subject(1)
    qsm, swi = s.extra["volumes"]["qsm"], s.extra["volumes"]["swi"]
    kept, dropped = extract_lesions(probs[1], probs[2], None, s.affine, qsm, swi, participant_id="01",
                                    threshold=0.5, min_qsm_peak_ppm=0.02)
    assert sorted(kept["label"]) == ["cmb", "iron"] and (kept["qsm_max_ppm"] > 0.1).all()
    assert dropped["reason"].tolist() == ["weak_qsm", "weak_qsm"]
    assert (dropped["qsm_max_ppm"] < 0.02).all()
    # the default floor (0 ppm) keeps them: void QSM is not negative
    kept0, _ = extract_lesions(probs[1], probs[2], None, s.affine, qsm, swi, participant_id="01", threshold=0.5)
    assert len(kept0) == 4
    # without a QSM the rule cannot apply
    kept_noq, dropped_noq = extract_lesions(probs[1], probs[2], None, s.affine, None, swi, participant_id="01",
                                            threshold=0.5, min_qsm_peak_ppm=0.02)
    assert len(kept_noq) == 4 and len(dropped_noq) == 0


def test_calibration_chooses_a_qsm_peak_floor_that_drops_void_calls_and_keeps_true_lesions():
    pairs = [_subject(seed) for seed in (1, 2, 3)]
    subjects, probs = [p[0] for p in pairs], [p[1] for p in pairs]
    tables = candidate_tables(subjects, probs, 0.5)
    without = score_tables(subjects, tables, dict(LESION_RULE_DEFAULTS, threshold=0.5))
    assert [without[c]["fp"] for c in ("cmb", "iron")] == [3, 3]
    rules, figures = calibrate_rules(subjects, probs)
    assert rules["min_qsm_peak_ppm"] > 0
    for c in ("cmb", "iron"):
        assert (figures[c]["tp"], figures[c]["fp"], figures[c]["fn"]) == (3, 0, 0)
    # without QSM (the subject's QSM missing) the floor keeps every candidate
    tables_noq = candidate_tables(subjects, probs, 0.5, missing=("qsm",))
    assert score_tables(subjects, tables_noq, rules)["iron"]["fp"] == 3
    # a model on T2w + SWI loads no QSM: the same as a missing one
    for s in subjects:
        del s.extra["volumes"]["qsm"]
    tables_unloaded = candidate_tables(subjects, probs, 0.5)
    assert all(t["qsm_max_ppm"].isna().all() for t in tables_unloaded)
    assert score_tables(subjects, tables_unloaded, rules)["iron"]["fp"] == 3


def test_held_rules_keep_their_values_and_the_rest_is_calibrated():
    pairs = [_subject(seed) for seed in (1, 2)]
    subjects, probs = [p[0] for p in pairs], [p[1] for p in pairs]
    # a model calibrated before the floor existed: its rules held, the floor calibrated alone
    held = {"threshold": 0.35, "min_voxels": 3, "min_prob_cmb": 0.9, "min_prob_iron": 0.95}
    rules, figures = calibrate_rules(subjects, probs, hold=held)
    assert {k: rules[k] for k in held} == held and rules["min_qsm_peak_ppm"] > 0
    assert figures["iron"]["fp"] == 0 and figures["iron"]["tp"] == 2
    # holding the floor at 0 keeps the void calls
    _, figures0 = calibrate_rules(subjects, probs, hold={"min_qsm_peak_ppm": 0.0})
    assert figures0["cmb"]["fp"] == 2 and figures0["iron"]["fp"] == 2


def test_a_single_class_model_is_calibrated_on_its_own_class_in_the_pipelines_layout():
    """A CMB-only model's output (background, CMB) is laid out as the pipeline writes it (iron
    zero); calibration chooses only the CMB rule and leaves the iron one at its default."""
    from deepmir_tasks.model.predictor import lesion_probabilities

    pairs = [_subject(seed) for seed in (1, 2)]
    subjects = [p[0] for p in pairs]
    own = [np.stack([1.0 - p[1][1], p[1][1]]) for p in pairs]      # what a CMB-only network outputs
    probs = [lesion_probabilities(["background", "cmb"], o) for o in own]
    assert all(p.shape == (3,) + SHAPE and not p[2].any() and np.array_equal(p[1], o[1]) for p, o in zip(probs, own))
    rules, figures = calibrate_rules(subjects, probs, classes=("cmb",))
    assert rules["min_prob_iron"] == LESION_RULE_DEFAULTS["min_prob_iron"]
    assert (figures["cmb"]["tp"], figures["cmb"]["fp"]) == (2, 0) and figures["iron"]["tp"] == 0


def _graded_subject(seed: int):
    """Two true CMBs, one called confidently (0.99999) and one less so (0.9), and a false CMB at
    0.97, all round, dark on SWI and bright on QSM: no rule but the minimum probability tells them apart."""
    rng = np.random.default_rng(seed)
    qsm = rng.normal(0.0, 0.004, SHAPE).astype(np.float32)
    swi = rng.normal(0.0, 1.0, SHAPE).astype(np.float32)
    probs = np.zeros((3,) + SHAPE, np.float32)
    dseg = np.zeros(SHAPE, np.uint8)
    for centre, p, true in (((10, 10, 10), 0.99999, True), ((28, 28, 10), 0.9, True), ((10, 28, 22), 0.97, False)):
        blob = ball(SHAPE, centre, 1.8)
        qsm[blob] += 0.4
        swi[blob] -= 4.0
        probs[1][blob] = p
        if true:
            dseg[blob] = 1
    probs[0] = 1.0 - probs[1] - probs[2]
    return SimpleNamespace(key=f"sub-{seed:02d}", affine=np.eye(4), mask=np.ones(SHAPE, bool), dseg=dseg,
                           extra={"volumes": {"qsm": qsm, "swi": swi}}), probs


def test_the_operating_precision_sets_how_many_calls_calibration_keeps():
    pairs = [_graded_subject(seed) for seed in (1, 2, 3)]
    subjects, probs = [p[0] for p in pairs], [p[1] for p in pairs]
    # at precision 0.9 only the confident calls are kept: half the CMBs, no false one
    rules, figures = calibrate_rules(subjects, probs, classes=("cmb",))
    assert rules["min_prob_cmb"] > 0.97
    assert (figures["cmb"]["tp"], figures["cmb"]["fp"], figures["cmb"]["fn"]) == (3, 0, 3)
    # at 0.6 every CMB is found, at the cost of the false calls (precision 6 / 9)
    rules, figures = calibrate_rules(subjects, probs, classes=("cmb",), min_precision=0.6)
    assert 0.0 <= rules["min_prob_cmb"] <= 0.9
    assert (figures["cmb"]["tp"], figures["cmb"]["fp"], figures["cmb"]["fn"]) == (6, 3, 0)
    with pytest.raises(ValueError, match="min_precision"):
        calibrate_rules(subjects, probs, min_precision=0.0)


def test_a_new_evaluation_keeps_figures_measured_elsewhere_with_the_rules_they_had():
    from pipelines.bundled_model import measured_elsewhere

    rec = {"inference": {"lesions": {"min_prob_cmb": 0.9999}},
           "validation": {"rule": "r", "held_out_test": {}, "calibration_cohort": {}, "seconds": 1.0,
                          "independent_generator": {"default": {"cmb": {"tp": 8}}}, "modality_table": {"rows": []}}}
    before = measured_elsewhere(rec)
    assert set(before) == {"inference", "independent_generator", "modality_table"}
    assert before["inference"]["lesions"]["min_prob_cmb"] == 0.9999
    assert measured_elsewhere({"validation": {"rule": "r", "held_out_test": {}}}) == {}
    # straight from training: its last export's figures are training history, not measured elsewhere
    assert measured_elsewhere({"inference": {}, "validation": {"note": "no validation fold (folds <= 1)",
                                                               "train_loss": 0.5}}) == {}
    # a second evaluation keeps the first one's earlier figures, nested
    again = {"inference": {"lesions": {"min_prob_cmb": 0.5}},
             "validation": {"rule": "r", "held_out_test": {}, "before_this_evaluation": before,
                            "independent_generator": {"default": {"cmb": {"tp": 9}}}}}
    twice = measured_elsewhere(again)
    assert twice["independent_generator"]["default"]["cmb"]["tp"] == 9 and twice["inference"]["lesions"]["min_prob_cmb"] == 0.5
    assert twice["before_this_evaluation"] == before
    # nothing new measured since: the earlier figures stay as they were
    assert measured_elsewhere({"validation": {"rule": "r", "before_this_evaluation": before}}) == before
