"""``deepmir review OUTPUT_DIR``: review the model's candidates in a browser, or export the decisions.

Serving (the default)::

    deepmir review out/ --rater alice [--participant-label 01 02] [--port 8765]

starts a small HTTP server on 127.0.0.1 (open the printed address; from another machine, tunnel
it: ``ssh -L 8765:127.0.0.1:8765 host``). Every decision is saved at once in
``sub-X/anat/sub-X_desc-review_lesions.tsv`` (+ ``.json``); a later session resumes there.

Exporting::

    deepmir review out/ --export annotations/ --rater alice [--bids-dir bids/] [--include-undecided]

writes ``annotations/sub-X/anat/sub-X_space-T2w_dseg.nii.gz`` (1 CMB, 2 iron, on the raw T2w's
grid) for ``deepmir train --annotations annotations/``, ``review_export.tsv`` (how each lesion's
extent was found) and, when other raters reviewed the same subjects, ``review_agreement.tsv``.
See docs/ANNOTATION.md.
"""

from __future__ import annotations

from pathlib import Path


def add_arguments(p):
    p.add_argument("output_dir", metavar="OUTPUT_DIR", type=Path, help="output folder of deepmir run")
    p.add_argument("--participant-label", nargs="+", default=None, metavar="LABEL",
                   help="review or export only these subjects (with or without 'sub-')")
    p.add_argument("--rater", default=None, metavar="NAME",
                   help="who decides (default: your user name); with --export, whose decisions to export "
                        "(needed when several raters reviewed)")
    p.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (default 8765; 0: any free port)")
    p.add_argument("--export", type=Path, default=None, metavar="ANNOT_DIR",
                   help="write the decisions as training annotations into ANNOT_DIR instead of serving")
    p.add_argument("--bids-dir", type=Path, default=None,
                   help="with --export: the raw BIDS dataset (default: the one named in OUTPUT_DIR's "
                        "dataset_description.json); the labels go on its T2w grid")
    p.add_argument("--include-undecided", action="store_true",
                   help="with --export: export subjects not fully reviewed (undecided kept lesions keep the "
                        "model's class, undecided dropped candidates are left out)")


def run(args) -> int:
    from deepmir_tasks.review.decisions import check_rater, find_review_subjects

    subjects = find_review_subjects(args.output_dir, args.participant_label)
    if args.export is not None:
        return _export(args, subjects)
    import getpass

    from deepmir_tasks.review.server import serve

    serve(subjects, check_rater(args.rater or getpass.getuser()), port=args.port)
    return 0


def _export(args, subjects) -> int:
    import pandas as pd

    from deepmir_tasks.io import InputError, write_tsv
    from deepmir_tasks.review.agreement import summarise
    from deepmir_tasks.review.decisions import check_rater, read_decisions
    from deepmir_tasks.review.export import export_review

    tables = [read_decisions(s) for s in subjects]
    raters = sorted(set().union(*(set(t["rater"].dropna()) for t in tables)))
    if args.rater:
        rater = check_rater(args.rater)
    elif len(raters) == 1:
        rater = raters[0]
    elif not raters:
        raise InputError(args.output_dir, "nobody has reviewed these subjects yet (no *_desc-review_lesions.tsv)")
    else:
        raise InputError(args.output_dir, f"decisions of {len(raters)} raters ({', '.join(raters)}); "
                                          "choose whose to export with --rater")
    res = export_review(args.output_dir, args.export, rater, subjects, bids_dir=args.bids_dir,
                        include_undecided=args.include_undecided)
    for sub in res["subjects"]:
        painted = [r for r in sub["report"] if r["label_value"]]
        counts = ", ".join(f"{sum(r['decision'] == c for r in painted)} {c}" for c in ("cmb", "iron"))
        extra = f"; {len(sub['undecided'])} undecided" if sub["undecided"] else ""
        print(f"{sub['dseg'].name}: {counts}{extra}")
        for r in painted:
            if r["source"] == "added" or r["method"].startswith("sphere"):
                print(f"  {r['candidate_id']} ({r['source']}, {r['decision']}): {r['method']}, {r['n_voxels']} voxels")
    if res["skipped"]:
        print(f"not reviewed by {rater}, skipped: {', '.join(res['skipped'])}")
    print(f"annotations for deepmir train --annotations {args.export}; extents in {res['report']}")
    others = [r for r in raters if r != rater]
    if others:
        table = pd.concat([summarise(tables, rater, other) for other in others], ignore_index=True)
        write_tsv(table.round(4), Path(args.export) / "review_agreement.tsv")
        print("agreement (kappa over candidates both decided; sensitivity_a: "
              f"{rater}'s against the other rater, sensitivity_b: the other's against {rater}):")
        with pd.option_context("display.width", 160, "display.max_columns", 20):
            print(table.round(3).to_string(index=False))
    return 0
