"""Lesion-wise evaluation: matching in world mm, sensitivity/precision/F1, voxel Dice, FROC.

Used by training's validation, the benchmarks and ``deepmir evaluate``. Everything is a plain
function on arrays and tables.

Conventions (no division by zero anywhere; undefined ratios are ``NaN``, never an error):

- A predicted lesion matches a true lesion of the same class when their centroids are at most
  ``tolerance_mm`` apart (world mm); matching is one-to-one, greedy by increasing distance.
- ``sensitivity = TP / (TP + FN)``: ``NaN`` when there is no true lesion.
- ``precision = TP / (TP + FP)``: ``NaN`` when there is no prediction.
- ``f1 = 2 TP / (2 TP + FP + FN)``: ``NaN`` only when there is neither truth nor prediction (an
  empty prediction against real lesions gives F1 = 0 and sensitivity 0).
- ``fp_per_subject = FP / n_subjects``.
- voxel ``dice = 2 |P & T| / (|P| + |T|)``: ``NaN`` when both are empty.
- FROC: a detection's score is its maximum class probability; at each threshold the detections
  scoring at least the threshold are matched again, giving sensitivity against false positives
  per subject.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from deepmir_tasks.labels import CLASSES as _CLASSES

__all__ = [
    "Matching",
    "match_lesions",
    "lesions_from_labels",
    "detection_scores",
    "voxel_dice",
    "resample_nearest",
    "evaluate_subject",
    "pool_counts",
    "froc",
    "plot_froc",
]

@dataclass(frozen=True)
class Matching:
    """Result of :func:`match_lesions`; indices refer to the input arrays' rows."""

    pairs: list = field(default_factory=list)  # (pred index, true index, distance mm)
    unmatched_pred: list = field(default_factory=list)
    unmatched_true: list = field(default_factory=list)

    @property
    def tp(self) -> int:
        return len(self.pairs)

    @property
    def fp(self) -> int:
        return len(self.unmatched_pred)

    @property
    def fn(self) -> int:
        return len(self.unmatched_true)


def match_lesions(pred_xyz, true_xyz, tolerance_mm: float = 5.0) -> Matching:
    """Match predicted to true lesion centroids (world mm), one to one, greedily by distance.

    Pairs closer than or at ``tolerance_mm`` are taken in order of increasing distance (ties by
    prediction then truth index), each lesion at most once. Returns a :class:`Matching` with the
    pairs, the unmatched predictions (false positives) and unmatched truths (misses).
    """
    from scipy.spatial.distance import cdist

    pred = np.asarray(pred_xyz, dtype=float).reshape(-1, 3)
    true = np.asarray(true_xyz, dtype=float).reshape(-1, 3)
    if tolerance_mm < 0:
        raise ValueError(f"tolerance_mm must be >= 0, got {tolerance_mm}")
    if len(pred) == 0 or len(true) == 0:
        return Matching([], list(range(len(pred))), list(range(len(true))))
    dist = cdist(pred, true)
    pi, ti = np.nonzero(dist <= tolerance_mm)
    order = np.lexsort((ti, pi, dist[pi, ti]))
    used_p, used_t, pairs = set(), set(), []
    for o in order:
        p, t = int(pi[o]), int(ti[o])
        if p in used_p or t in used_t:
            continue
        used_p.add(p)
        used_t.add(t)
        pairs.append((p, t, float(dist[p, t])))
    return Matching(pairs, [p for p in range(len(pred)) if p not in used_p],
                    [t for t in range(len(true)) if t not in used_t])


def lesions_from_labels(dseg, affine, *, classes=None, prob_maps=None) -> pd.DataFrame:
    """Lesions (26-connected components) of a label map with their world centroids.

    Args:
        dseg: integer label map (e.g. 0 background, 1 CMB, 2 iron).
        affine: 4x4 voxel -> world affine.
        classes: {label value: class name}; default :data:`deepmir_tasks.labels.CLASSES`.
        prob_maps: optional {class name: probability array on the same grid}; a lesion's
            ``score`` is its maximum probability there, else 1.0.

    Returns a DataFrame with columns ``label, n_voxels, x_mm, y_mm, z_mm, i, j, k, score``.
    """
    import cc3d

    classes = _CLASSES if classes is None else classes
    dseg = np.asarray(dseg)
    affine = np.asarray(affine, dtype=float)
    rows = []
    for value, name in classes.items():
        binary = dseg == value
        if not binary.any():
            continue
        labels = cc3d.connected_components(binary.astype(np.uint8), connectivity=26)
        stats = cc3d.statistics(labels)
        prob = None if prob_maps is None else prob_maps.get(name)
        for lab in range(1, len(stats["voxel_counts"])):
            n = int(stats["voxel_counts"][lab])
            if n == 0:
                continue
            ijk = np.asarray(stats["centroids"][lab], dtype=float)
            xyz = affine[:3, :3] @ ijk + affine[:3, 3]
            score = 1.0
            if prob is not None:
                crop = stats["bounding_boxes"][lab]
                score = float(np.asarray(prob)[crop][labels[crop] == lab].max())
            rows.append({"label": name, "n_voxels": n, "x_mm": xyz[0], "y_mm": xyz[1], "z_mm": xyz[2],
                         "i": ijk[0], "j": ijk[1], "k": ijk[2], "score": score})
    return pd.DataFrame(rows, columns=["label", "n_voxels", "x_mm", "y_mm", "z_mm", "i", "j", "k", "score"])


