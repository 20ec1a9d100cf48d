"""Lesion-wise scoring of a model during training, and mining its hard examples."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from deepmir_tasks.io import write_json
from deepmir_tasks.model.config import ALL_CLASSES, DSEG_VALUE
from deepmir_tasks.model.data import HARD_EXAMPLES, TrainSubject

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------- lesion-wise metrics
def lesion_components(labels: np.ndarray, value: int, affine) -> np.ndarray:
    """World-mm centroids (n, 3) of the 26-connected components of ``labels == value``."""
    import cc3d

    cc = cc3d.connected_components((labels == value).astype(np.uint8), connectivity=26)
    n = int(cc.max())
    if n == 0:
        return np.zeros((0, 3))
    stats = cc3d.statistics(cc)
    cent = np.asarray(stats["centroids"])[1:n + 1]
    return cent @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]


def match_lesions(pred_xyz, true_xyz, max_dist: float = 5.0) -> list[tuple[int, int, float]]:
    """One-to-one greedy matching by distance (``deepmir_tasks.lesions.metrics``); pairs
    ``(pred_index, true_index, distance_mm)``."""
    from deepmir_tasks.lesions.metrics import match_lesions as _match

    return list(_match(pred_xyz, true_xyz, tolerance_mm=max_dist).pairs)


def lesion_metrics(pred_dseg, true_dseg, affine, classes=ALL_CLASSES, max_dist: float = 5.0,
                   other_xyz: dict | None = None) -> dict:
    """Lesion-wise counts and figures per class for one subject.

    ``pred_dseg``/``true_dseg`` hold 0/1/2 (background/CMB/iron). ``other_xyz`` may map a name
    (e.g. ``"calcification"``) to world-mm centres of mimics; the result then counts, per class,
    how many predicted lesions lie within ``max_dist`` of one (``<class>_on_<name>``).
    """
    return {name: match_counts(lesion_components(pred_dseg, DSEG_VALUE[name], affine),
                               lesion_components(true_dseg, DSEG_VALUE[name], affine), max_dist, other_xyz)
            for name in classes}


def match_counts(pred_xyz, true_xyz, max_dist: float = 5.0, other_xyz: dict | None = None) -> dict:
    """Counts of one class in one subject from world-mm centroids: ``tp``/``fp``/``fn`` (one-to-one
    matching within ``max_dist``), ``n_pred``/``n_true``, and ``on_<name>`` for each entry of
    ``other_xyz``: predicted lesions within ``max_dist`` of one of those centres."""
    pred_xyz = np.asarray(pred_xyz, float).reshape(-1, 3)
    tp = len(match_lesions(pred_xyz, true_xyz, max_dist))
    out = {"tp": tp, "fp": len(pred_xyz) - tp, "fn": len(true_xyz) - tp, "n_pred": len(pred_xyz),
           "n_true": len(true_xyz)}
    for oname, oxyz in (other_xyz or {}).items():
        oxyz = np.asarray(oxyz, float).reshape(-1, 3)
        hits = 0
        if len(pred_xyz) and len(oxyz):
            hits = int((np.linalg.norm(pred_xyz[:, None] - oxyz[None], axis=-1).min(1) <= max_dist).sum())
        out[f"on_{oname}"] = hits
    return out


def summarise_metrics(per_subject: list[dict], classes=ALL_CLASSES) -> dict:
    """Pool lesion counts over subjects; sensitivity, precision and F1 per class."""
    out = {}
    for name in classes:
        agg = {}
        for m in per_subject:
            for k, v in m.get(name, {}).items():
                agg[k] = agg.get(k, 0) + v
        tp, fp, fn = agg.get("tp", 0), agg.get("fp", 0), agg.get("fn", 0)
        sens = tp / (tp + fn) if tp + fn else float("nan")
        prec = tp / (tp + fp) if tp + fp else float("nan")
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
        out[name] = dict(agg, sensitivity=round(sens, 4), precision=round(prec, 4), f1=round(f1, 4))
    return out


def _truth_mimics(sub_extra: dict, affine=None) -> dict:
    return sub_extra.get("mimics", {})




def evaluate_predictor(predictor, subjects: list[TrainSubject], tta: bool = False) -> dict:
    """Lesion-wise figures of ``predictor`` on prepared subjects (``extra["volumes"]`` raw data)."""
    from deepmir_tasks.model.predictor import DSEG_LABELS

    per = []
    for s in subjects:
        vols = s.extra["volumes"]
        probs = predictor.predict(vols, s.mask, tta=tta)
        lab = predictor.labels(probs, s.mask)
        dseg = np.zeros(lab.shape, np.uint8)
        for i, name in enumerate(predictor.classes):
            if name in DSEG_LABELS:
                dseg[lab == i] = DSEG_LABELS[name]
        classes = [c for c in predictor.classes if c in DSEG_VALUE]
        per.append(lesion_metrics(dseg, s.dseg, s.affine, classes, other_xyz=s.extra.get("mimics")))
    classes = [c for c in predictor.classes if c in DSEG_VALUE]
    return {"n_subjects": len(subjects), **summarise_metrics(per, classes)}


def _score(summary: dict, classes) -> float:
    vals = [summary[c]["f1"] for c in classes if c in summary and not math.isnan(summary[c]["f1"])]
    return float(np.mean(vals)) if vals else 0.0


#: per-subject file of mined hard examples in the preprocessing cache


def mine_hard_examples(predictor, subjects: list[TrainSubject], cache_dir, *, min_prob: float = 0.3,
                       weak_below: float = 0.98, max_dist: float = 5.0) -> dict:
    """Run ``predictor`` on training subjects and write what it gets wrong, for the sampler.

    Per subject, ``<cache_dir>/<key>/hard_examples.json`` holds world-mm centres of
    ``false_positives`` (components of a lesion class's probability above ``min_prob`` with no
    true lesion of that class within ``max_dist``) and ``weak_lesions`` (true lesions whose peak
    probability of their class stays below ``weak_below``). Training with ``hard_fraction`` > 0
    then centres that share of patches on weak lesions and adds the false positives to the
    background look-alikes of ``mimic_fraction``. Returns the counts per subject.
    """
    import cc3d
    from scipy import ndimage

    out = {}
    for s in subjects:
        probs = predictor.predict(s.extra["volumes"], s.mask)
        fps, weak = [], []
        for ci, name in enumerate(predictor.classes):
            if name not in DSEG_VALUE:
                continue
            xyz = lesion_components((probs[ci] > min_prob) & s.mask, True, s.affine)
            true = lesion_components(s.dseg, DSEG_VALUE[name], s.affine)
            if len(xyz):
                near = (np.linalg.norm(xyz[:, None] - true[None], axis=-1).min(1) <= max_dist) if len(true) \
                    else np.zeros(len(xyz), bool)
                fps += xyz[~near].round(2).tolist()
            tcc = cc3d.connected_components((s.dseg == DSEG_VALUE[name]).astype(np.uint8), connectivity=26)
            m = int(tcc.max())
            if m:
                grown = ndimage.grey_dilation(tcc, size=(3, 3, 3))
                peak = ndimage.maximum(probs[ci], grown, np.arange(1, m + 1))
                cent = np.asarray(cc3d.statistics(tcc)["centroids"])[1:m + 1]
                xyz = cent @ s.affine[:3, :3].T + s.affine[:3, 3]
                weak += xyz[np.asarray(peak) < weak_below].round(2).tolist()
        rec = {"false_positives": fps, "weak_lesions": weak, "model": predictor.source,
               "min_prob": min_prob, "weak_below": weak_below}
        write_json(rec, Path(cache_dir) / s.key / HARD_EXAMPLES)
        out[s.key] = {"false_positives": len(fps), "weak_lesions": len(weak)}
        log.info("%s: %d false positives, %d weak lesions", s.key, len(fps), len(weak))
    return out
