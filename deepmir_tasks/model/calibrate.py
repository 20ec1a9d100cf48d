"""Calibrating and scoring the lesion rules of a model on annotated, prepared subjects.

:func:`calibrate_rules` chooses the voxel threshold, minimum size, QSM-peak floor and per-class
minimum peak probability (:data:`RULE_GRID`) as the most sensitive setting whose lesion-wise
precision reaches the operating precision (:data:`MIN_CALIBRATION_PRECISION` unless another is given)
on a calibration cohort; :func:`score_shipped` scores the lesion
table of the pipeline's own extraction on a test cohort. ``pipelines/bundled_model.py`` uses both
to rebuild the bundled model; they serve any model trained on your own annotations too.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)


def predict_subjects(predictor, subjects, modalities=None) -> list[np.ndarray]:
    """Background, CMB and iron probabilities of each subject
    (:func:`~deepmir_tasks.model.predictor.lesion_probabilities`), in
    float32 as the pipeline writes and thresholds them (float16 would round every probability above
    0.99976 to 1, so that a calibrated minimum such as 0.9999 would mean something else in the
    pipeline than in calibration). ``modalities``: predict from those alone (the others missing)."""
    def volumes(s):
        vols = s.extra["volumes"]
        return vols if modalities is None else {m: (v if m in modalities else None) for m, v in vols.items()}

    from deepmir_tasks.model.predictor import lesion_probabilities

    return [lesion_probabilities(predictor.classes, predictor.predict(volumes(s), s.mask)) for s in subjects]


#: the calibration grid of the lesion-extraction rules (``inference.lesions`` of the record)
RULE_GRID = {"threshold": (0.2, 0.35, 0.5), "min_voxels": (1, 3, 8, 12),
             "min_qsm_peak_ppm": (0.0, 0.01, 0.02, 0.03, 0.05),
             "min_prob": (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995, 0.9999)}

#: the rules :func:`calibrate_rules` chooses (``min_prob`` is one per class)
CALIBRATED_RULES = ("threshold", "min_voxels", "min_qsm_peak_ppm", "min_prob_cmb", "min_prob_iron")


def candidate_tables(subjects, probs, threshold: float, missing=()) -> list:
    """Every lesion candidate of each subject, as the pipeline's :func:`extract_lesions` finds and
    measures it at voxel ``threshold`` (``min_voxels`` 1, no probability minimum, so that those two
    rules can be applied afterwards for any value); dropped rows keep their ``reason``. The
    modalities in ``missing``, or not among the loaded volumes (a model on fewer modalities), are
    not given to the extraction (as for a subject without them)."""
    import pandas as pd

    from deepmir_tasks.lesions.extract import extract_lesions

    out = []
    for s, p in zip(subjects, probs):
        p = np.asarray(p, np.float32)
        qsm, swi = (None if m in missing else s.extra["volumes"].get(m) for m in ("qsm", "swi"))
        kept, dropped = extract_lesions(p[1], p[2], None, s.affine, qsm, swi, s.mask, participant_id=s.key,
                                        threshold=threshold, min_voxels=1)
        out.append(pd.concat([kept.assign(reason=None), dropped], ignore_index=True))
    return out


def truth_centroids(subjects) -> list[dict]:
    """World-mm centroids of each subject's annotated lesions, per class (computed once, then
    passed to :func:`score_tables` for every rule setting)."""
    from deepmir_tasks.model.train import DSEG_VALUE, lesion_components

    return [{name: lesion_components(s.dseg, value, s.affine) for name, value in DSEG_VALUE.items()}
            for s in subjects]


def score_tables(subjects, tables, rules: dict, vein_rule: bool = True, truths=None) -> dict:
    """Lesion-wise figures per class of the lesions kept under ``rules`` (``min_voxels``,
    ``min_prob_cmb``, ``min_prob_iron``, ``min_qsm_peak_ppm``: a candidate without QSM keeps
    that one) from :func:`candidate_tables`; ``truths`` from
    :func:`truth_centroids` (computed here when not given)."""
    from deepmir_tasks.model.train import DSEG_VALUE, match_counts, summarise_metrics

    truths = truths if truths is not None else truth_centroids(subjects)
    per = []
    for s, t, true in zip(subjects, tables, truths):
        ok = t["reason"].isna() | ((t["reason"] == "vein_like") & (not vein_rule))
        ok &= t["n_voxels"] >= rules["min_voxels"]
        ok &= t["prob_max"] >= t["label"].map({"cmb": rules["min_prob_cmb"], "iron": rules["min_prob_iron"]})
        floor = rules.get("min_qsm_peak_ppm", 0.0)
        if floor > 0:
            ok &= t["qsm_max_ppm"].isna() | (t["qsm_max_ppm"] >= floor)
        per.append({name: match_counts(t.loc[ok & (t["label"] == name), ["x_mm", "y_mm", "z_mm"]].to_numpy(float),
                                       true[name], 5.0, s.extra.get("mimics"))
                    for name in DSEG_VALUE})
    return {"n_subjects": len(subjects), **summarise_metrics(per, tuple(DSEG_VALUE))}


def score_shipped(subjects, probs, rules: dict) -> tuple[list, dict, dict]:
    """Candidate tables at the rules' threshold, and the figures with and without the
    ``vein_like`` rule."""
    tables = candidate_tables(subjects, probs, rules["threshold"])
    truths = truth_centroids(subjects)
    return (tables, score_tables(subjects, tables, rules, truths=truths),
            score_tables(subjects, tables, rules, vein_rule=False, truths=truths))


#: the operating point: the most sensitive rules whose precision on the calibration cohort is at
#: least this (per class; when no rule reaches it, the most precise one)
MIN_CALIBRATION_PRECISION = 0.9


def _operating_score(m: dict, min_precision: float) -> tuple:
    sens = m["sensitivity"] if m["sensitivity"] == m["sensitivity"] else 0.0
    prec = m["precision"] if m["precision"] == m["precision"] else 0.0
    ok = prec >= min_precision
    return (ok, sens, prec) if ok else (ok, prec, sens)


def calibrate_rules(subjects, probs, hold: dict | None = None, classes=("cmb", "iron"),
                    min_precision: float = MIN_CALIBRATION_PRECISION) -> tuple[dict, dict]:
    """The lesion rules on ``subjects``: for each voxel threshold, minimum size and QSM-peak floor
    of :data:`RULE_GRID`, each class's minimum peak probability is the one giving the highest
    sensitivity at a precision of at least ``min_precision`` (the operating precision: a class
    that never reaches it takes its most precise setting); the threshold, size
    and floor are those where the most classes reach that precision, then the highest mean
    sensitivity, then precision (ties go to the lower values). Rules named in ``hold`` keep the
    values given there (e.g. a model's calibrated rules, when a rule added later is calibrated
    alone). ``classes``: those the model learns (a single-class model's other class keeps its
    default rule and counts for nothing). Returns the rules and their figures."""
    if not 0.0 < min_precision <= 1.0:
        raise ValueError(f"min_precision must be in (0, 1], got {min_precision}")
    from deepmir_tasks.model.modelfile import LESION_RULE_DEFAULTS

    hold = hold or {}

    def grid(name, axis=None):
        return (hold[name],) if name in hold else RULE_GRID[axis or name]

    best = None
    truths = truth_centroids(subjects)
    for threshold in grid("threshold"):
        tables = candidate_tables(subjects, probs, threshold)
        for min_voxels in grid("min_voxels"):
            for floor in grid("min_qsm_peak_ppm"):
                rules = dict(LESION_RULE_DEFAULTS, threshold=threshold, min_voxels=min_voxels, min_qsm_peak_ppm=floor)
                for name in classes:
                    options = [(_operating_score(score_tables(subjects, tables, dict(rules, **{f"min_prob_{name}": t}),
                                                              truths=truths)[name], min_precision), -t)
                               for t in grid(f"min_prob_{name}", "min_prob")
                               if t == 0.0 or t >= threshold or f"min_prob_{name}" in hold]
                    rules[f"min_prob_{name}"] = -max(options)[1]
                figures = score_tables(subjects, tables, rules, truths=truths)
                per = [_operating_score(figures[c], min_precision) for c in classes]
                score = (sum(p[0] for p in per), round(sum(p[1] for p in per), 6), round(sum(p[2] for p in per), 6),
                         -threshold, -min_voxels, -floor)
                if best is None or score > best[0]:
                    best = (score, rules, figures)
    return best[1], best[2]
