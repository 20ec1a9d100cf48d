"""Detection from T2w + raw multi-echo GRE against detection from the simulator's own SWI and QSM.

    .venv/bin/python benchmarks/bench_gre_parity.py [--subjects 3] [--seed 970000]
        [--profile default] [--size full] [--work DIR] [--model FILE] [--code HEAD] [--views given gre]

Simulates held-out subjects with DEEPMIR's simulator (``megre=True``: the raw multi-echo GRE of the
same head, field and noise level as its SWI and QSM; seeds 970,000 on, never used for training or
calibration), writes two BIDS views of them, runs ``deepmir run`` on each and scores each with
``deepmir evaluate`` (lesion-wise, centroid within 5 mm):

- ``given``: T2w + the simulator's SWI + QSM (what the model was trained on);
- ``gre``: T2w + the echoes only, so that ``deepmir run`` computes QSM and SWI inside its graph
  (Laplacian unwrapping, multi-echo field fit, V-SHARP, TV-ADMM, CLEAR-SWI-style SWI).

It prints one row per view and the difference (``gre - given``) of each class's sensitivity and
precision; the target of parity is a difference within 0.03. Steps already done under ``--work``
are reused. DEEPMIR runs from a clean export of ``--code`` (as in ``bench_stress.py``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.bench_stress import TOLERANCE_MM, _deepmir, _run, export_code  # noqa: E402

VIEWS = {"given": ("_T2w.", "_swi.", "_Chimap."), "gre": ("_T2w.", "_MEGRE.")}


def make_cohort(bids: Path, n: int, seed: int, profile: str, size: str, log: Path, code_dir: Path) -> None:
    """The simulated cohort, with echoes (skipped when complete)."""
    ann = bids / "derivatives" / "annotations"
    if (bids / "participants.tsv").exists() and len(list(ann.glob("sub-*/anat/sub-*_lesions.tsv"))) == n:
        return
    code = (f"from deepmir_tasks.simulate.bids import write_bids_cohort; "
            f"write_bids_cohort({str(bids)!r}, {n}, {seed}, size={size!r}, profile={profile!r}, megre=True)")
    _run([sys.executable, "-c", code], log, code_dir)


def make_view(bids: Path, view: Path, keep: tuple) -> Path:
    """A BIDS folder of links to the files of ``bids`` whose names contain one of ``keep``."""
    for name in ("dataset_description.json", "participants.tsv"):
        if not (view / name).exists():
            view.mkdir(parents=True, exist_ok=True)
            os.symlink((bids / name).resolve(), view / name)
    for src in sorted(bids.glob("sub-*/anat/*")):
        dst = view / src.relative_to(bids)
        if any(k in src.name for k in keep) and not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(src.resolve(), dst)
    return view


def run_view(name: str, bids: Path, work: Path, model, code_dir: Path, log: Path, extra=()) -> pd.DataFrame:
    """``deepmir run`` and ``deepmir evaluate`` on one view; its pooled per-class figures."""
    view = make_view(bids, work / f"bids_{name}", VIEWS[name])
    deriv, ev = work / f"deriv_{name}", work / f"evaluation_{name}"
    cmd = _deepmir() + ["run", view, deriv, "participant", "--worker", "debug", "--n-procs", 1, "--no-report"]
    if model is not None:
        cmd += ["--model", Path(model).resolve()]
    _run(cmd + list(extra), log, code_dir)
    _run(_deepmir() + ["evaluate", deriv, bids, "--tolerance-mm", TOLERANCE_MM, "--out", ev], log, code_dir)
    return pd.read_csv(ev / "per_class.tsv", sep="\t").set_index("label")


def parity_table(figures: dict) -> pd.DataFrame:
    """One row per view (and the difference): each class's sensitivity, precision, found/true, FP."""
    rows = []
    for name, pc in figures.items():
        row = {"input": name}
        for c in ("cmb", "iron"):
            if c in pc.index:
                r = pc.loc[c]
                row.update({f"{c}_sens": float(r["sensitivity"]), f"{c}_prec": float(r["precision"]),
                            f"{c}_found": f"{int(r['tp'])}/{int(r['n_true'])}", f"{c}_fp": int(r["fp"])})
        rows.append(row)
    df = pd.DataFrame(rows)
    if len(df) < 2:
        return df
    diff = {"input": "gre - given"}
    for col in ("cmb_sens", "cmb_prec", "iron_sens", "iron_prec"):
        if col in df:
            diff[col] = df[col].iloc[-1] - df[col].iloc[0]
    return pd.concat([df, pd.DataFrame([diff])], ignore_index=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, default=3)
    ap.add_argument("--seed", type=int, default=970_000)
    ap.add_argument("--profile", default="default", choices=["default", "randomised"])
    ap.add_argument("--size", default="full", choices=["full", "small"], help="small: a quick check of the steps")
    ap.add_argument("--work", type=Path, default=None, help="working folder (kept; reruns reuse it)")
    ap.add_argument("--model", type=Path, default=None, help="model .safetensors (default: the bundled one)")
    ap.add_argument("--code", default="HEAD", help="commit whose DEEPMIR is measured ('worktree': the working tree)")
    ap.add_argument("--views", nargs="+", default=list(VIEWS), choices=list(VIEWS),
                    help="the views to run (e.g. only gre, to measure a change of the GRE chain)")
    args = ap.parse_args(argv)
    work = (args.work or Path(tempfile.mkdtemp(prefix="deepmir_gre_parity_"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    code_dir, code = export_code(args.code, work)
    log = work / "log.txt"
    bids = work / "bids"
    make_cohort(bids, args.subjects, args.seed, args.profile, args.size, log, code_dir)
    extra = ["--allow-resolution"] if args.size == "small" else []  # small voxels are outside the supported range
    figures = {name: run_view(name, bids, work, args.model, code_dir, log, extra) for name in VIEWS if name in args.views}
    print(f"\nGRE parity: DEEPMIR {code}, {args.subjects} simulated subjects ({args.profile} profile, seeds "
          f"{args.seed}-{args.seed + args.subjects - 1}), lesion-wise, {TOLERANCE_MM:g} mm; work folder {work}")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(parity_table(figures).round(3).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
