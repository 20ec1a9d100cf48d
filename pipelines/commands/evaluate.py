"""``deepmir evaluate PRED_DIR TRUTH_DIR``: lesion-wise scores of predictions against annotations.

PRED_DIR is a DEEPMIR derivatives folder (``sub-XX[/ses-YY]/anat/sub-XX[_ses-YY]_space-T2w_desc-
deepmir_dseg.nii.gz``, optionally ``..._label-CMB_probseg.nii.gz`` and ``..._label-iron_probseg
.nii.gz`` beside it, whose maxima score the detections for the FROC) or a plain folder of
``sub-XX*_dseg.nii.gz`` files. TRUTH_DIR is the annotations derivative
(``sub-XX/anat/sub-XX_space-T2w_dseg.nii.gz``), or a BIDS dataset holding it under
``derivatives/annotations``. The two may be on different grids: lesions are matched in world mm.

Writes to ``--out`` (default ``PRED_DIR/evaluation``): ``per_class.tsv``, ``per_subject.tsv``,
``detections.tsv``, ``truths.tsv``, ``froc.tsv``, ``froc.png`` and ``evaluation.json``; prints
the per-class table.
"""

from __future__ import annotations

import re
from pathlib import Path

from deepmir_tasks.io import InputError

_ENT = re.compile(r"^sub-(?P<sub>[A-Za-z0-9]+)(?:_ses-(?P<ses>[A-Za-z0-9]+))?")


def add_arguments(parser):
    parser.add_argument("pred_dir", metavar="PRED_DIR", type=Path,
                        help="DEEPMIR derivatives folder (or a folder of sub-XX*_dseg.nii.gz files)")
    parser.add_argument("truth_dir", metavar="TRUTH_DIR", type=Path,
                        help="annotations derivative with sub-XX/anat/sub-XX_space-T2w_dseg.nii.gz "
                             "(or a BIDS dataset holding it under derivatives/annotations)")
    parser.add_argument("--tolerance-mm", type=float, default=5.0,
                        help="largest centroid distance for a detection to count (default 5 mm)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder for the TSVs and the FROC plot (default PRED_DIR/evaluation)")
    parser.add_argument("--participant-label", nargs="+", default=None, metavar="LABEL",
                        help="evaluate only these subjects (with or without 'sub-')")


def _key(path: Path):
    m = _ENT.match(path.name)
    return (m.group("sub"), m.group("ses")) if m else None


def _find_dsegs(root: Path, *, prefer: str, what: str) -> dict:
    """{(sub, ses): path} for the ``sub-*_dseg.nii.gz`` files under ``root``."""
    found: dict = {}
    for path in sorted(root.rglob("sub-*_dseg.nii*")):
        if "evaluation" in path.relative_to(root).parts or not path.is_file():
            continue
        key = _key(path)
        if key is None:
            continue
        found.setdefault(key, []).append(path)
    out = {}
    for key, paths in found.items():
        if len(paths) > 1:
            preferred = [p for p in paths if prefer in p.name]
            if len(preferred) != 1:
                names = ", ".join(p.name for p in paths[:4])
                raise InputError(root, f"{what} has {len(paths)} dseg files for {_label(key)} "
                                       f"and cannot tell which to use ({names})")
            paths = preferred
        out[key] = paths[0]
    return out


def _label(key) -> str:
    sub, ses = key
    return f"sub-{sub}" + (f"_ses-{ses}" if ses else "")


def _probsegs(dseg: Path) -> dict:
    out = {}
    prefix = _label(_key(dseg))
    for name, tags in (("cmb", ("CMB", "cmb")), ("iron", ("iron", "IRON", "Iron"))):
        for tag in tags:
            hits = sorted(dseg.parent.glob(f"{prefix}_*label-{tag}_probseg.nii*"))
            if hits:
                out[name] = hits[0]
                break
    return out


