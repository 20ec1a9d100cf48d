"""Evaluate a folder of predictions against a folder of annotations (used by ``deepmir evaluate``).

PRED_DIR is a DEEPMIR derivatives folder (``sub-XX[/ses-YY]/anat/sub-XX[_ses-YY]_space-T2w_desc-
deepmir_dseg.nii.gz``, optionally ``..._label-CMB_probseg.nii.gz`` and ``..._label-iron_probseg
.nii.gz`` beside it, whose maxima score the detections for the FROC) or a plain folder of
``sub-XX*_dseg.nii.gz`` files. TRUTH_DIR is the annotations derivative
(``sub-XX/anat/sub-XX_space-T2w_dseg.nii.gz``), or a BIDS dataset holding it under
``derivatives/annotations``. Predictions and annotations may be on different grids: lesions are
matched in world mm (see :mod:`deepmir_tasks.lesions.metrics` for the definitions).

A subject run without a T2w has its predictions in its SWI's (or QSM's) session world
(``space-swi``, ``space-Chimap``), while annotations are in the T2w session's. The annotation is
then carried into the prediction's world by the transform beside it,
``sub-XX[_ses-YY]_desc-truth_xfm.json`` (``swi_to_t2``: a RAS 4x4, SWI-session world mm ->
T2w-session world mm; the simulators write it, and their QSM lies in the SWI's session); without
that file such a subject is refused in one line rather than scored across two worlds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from deepmir_tasks.bids_files import find_dsegs, find_probsegs
from deepmir_tasks.bids_names import strip_prefix, subject_key
from deepmir_tasks.io import InputError

__all__ = ["Evaluation", "find_pairs", "evaluate_cohort", "write_evaluation", "evaluate_dirs", "truth_affine"]

@dataclass
class Evaluation:
    """Tables of one evaluation (see :func:`evaluate_cohort`)."""

    per_class: pd.DataFrame     # pooled over the cohort, one row per class
    per_subject: pd.DataFrame   # counts, scores and Dice per subject (and session) and class
    detections: pd.DataFrame    # every predicted lesion: centroid, score, matched, distance
    truths: pd.DataFrame        # every annotated lesion: centroid, detected
    froc: pd.DataFrame          # FROC points, pooled (participant_id "all") and per subject
    pairs: dict                 # "sub-XX[_ses-YY]" -> (prediction path, annotation path)
    tolerance_mm: float
    scored_by_probability: bool


def _label(key) -> str:
    return subject_key(*key)


def find_pairs(pred_dir, truth_dir, participant_labels=None) -> dict:
    """Pair each prediction with its annotation; ``{(sub, ses): (pred_path, truth_path)}``.

    Without ``participant_labels`` every prediction is evaluated and every annotated subject must
    have a prediction. Predictions with a session pair with an annotation of that session, or with
    the subject's session-less annotation. Raises :class:`InputError` (one line, naming the folder)
    for missing folders, subjects or files.
    """
    pred_dir, truth_dir = Path(pred_dir), Path(truth_dir)
    for d, what in ((pred_dir, "PRED_DIR"), (truth_dir, "TRUTH_DIR")):
        if not d.is_dir():
            raise InputError(d, f"{what} is not an existing folder")
    if (truth_dir / "derivatives" / "annotations").is_dir():
        truth_dir = truth_dir / "derivatives" / "annotations"
    preds = find_dsegs(pred_dir, prefer="desc-deepmir", what="PRED_DIR")
    truths = find_dsegs(truth_dir, prefer="space-T2w_dseg", what="TRUTH_DIR")
    if not preds:
        raise InputError(pred_dir, "PRED_DIR holds no sub-*_dseg.nii.gz prediction")
    if not truths:
        raise InputError(truth_dir, "TRUTH_DIR holds no sub-*_dseg.nii.gz annotation")
    if participant_labels:
        wanted = {strip_prefix(lab) for lab in participant_labels}
        keys = sorted((k for k in preds if k[0] in wanted), key=lambda k: (k[0], k[1] or ""))
        missing = sorted(wanted - {k[0] for k in keys})
        if missing:
            raise InputError(pred_dir, f"no predicted dseg for sub-{missing[0]}"
                                       + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    else:
        keys = sorted(preds, key=lambda k: (k[0], k[1] or ""))
        have = set(preds) | {(k[0], None) for k in preds}
        missing = sorted((k for k in truths if k not in have), key=lambda k: (k[0], k[1] or ""))
        if missing:
            raise InputError(pred_dir, f"no prediction for {_label(missing[0])} although TRUTH_DIR "
                                       f"annotates it ({len(missing)} missing); use "
                                       "--participant-label to evaluate a subset")
    pairs = {}
    for key in keys:
        truth = truths.get(key) or (truths.get((key[0], None)) if key[1] else None)
        if truth is None:
            raise InputError(truth_dir, f"no annotation dseg for {_label(key)}")
        pairs[key] = (preds[key], truth)
    return pairs


#: spaces whose world is the SWI session's (see the module docstring)
SWI_SESSION_SPACES = ("swi", "Chimap")


def truth_affine(pred_path, truth_path, truth_img) -> np.ndarray:
    """The annotation's voxel -> world affine in the prediction's world: as it is when both are in
    the T2w session's; carried by the inverse of ``swi_to_t2`` (``desc-truth_xfm.json`` beside the
    annotation) when the prediction is in the SWI session's (:data:`SWI_SESSION_SPACES`)."""
    import json

    from deepmir_tasks.bids_names import space_of

    pred_space, truth_space = space_of(Path(pred_path).name), space_of(Path(truth_path).name)
    if pred_space == truth_space or pred_space not in SWI_SESSION_SPACES or truth_space != "T2w":
        return np.asarray(truth_img.affine, float)
    key = Path(truth_path).name.split("_space-")[0]
    xfm = Path(truth_path).with_name(f"{key}_desc-truth_xfm.json")
    if not xfm.exists():
        raise InputError(pred_path, f"predictions are in space-{pred_space} and the annotation in space-T2w; "
                                    f"put the SWI->T2w transform beside the annotation as {xfm.name} "
                                    '({"swi_to_t2": 4x4 RAS}) to score them in one world')
    try:
        m = np.asarray(json.loads(xfm.read_text())["swi_to_t2"], float)
        if m.shape != (4, 4):
            raise ValueError(f"shape {m.shape}")
        return np.linalg.inv(m) @ np.asarray(truth_img.affine, float)
    except (ValueError, KeyError, TypeError, np.linalg.LinAlgError) as err:
        raise InputError(xfm, f"not a swi_to_t2 4x4 transform ({err})") from None


