"""Detection through ``deepmir run`` for a subset of the images, in its own reference space (issue 13).

Simulates held-out subjects, runs the whole pipeline on each with all three images and with a
subset (default: SWI + QSM, processed in the SWI's space), and scores the lesion tables against the
simulator's truth, lesion-wise at 5 mm. The truth is in the T2w session's world; for a subject
processed in the SWI's space it is carried into the SWI session's world through the simulator's
true SWI->T2w transform, so that head motion between the sessions is not counted as a miss.

    .venv/bin/python benchmarks/bench_subsets_pipeline.py --work work/subsets --subjects 3 \\
        --seed 930000 --profile randomised --subset swi qsm

Run it from a snapshot of a commit (``git worktree add``) so that edits to the tree do not change the
code under a running job (pydra refuses a job whose code changed).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

TOLERANCE_MM = 5.0
SUFFIX = {"t2": "T2w", "swi": "swi", "qsm": "Chimap"}


def _match(truth: np.ndarray, found: np.ndarray) -> int:
    """Greedy one-to-one matches within :data:`TOLERANCE_MM` (nearest pairs first)."""
    if not len(truth) or not len(found):
        return 0
    d = np.linalg.norm(truth[:, None, :] - found[None, :, :], axis=2)
    pairs = sorted(zip(*np.nonzero(d <= TOLERANCE_MM)), key=lambda ij: d[ij])
    used_t, used_f = set(), set()
    for i, j in pairs:
        if i not in used_t and j not in used_f:
            used_t.add(i)
            used_f.add(j)
    return len(used_t)


def score(out_dir: Path, bids: Path, label: str, source: str, space: str) -> dict:
    """Counts of one subject: true CMBs/iron found, calls made, calcifications called CMB."""
    ann = bids / "derivatives" / "annotations" / f"sub-{source}" / "anat"
    truth = pd.read_csv(ann / f"sub-{source}_lesions.tsv", sep="\t")
    xfm = np.asarray(json.loads((ann / f"sub-{source}_desc-truth_xfm.json").read_text())["swi_to_t2"])
    xyz = truth[["x_mm", "y_mm", "z_mm"]].to_numpy(float)
    if space != "T2w":  # into the SWI session's world (a QSM shares it)
        xyz = (np.c_[xyz, np.ones(len(xyz))] @ np.linalg.inv(xfm).T)[:, :3]
    table = out_dir / f"sub-{label}" / "anat" / f"sub-{label}_space-{space}_desc-deepmir_lesions.tsv"
    found = pd.read_csv(table, sep="\t")
    row = {"subject": label}
    for cls in ("cmb", "iron"):
        t = xyz[truth["kind"].to_numpy() == cls]
        f = found.loc[found["label"] == cls, ["x_mm", "y_mm", "z_mm"]].to_numpy(float)
        row.update({f"{cls}_true": len(t), f"{cls}_found": _match(t, f), f"{cls}_calls": len(f)})
    calc = xyz[truth["kind"].to_numpy() == "calcification"]
    cmb_calls = found.loc[found["label"] == "cmb", ["x_mm", "y_mm", "z_mm"]].to_numpy(float)
    row["calc_called_cmb"] = _match(calc, cmb_calls)
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--subjects", type=int, default=3)
    ap.add_argument("--seed", type=int, default=930000)
    ap.add_argument("--profile", default="randomised")
    ap.add_argument("--subset", nargs="+", default=["swi", "qsm"], choices=list(SUFFIX))
    ap.add_argument("--n-procs", type=int, default=2)
    args = ap.parse_args(argv)

    from deepmir_tasks.bids_names import reference_modality, space_label
    from deepmir_tasks.simulate import write_bids_cohort
    from pipelines.run import run_cohort

    bids = args.work / "bids"
    if not bids.exists():
        write_bids_cohort(bids, args.subjects, seed=args.seed, size="full", profile=args.profile)
    sources = sorted(p.name[4:] for p in bids.glob("sub-*") if p.is_dir() and "sub" not in p.name[4:])
    tag = "".join(args.subset)
    for src in sources:  # the subset: a copy of the subject with only its images
        anat = bids / f"sub-{src}sub{tag}" / "anat"
        if not anat.exists():
            anat.mkdir(parents=True)
            for m in args.subset:
                shutil.copyfile(bids / f"sub-{src}" / "anat" / f"sub-{src}_{SUFFIX[m]}.nii.gz",
                                anat / f"sub-{src}sub{tag}_{SUFFIX[m]}.nii.gz")
    out = args.work / "out"
    result = run_cohort(bids, out, worker="cf", n_procs=args.n_procs, cache_dir=args.work / "cache")
    print("\n".join(result.summary_lines()))
    space = space_label(reference_modality(args.subset))
    rows = []
    for src in sources:
        rows.append({**score(out, bids, src, src, "T2w"), "modalities": "T2w + SWI + QSM"})
        rows.append({**score(out, bids, f"{src}sub{tag}", src, space),
                     "modalities": " + ".join(SUFFIX[m] for m in args.subset)})
    df = pd.DataFrame(rows)
    print(df.to_string(index=False))
    agg = df.groupby("modalities", sort=False).sum(numeric_only=True)
    n = len(sources)
    summary = pd.DataFrame({
        "CMB sens": agg["cmb_found"] / agg["cmb_true"], "CMB prec": agg["cmb_found"] / agg["cmb_calls"].clip(lower=1),
        "CMB FP/subject": (agg["cmb_calls"] - agg["cmb_found"]) / n,
        "iron sens": agg["iron_found"] / agg["iron_true"], "iron prec": agg["iron_found"] / agg["iron_calls"].clip(lower=1),
        "calcifications called CMB": agg["calc_called_cmb"],
        "CMBs": agg["cmb_true"], "iron": agg["iron_true"]}).round(2)
    print(summary.to_string())


if __name__ == "__main__":
    main()