def run(args) -> int:
    import numpy as np
    import pandas as pd

    from deepmir_tasks import __version__
    from deepmir_tasks.io import load_image, write_json, write_tsv
    from deepmir_tasks.lesions.metrics import evaluate_subject, froc, plot_froc, pool_counts

    pred_dir, truth_dir = Path(args.pred_dir), Path(args.truth_dir)
    for d, what in ((pred_dir, "PRED_DIR"), (truth_dir, "TRUTH_DIR")):
        if not d.is_dir():
            raise InputError(d, f"{what} is not an existing folder")
    if args.tolerance_mm <= 0:
        raise InputError(pred_dir, f"--tolerance-mm must be positive, got {args.tolerance_mm}")
    if (truth_dir / "derivatives" / "annotations").is_dir():
        truth_dir = truth_dir / "derivatives" / "annotations"
    preds = _find_dsegs(pred_dir, prefer="desc-deepmir", what="PRED_DIR")
    truths = _find_dsegs(truth_dir, prefer="space-T2w_dseg", what="TRUTH_DIR")
    if not preds:
        raise InputError(pred_dir, "PRED_DIR holds no sub-*_dseg.nii.gz prediction")
    if not truths:
        raise InputError(truth_dir, "TRUTH_DIR holds no sub-*_dseg.nii.gz annotation")

    if args.participant_label:
        wanted = {lab[4:] if lab.startswith("sub-") else lab for lab in args.participant_label}
        keys = sorted(k for k in preds if k[0] in wanted)
        for sub in sorted(wanted - {k[0] for k in keys}):
            raise InputError(pred_dir, f"no predicted dseg for sub-{sub}")
    else:
        keys = sorted(preds)
        missing_pred = sorted(set(truths) - set(preds))
        if missing_pred:
            raise InputError(pred_dir, f"no prediction for {_label(missing_pred[0])} although TRUTH_DIR "
                                       f"annotates it ({len(missing_pred)} missing); use "
                                       "--participant-label to evaluate a subset")
    for key in keys:
        if key not in truths:
            alt = (key[0], None)
            if key[1] is not None and alt in truths:  # annotations without sessions
                truths[key] = truths[alt]
                continue
            raise InputError(truth_dir, f"no annotation dseg for {_label(key)}")

    subject_rows, det_rows, true_rows = [], [], []
    for key in keys:
        p_img = load_image(preds[key], what="predicted dseg", allow_empty=True)
        t_img = load_image(truths[key], what="annotation dseg", allow_empty=True)
        prob_maps = {}
        for name, path in _probsegs(preds[key]).items():
            img = load_image(path, what=f"{name} probability map", allow_empty=True)
            if img.shape != p_img.shape or not np.allclose(img.affine, p_img.affine, atol=1e-3):
                raise InputError(path, f"{name} probability map is not on the grid of {preds[key].name}")
            prob_maps[name] = np.asarray(img.dataobj)
        counts, det, tru = evaluate_subject(
            np.rint(np.asarray(p_img.dataobj)).astype(np.int16), p_img.affine,
            np.rint(np.asarray(t_img.dataobj)).astype(np.int16), t_img.affine,
            prob_maps=prob_maps or None, tolerance_mm=args.tolerance_mm)
        ident = {"participant_id": f"sub-{key[0]}"}
        if any(k[1] for k in keys):
            ident["session_id"] = f"ses-{key[1]}" if key[1] else None
        for df, rows in ((counts, subject_rows), (det, det_rows), (tru, true_rows)):
            rows.append(df.assign(**ident))

    def _cat(frames):
        ids = ["participant_id"] + (["session_id"] if any(k[1] for k in keys) else [])
        df = pd.concat(frames, ignore_index=True)
        return df[ids + [c for c in df.columns if c not in ids]]

    per_subject, detections, true_lesions = _cat(subject_rows), _cat(det_rows), _cat(true_rows)
    # A subject with several sessions counts once per session in fp_per_subject.
    per_subject_units = per_subject.assign(
        participant_id=per_subject["participant_id"]
        + (("_" + per_subject["session_id"].fillna("")) if "session_id" in per_subject else ""))
    per_class = pool_counts(per_subject_units)
    det_units = detections.copy()
    tru_units = true_lesions.copy()
    if "session_id" in detections:
        det_units["participant_id"] = det_units["participant_id"] + "_" + det_units["session_id"].fillna("")
        tru_units["participant_id"] = tru_units["participant_id"] + "_" + tru_units["session_id"].fillna("")
    froc_table = froc(det_units, tru_units, n_subjects=len(keys), tolerance_mm=args.tolerance_mm)

    out = Path(args.out) if args.out is not None else pred_dir / "evaluation"
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "per_class": write_tsv(per_class.round(4), out / "per_class.tsv"),
        "per_subject": write_tsv(per_subject.round(4), out / "per_subject.tsv"),
        "detections": write_tsv(detections.round(4), out / "detections.tsv"),
        "truths": write_tsv(true_lesions.round(4), out / "truths.tsv"),
        "froc": write_tsv(froc_table.round(4), out / "froc.tsv"),
        "froc_png": plot_froc(froc_table, out / "froc.png"),
    }
    write_json({"GeneratedBy": {"Name": "deepmir evaluate", "Version": __version__},
                "tolerance_mm": args.tolerance_mm, "n_subjects": len(keys),
                "scores": "max class probability" if any(_probsegs(preds[k]) for k in keys) else "1.0 (no probseg)",
                "predictions": {_label(k): str(preds[k]) for k in keys},
                "annotations": {_label(k): str(truths[k]) for k in keys},
                "outputs": {k: str(v) for k, v in paths.items()}}, out / "evaluation.json")

    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(f"Lesion-wise evaluation of {len(keys)} subject(s), tolerance {args.tolerance_mm:g} mm")
        print(per_class.round(3).to_string(index=False))
    print(f"Tables and FROC written to {out}")
    return 0
