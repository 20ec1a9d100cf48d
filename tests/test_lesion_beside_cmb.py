"""One lesion, one class: an iron call beside a kept CMB is dropped as ``beside_cmb``."""

from __future__ import annotations

import numpy as np

from deepmir_tasks.lesions.extract import extract_lesions
from helpers.lesions import ball

SHAPE = (48, 48, 32)


def _maps(iron_centre):
    pc = np.zeros(SHAPE, np.float32)
    pi = np.zeros(SHAPE, np.float32)
    qsm = np.zeros(SHAPE, np.float32)
    cmb = ball(SHAPE, (15, 15, 16), 2.0)
    pc[cmb], qsm[cmb] = 0.95, 0.8
    iron = ball(SHAPE, iron_centre, 2.0) & ~cmb
    pi[iron], qsm[iron] = 0.95, 0.3
    return pc, pi, qsm


def _run(iron_centre, **rules):
    pc, pi, qsm = _maps(iron_centre)
    return extract_lesions(pc, pi, None, np.eye(4), qsm, None, None, participant_id="01", **rules)


def test_iron_touching_a_cmb_is_dropped_as_beside_cmb():
    kept, dropped = _run((19, 15, 16))            # centroids 4 mm apart: one lesion called twice
    assert kept["label"].tolist() == ["cmb"]
    assert dropped.loc[dropped["label"] == "iron", "reason"].tolist() == ["beside_cmb"]


def test_iron_away_from_cmbs_and_the_rule_switched_off_are_kept():
    kept, _ = _run((35, 30, 16))                   # 25 mm away: a deposit of its own
    assert sorted(kept["label"]) == ["cmb", "iron"]
    kept, dropped = _run((19, 15, 16), iron_beside_cmb_mm=None)
    assert sorted(kept["label"]) == ["cmb", "iron"] and dropped.empty


def test_a_dropped_cmb_does_not_remove_iron():
    kept, dropped = _run((19, 15, 16), min_prob_max={"cmb": 0.99, "iron": 0.0})
    assert kept["label"].tolist() == ["iron"]
    assert dropped["reason"].tolist() == ["low_probability"]


def test_iron_on_a_tube_is_vein_like_and_a_focal_deposit_is_kept():
    pi = np.zeros(SHAPE, np.float32)
    qsm = np.zeros(SHAPE, np.float32)
    tube = np.zeros(SHAPE, bool)
    tube[8:40, 10:12, 15:17] = True                  # a vein, 32 mm long
    blob = ball(SHAPE, (30, 30, 16), 2.5)            # a focal deposit
    for region in (tube, blob):
        pi[region], qsm[region] = 0.95, 0.3
    kept, dropped = extract_lesions(None, pi, None, np.eye(4), qsm, None, None, participant_id="01")
    assert len(kept) == 1 and abs(kept["x_mm"].iloc[0] - 30) < 1
    assert dropped["reason"].tolist() == ["vein_like"]
    kept, _ = extract_lesions(None, pi, None, np.eye(4), qsm, None, None, participant_id="01",
                              max_iron_qsm_elongation=None)
    assert len(kept) == 2
