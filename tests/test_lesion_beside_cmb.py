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
