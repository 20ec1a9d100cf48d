"""``deepmir evaluate PRED_DIR TRUTH_DIR``: lesion-wise scores of predictions against annotations.

PRED_DIR is a DEEPMIR derivatives folder (or a plain folder of ``sub-XX*_dseg.nii.gz``), TRUTH_DIR
the annotations derivative (or a BIDS dataset holding it under ``derivatives/annotations``); see
:mod:`deepmir_tasks.lesions.evaluate`. Writes to ``--out`` (default ``PRED_DIR/evaluation``):
``per_class.tsv``, ``per_subject.tsv``, ``detections.tsv``, ``truths.tsv``, ``froc.tsv``,
``froc.png`` and ``evaluation.json``; prints the per-class table.
"""

from __future__ import annotations

from pathlib import Path


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


def run(args) -> int:
    import pandas as pd

    from deepmir_tasks.lesions.evaluate import evaluate_cohort, write_evaluation

    evaluation = evaluate_cohort(args.pred_dir, args.truth_dir, tolerance_mm=args.tolerance_mm,
                                 participant_labels=args.participant_label)
    out = Path(args.out) if args.out is not None else Path(args.pred_dir) / "evaluation"
    write_evaluation(evaluation, out)
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(f"Lesion-wise evaluation of {len(evaluation.pairs)} subject(s), "
              f"tolerance {args.tolerance_mm:g} mm")
        print(evaluation.per_class.round(3).to_string(index=False))
    print(f"Tables and FROC written to {out}")
    return 0
