"""The modality table: one model on every non-empty subset of T2w, SWI and QSM, held-out cohort.

The paper (Rashid et al. 2021) compares every combination of the three modalities. A DEEPMIR model
trained with modality dropout (``--modality-dropout``; ``serves_subsets`` in its record) takes any
subset, a missing modality being the zero channel it saw in training; this prints, for each of the
7 subsets, the lesion-wise figures of the lesion table the pipeline would write (the model's own
lesion rules from its record, nothing chosen here; 5 mm; without QSM the QSM-based rules stand aside
as they do in ``deepmir run``) on a held-out cohort prepared by ``pipelines.bundled_model --stage
data`` (its ``test_bids`` and ``prepared_test`` folders):

    .venv/bin/python benchmarks/bench_modalities.py --work work_tmp/rand --model M.safetensors [--markdown]

Columns: CMB sensitivity, precision and false positives per subject, iron-deposit sensitivity and
precision, and kept CMB calls within 5 mm of a simulated calcification (``calc_called_cmb``). The
paper reports, for its best models, CMB sensitivity 0.84-0.88 at precision 0.40-0.59 and iron
0.75-0.81 at 0.62-0.75.

Single-class rows: each any-subset model in ``--single-class`` (default ``benchmarks/models``:
one CMB-only and one iron-only model, fine-tuned from the bundled default with modality dropout;
``classes`` column) adds a row per subset, with its own lesion rules; the class it does not learn
is left blank.

Without ``--model``, each bundled model made for one subset (``deepmir_tasks.model.choice``: the
one ``deepmir run`` uses for a subject with exactly those modalities) adds a row of its own for
its subset, with its own lesion rules; the ``model`` column names the model of each row.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import pandas as pd

SUBSETS = [s for n in (3, 2, 1) for s in itertools.combinations(("t2", "swi", "qsm"), n)]
NAMES = {"t2": "T2w", "swi": "SWI", "qsm": "QSM"}
COLUMNS = ["modalities", "model", "classes", "cmb_sens", "cmb_prec", "cmb_fp_per_subj", "iron_sens", "iron_prec", "calc_called_cmb"]


SINGLE_CLASS = Path(__file__).resolve().parent / "models"


def subset_tables(pred, subjects, subset, threshold: float) -> list:
    """Candidate tables of each subject predicted from ``subset`` alone (the others missing)."""
    from deepmir_tasks.model.calibrate import candidate_tables, predict_subjects

    return candidate_tables(subjects, predict_subjects(pred, subjects, subset), threshold,
                            missing=[m for m in NAMES if m not in subset])


def row(subset, figures, model: str, classes) -> dict:
    """One table row; the figures of a class the model does not learn are left blank (NaN)."""
    nan = float("nan")
    c, i = figures["cmb"], figures["iron"]
    n = figures["n_subjects"]
    cmb, iron = "cmb" in classes, "iron" in classes
    return {"modalities": " + ".join(NAMES[m] for m in subset), "model": model,
            "classes": " + ".join({"cmb": "CMB", "iron": "iron"}[k] for k in classes) + ("" if cmb and iron else " only"),
            "cmb_sens": c["sensitivity"] if cmb else nan, "cmb_prec": c["precision"] if cmb else nan,
            "cmb_fp_per_subj": c["fp"] / max(n, 1) if cmb else nan,
            "iron_sens": i["sensitivity"] if iron else nan, "iron_prec": i["precision"] if iron else nan,
            "calc_called_cmb": int(c.get("on_calcification", 0)) if cmb else nan,
            "_counts": {k: f"{figures[k]['tp']}/{figures[k]['n_true']} found, {figures[k]['fp']} FP" for k in classes}}


def single_class_models(folder: Path) -> list[Path]:
    """The any-subset single-class models in ``folder`` (CMB before iron)."""
    from deepmir_tasks.model.modelfile import load_record
    from deepmir_tasks.model.predictor import serves_subsets

    found = []
    for path in sorted(Path(folder).glob("*.safetensors")):
        rec = load_record(path)
        if len(rec["classes"]) == 2 and serves_subsets(rec):
            found.append((rec["classes"][1] != "cmb", path))
    return [p for _, p in sorted(found)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="a bundled_model work folder (test_bids, prepared_test)")
    ap.add_argument("--cohort", default="test", help="which of its cohorts: test (default) or val")
    ap.add_argument("--model", type=Path, default=None, help="model .safetensors (default: the bundled one)")
    ap.add_argument("--single-class", type=Path, default=SINGLE_CLASS,
                    help="a folder of single-class any-subset models, each adding a row per subset "
                         "(default: benchmarks/models; a missing folder adds none)")
    ap.add_argument("--subjects", type=int, default=None, help="only the first N subjects (a quick check)")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args(argv)

    from deepmir_tasks.model.calibrate import score_tables, truth_centroids
    from deepmir_tasks.model.config import TrainConfig
    from workflows.train import load_subjects
    from deepmir_tasks.model.modelfile import lesion_rules
    from deepmir_tasks.model.normalize import DEFAULT_NORMALIZATION
    from deepmir_tasks.model.predictor import Predictor
    from pipelines.bundled_model import cohort_cache

    pred = Predictor.from_file(args.model)
    if not pred.any_subset:
        sys.exit(f"{pred.source}: this model was not trained with modality dropout; it serves only "
                 f"{' + '.join(NAMES[m] for m in pred.modalities)}")
    rules = lesion_rules(args.model)
    bids = args.work / f"{args.cohort}_bids"
    keys = None
    if args.subjects:
        keys = sorted(p.name for p in bids.glob("sub-*") if p.is_dir())[:args.subjects]
    subjects = load_subjects(bids, bids / "derivatives" / "annotations",
                             cohort_cache(args.work / "prepared", args.cohort), TrainConfig(),
                             DEFAULT_NORMALIZATION, keys, with_volumes=True, progress=False)
    truths = truth_centroids(subjects)
    from deepmir_tasks.model.choice import bundled_subset_models

    bundled = {} if args.model else bundled_subset_models()
    single = [(Predictor.from_file(p), lesion_rules(p)) for p in single_class_models(args.single_class)] \
        if args.single_class.is_dir() else []
    runs = []
    for subset in SUBSETS:
        runs.append((subset, pred, rules))
        if frozenset(subset) in bundled:  # a row for the bundled model made for this subset
            path = bundled[frozenset(subset)]
            runs.append((subset, Predictor.from_file(path), lesion_rules(path)))
        runs += [(subset, model, model_rules) for model, model_rules in single]
    rows = []
    for subset, model, model_rules in runs:
        t0 = time.perf_counter()
        tables = subset_tables(model, subjects, subset, model_rules["threshold"])
        rows.append(row(subset, score_tables(subjects, tables, model_rules, truths=truths),
                        Path(model.source).name.removesuffix(".safetensors"), model.classes[1:]))
        print(f"{rows[-1]['modalities']}: {rows[-1]['_counts']} ({time.perf_counter() - t0:.0f} s)",
              file=sys.stderr, flush=True)
    df = pd.DataFrame([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows], columns=COLUMNS).round(2)
    print(f"{len(subjects)} subjects of {bids}; model {pred.source}; rules {json.dumps(rules)}"
          + "".join(f"; {Path(m.source).name}: rules {json.dumps(r)}"
                    for m, r in {id(m): (m, r) for _, m, r in runs if m is not pred}.values()))
    if args.markdown:
        print("| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS))
        print("\n".join("| " + " | ".join("—" if pd.isna(v) else str(v) for v in r) + " |"
                         for r in df.astype({"calc_called_cmb": "Int64"}).itertuples(index=False)))
    else:
        print(df.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