def detection_scores(tp: int, fp: int, fn: int) -> dict:
    """Sensitivity, precision and F1 from counts (``NaN`` where undefined; see module doc)."""
    tp, fp, fn = int(tp), int(fp), int(fn)
    return {
        "sensitivity": tp / (tp + fn) if tp + fn else float("nan"),
        "precision": tp / (tp + fp) if tp + fp else float("nan"),
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan"),
    }


def voxel_dice(pred, truth) -> float:
    """Dice of two boolean masks on one grid; ``NaN`` when both are empty."""
    pred = np.asarray(pred, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape:
        raise ValueError(f"masks differ in shape: {pred.shape} vs {truth.shape}")
    denom = int(pred.sum()) + int(truth.sum())
    return 2.0 * int(np.count_nonzero(pred & truth)) / denom if denom else float("nan")


def resample_nearest(data, src_affine, ref_shape, ref_affine) -> np.ndarray:
    """Nearest-neighbour resampling of a label map onto another grid (world mm; 0 outside)."""
    from scipy import ndimage

    data = np.asarray(data)
    src_affine = np.asarray(src_affine, dtype=float)
    ref_affine = np.asarray(ref_affine, dtype=float)
    if tuple(data.shape) == tuple(ref_shape) and np.allclose(src_affine, ref_affine, atol=1e-4):
        return data.copy()
    vox = np.linalg.inv(src_affine) @ ref_affine
    return ndimage.affine_transform(data, vox[:3, :3], offset=vox[:3, 3], output_shape=tuple(ref_shape),
                                    order=0, mode="constant", cval=0, prefilter=False)


def evaluate_subject(pred_dseg, pred_affine, true_dseg, true_affine, *, prob_maps=None,
                     tolerance_mm: float = 5.0, classes=None):
    """Score one subject's prediction against its annotation, lesion by lesion and voxel-wise.

    The two label maps may be on different grids: lesions are matched by their world centroids,
    and for Dice the truth is resampled onto the prediction grid with nearest neighbour.

    Returns ``(counts, detections, truths)``:
        counts: one row per class with ``label, n_true, n_pred, tp, fp, fn, sensitivity,
            precision, f1, dice, pred_voxels, true_voxels, overlap_voxels``;
        detections: predicted lesions (:func:`lesions_from_labels` columns) plus ``matched``,
            ``true_index`` and ``distance_mm``;
        truths: true lesions plus ``detected``.
    """
    classes = _CLASSES if classes is None else classes
    pred = lesions_from_labels(pred_dseg, pred_affine, classes=classes, prob_maps=prob_maps)
    true = lesions_from_labels(true_dseg, true_affine, classes=classes)
    pred["matched"] = False
    pred["true_index"] = -1
    pred["distance_mm"] = np.nan
    true["detected"] = False
    true_on_pred = resample_nearest(true_dseg, true_affine, np.shape(pred_dseg), pred_affine)
    pred_dseg = np.asarray(pred_dseg)
    rows = []
    for value, name in classes.items():
        p_idx = np.flatnonzero(pred["label"].to_numpy() == name)
        t_idx = np.flatnonzero(true["label"].to_numpy() == name)
        m = match_lesions(pred.loc[p_idx, ["x_mm", "y_mm", "z_mm"]].to_numpy(float),
                          true.loc[t_idx, ["x_mm", "y_mm", "z_mm"]].to_numpy(float), tolerance_mm)
        for p, t, d in m.pairs:
            pred.loc[p_idx[p], ["matched", "true_index", "distance_mm"]] = [True, int(t_idx[t]), d]
            true.loc[t_idx[t], "detected"] = True
        pv, tv = pred_dseg == value, true_on_pred == value
        rows.append({"label": name, "n_true": len(t_idx), "n_pred": len(p_idx), "tp": m.tp, "fp": m.fp,
                     "fn": m.fn, **detection_scores(m.tp, m.fp, m.fn), "dice": voxel_dice(pv, tv),
                     "pred_voxels": int(pv.sum()), "true_voxels": int(tv.sum()),
                     "overlap_voxels": int(np.count_nonzero(pv & tv))})
    pred["matched"] = pred["matched"].astype(bool)
    pred["true_index"] = pred["true_index"].astype(int)
    true["detected"] = true["detected"].astype(bool)
    return pd.DataFrame(rows), pred, true


def pool_counts(per_subject: pd.DataFrame) -> pd.DataFrame:
    """Pool per-subject counts (rows of :func:`evaluate_subject` with ``participant_id``) by class.

    Returns one row per class: ``label, n_subjects, n_true, n_pred, tp, fp, fn, sensitivity,
    precision, f1, fp_per_subject, dice_pooled`` (from summed voxel counts) and ``dice_mean``
    (mean of the subjects' Dice, ignoring NaN; NaN when every subject's is NaN).
    """
    rows = []
    for label, grp in per_subject.groupby("label", sort=False):
        n_sub = int(grp["participant_id"].nunique()) if "participant_id" in grp else len(grp)
        tp, fp, fn = (int(grp[c].sum()) for c in ("tp", "fp", "fn"))
        denom = int(grp["pred_voxels"].sum() + grp["true_voxels"].sum())
        dice = grp["dice"].to_numpy(float)
        rows.append({"label": label, "n_subjects": n_sub, "n_true": int(grp["n_true"].sum()),
                     "n_pred": int(grp["n_pred"].sum()), "tp": tp, "fp": fp, "fn": fn,
                     **detection_scores(tp, fp, fn),
                     "fp_per_subject": fp / n_sub if n_sub else float("nan"),
                     "dice_pooled": 2 * int(grp["overlap_voxels"].sum()) / denom if denom else float("nan"),
                     "dice_mean": float(np.nanmean(dice)) if np.any(np.isfinite(dice)) else float("nan")})
    return pd.DataFrame(rows)


def froc(detections: pd.DataFrame, truths: pd.DataFrame, n_subjects: int, *, tolerance_mm: float = 5.0,
         thresholds=None) -> pd.DataFrame:
    """FROC points per class: sensitivity against false positives per subject over score thresholds.

    Args:
        detections: predicted lesions with ``participant_id, label, x_mm, y_mm, z_mm, score``.
        truths: true lesions with ``participant_id, label, x_mm, y_mm, z_mm``.
        n_subjects: number of subjects evaluated (subjects without any lesion count too).
        thresholds: scores to threshold at; default every distinct detection score (rounded to
            3 decimals) of the class.

    Returns one row per (class, threshold), thresholds descending: ``label, threshold, tp, fp,
    fn, sensitivity, fp_per_subject, precision``. Detections are matched again at each threshold.
    """
    if n_subjects <= 0:
        raise ValueError("n_subjects must be positive")
    rows = []
    labels = sorted(set(detections.get("label", pd.Series(dtype=object)))
                    | set(truths.get("label", pd.Series(dtype=object))),
                    key=lambda s: (s not in ("cmb", "iron"), ("cmb", "iron").index(s) if s in ("cmb", "iron") else 0, s))
    cols = ["x_mm", "y_mm", "z_mm"]
    for label in labels:
        det = detections[detections["label"] == label]
        tru = truths[truths["label"] == label]
        if thresholds is None:
            ts = np.unique(np.round(det["score"].to_numpy(float), 3))[::-1]
        else:
            ts = np.sort(np.asarray(thresholds, dtype=float))[::-1]
        subjects = sorted(set(det["participant_id"]) | set(tru["participant_id"]))
        for t in ts:
            tp = fp = fn = 0
            for sub in subjects:
                d = det[(det["participant_id"] == sub) & (det["score"] >= t - 1e-9)]
                g = tru[tru["participant_id"] == sub]
                m = match_lesions(d[cols].to_numpy(float), g[cols].to_numpy(float), tolerance_mm)
                tp, fp, fn = tp + m.tp, fp + m.fp, fn + m.fn
            s = detection_scores(tp, fp, fn)
            rows.append({"label": label, "threshold": float(t), "tp": tp, "fp": fp, "fn": fn,
                         "sensitivity": s["sensitivity"], "fp_per_subject": fp / n_subjects,
                         "precision": s["precision"]})
    return pd.DataFrame(rows, columns=["label", "threshold", "tp", "fp", "fn", "sensitivity",
                                       "fp_per_subject", "precision"])


def plot_froc(froc_table: pd.DataFrame, path, *, title: str = "DEEPMIR FROC"):
    """Draw the FROC curves (one per class) into a PNG; return its path. Uses the Agg canvas only."""
    from pathlib import Path

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from deepmir_tasks.io import atomic_path

    fig = Figure(figsize=(5, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for label, grp in froc_table.groupby("label", sort=False):
        grp = grp.sort_values("fp_per_subject")
        ax.plot(grp["fp_per_subject"], grp["sensitivity"], marker="o", ms=3, drawstyle="steps-post",
                label=label)
    ax.set_xlabel("false positives per subject")
    ax.set_ylabel("lesion-wise sensitivity")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlim(left=0)
    ax.grid(True, alpha=0.3)
    ax.set_title(title)
    if len(froc_table):
        ax.legend(loc="lower right")
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