def _labels(img) -> np.ndarray:
    return np.rint(np.asarray(img.dataobj)).astype(np.int16)


def evaluate_cohort(pred_dir, truth_dir, *, tolerance_mm: float = 5.0,
                    participant_labels=None) -> Evaluation:
    """Lesion-wise evaluation of every paired subject; see :class:`Evaluation` for the tables.

    Each subject (each session) is one unit for ``fp_per_subject``. Detections are scored by
    their maximum class probability when the ``label-*_probseg`` maps are present, else 1.0.
    """
    from deepmir_tasks.io import load_image
    from deepmir_tasks.lesions.metrics import evaluate_subject, froc, pool_counts

    if not tolerance_mm > 0:
        raise InputError(pred_dir, f"the matching tolerance must be positive, got {tolerance_mm} mm")
    pairs = find_pairs(pred_dir, truth_dir, participant_labels)
    sessions = any(k[1] for k in pairs)
    subj, dets, trus = [], [], []
    scored = False
    for key, (pred_path, truth_path) in pairs.items():
        p_img = load_image(pred_path, what="predicted dseg", allow_empty=True)
        t_img = load_image(truth_path, what="annotation dseg", allow_empty=True)
        prob_maps = {}
        for name, path in find_probsegs(pred_path).items():
            img = load_image(path, what=f"{name} probability map", allow_empty=True)
            if img.shape != p_img.shape or not np.allclose(img.affine, p_img.affine, atol=1e-3):
                raise InputError(path, f"{name} probability map is not on the grid of {pred_path.name}")
            prob_maps[name] = np.asarray(img.dataobj)
        scored |= bool(prob_maps)
        t_affine = truth_affine(pred_path, truth_path, t_img)
        counts, det, tru = evaluate_subject(_labels(p_img), p_img.affine, _labels(t_img), t_affine,
                                            prob_maps=prob_maps or None, tolerance_mm=tolerance_mm)
        ident = {"participant_id": f"sub-{key[0]}"}
        if sessions:
            ident["session_id"] = f"ses-{key[1]}" if key[1] else None
        unit = _label(key)
        for df, rows in ((counts, subj), (det, dets), (tru, trus)):
            rows.append(df.assign(**ident, _unit=unit))

    def _cat(frames):
        ids = ["participant_id"] + (["session_id"] if sessions else [])
        df = pd.concat(frames, ignore_index=True)
        return df[ids + [c for c in df.columns if c not in ids]]

    per_subject, detections, truths = _cat(subj), _cat(dets), _cat(trus)
    per_class = pool_counts(per_subject.drop(columns="participant_id").rename(columns={"_unit": "participant_id"}))

    def _units(df):
        return df.drop(columns=[c for c in ("participant_id", "session_id") if c in df]).rename(
            columns={"_unit": "participant_id"})

    det_u, tru_u = _units(detections), _units(truths)
    frocs = [froc(det_u, tru_u, n_subjects=len(pairs), tolerance_mm=tolerance_mm).assign(participant_id="all")]
    for unit in (_label(k) for k in pairs):
        frocs.append(froc(det_u[det_u["participant_id"] == unit], tru_u[tru_u["participant_id"] == unit],
                          n_subjects=1, tolerance_mm=tolerance_mm).assign(participant_id=unit))
    froc_table = pd.concat(frocs, ignore_index=True)
    froc_table = froc_table[["participant_id"] + [c for c in froc_table.columns if c != "participant_id"]]
    return Evaluation(
        per_class=per_class, per_subject=per_subject.drop(columns="_unit"),
        detections=detections.drop(columns="_unit"), truths=truths.drop(columns="_unit"), froc=froc_table,
        pairs={_label(k): v for k, v in pairs.items()}, tolerance_mm=float(tolerance_mm),
        scored_by_probability=scored)


def write_evaluation(evaluation: Evaluation, out_dir) -> dict:
    """Write the tables (TSV), the pooled FROC plot (PNG) and a JSON record; return the paths."""
    from deepmir_tasks import __version__
    from deepmir_tasks.io import write_json, write_tsv
    from deepmir_tasks.lesions.metrics import plot_froc

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    e = evaluation
    paths = {
        "per_class": write_tsv(e.per_class.round(4), out / "per_class.tsv"),
        "per_subject": write_tsv(e.per_subject.round(4), out / "per_subject.tsv"),
        "detections": write_tsv(e.detections.round(4), out / "detections.tsv"),
        "truths": write_tsv(e.truths.round(4), out / "truths.tsv"),
        "froc": write_tsv(e.froc.round(4), out / "froc.tsv"),
        "froc_png": plot_froc(e.froc[e.froc["participant_id"] == "all"], out / "froc.png",
                              title=f"DEEPMIR FROC ({len(e.pairs)} subjects, {e.tolerance_mm:g} mm)"),
    }
    paths["record"] = write_json({
        "GeneratedBy": {"Name": "deepmir evaluate", "Version": __version__},
        "tolerance_mm": e.tolerance_mm, "n_subjects": len(e.pairs),
        "detection_score": "maximum class probability" if e.scored_by_probability
                           else "1.0 (no label-*_probseg maps found)",
        "pairs": {k: {"prediction": str(p), "annotation": str(t)} for k, (p, t) in e.pairs.items()},
        "outputs": {k: str(v) for k, v in paths.items()},
    }, out / "evaluation.json")
    return paths


def evaluate_dirs(pred_dir, truth_dir, *, tolerance_mm: float = 5.0, participant_labels=None,
                  out_dir=None) -> pd.DataFrame:
    """Per-class pooled table of :func:`evaluate_cohort`; also writes everything when ``out_dir``."""
    evaluation = evaluate_cohort(pred_dir, truth_dir, tolerance_mm=tolerance_mm,
                                 participant_labels=participant_labels)
    if out_dir is not None:
        write_evaluation(evaluation, out_dir)
    return evaluation.per_class
