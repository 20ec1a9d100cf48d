"""Stress benchmark: DEEPMIR on cohorts from the independent generator, one row per condition.

    .venv/bin/python benchmarks/bench_stress.py [--conditions default 7T ...] [--subjects 3]
        [--work DIR] [--model FILE] [--subset t2 swi] [--seed-offset 100000] [--nucleus-texture 0]
        [--nucleus-r2s-scale 5]
        [--markdown]

For each condition (``default`` first: the independent generator's headline row) it writes a
cohort with ``python -m benchmarks.independent_sim`` (seeds 7,300,000 + 10,000 x the condition's
index, never used by DEEPMIR's own simulator), runs ``deepmir run`` on it, scores it with
``deepmir evaluate`` (lesion-wise, centroid within 5 mm) and prints one row: CMB sensitivity,
precision and false positives per subject; iron-deposit sensitivity and precision;
calcifications called CMB (a CMB detection within 5 mm of a true calcification); false iron
calls on normal nuclei (unmatched iron detections whose centroid lies in a deep grey nucleus,
dilated by 2 mm); and the fraction of true CMBs and iron deposits inside the pipeline's brain
mask. Steps already done under ``--work`` are reused (the cohort if complete, the pipeline from
its cache), so one command rebuilds the table. ``--subset`` runs the pipeline on some of the
modalities only (links to the cohort without the others; its own ``deriv_<subset>`` and
``evaluation_<subset>`` folders), as a site without QSM would. ``--nucleus-texture`` and
``--nucleus-r2s-scale`` (the generator's ``ABLATIONS``) change one field of the generator on the same
seeds (own folders ``<cond>_texture<X>``, ``<cond>_r2s<Y>``): ``--nucleus-texture 0`` gives the same
subjects with uniform nuclei, ``--nucleus-r2s-scale 5`` with nuclei as dark on the GRE magnitude as
DEEPMIR's simulator makes them; ablations of what provokes false iron calls.

DEEPMIR runs from a clean export of a commit (``--code``, default HEAD, via ``git archive``), so
edits to the working tree during a run of an hour neither break pydra's hash checks nor mix two
versions in one table; ``--code worktree`` runs the installed working tree instead.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.independent_sim import CONDITIONS, SEED_BASE  # noqa: E402
from benchmarks.independent_sim.conditions import (ABLATIONS, ablation_flags, ablation_overrides,  # noqa: E402
                                                   add_ablation_arguments, check_ablations)

TOLERANCE_MM = 5.0
COLUMNS = ["condition", "subjects", "cmb_sens", "cmb_prec", "cmb_fp_per_subj", "iron_sens", "iron_prec",
           "calc_called_cmb", "nucleus_false_iron", "lesions_in_mask"]


def _env(code_dir: Path):
    env = dict(os.environ, OMP_NUM_THREADS="1", ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS="1",
               MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", DEEPMIR_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(code_dir), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def export_code(rev: str, work: Path) -> tuple:
    """(folder, commit) of a clean ``git archive`` export of ``rev`` under ``work`` (or the working
    tree itself for ``worktree``)."""
    if rev == "worktree":
        return REPO, "working tree"
    sha = subprocess.run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=REPO, capture_output=True,
                         text=True)
    if sha.returncode != 0:
        raise SystemExit(f"bench_stress: {REPO}: {rev!r} is not a commit")
    sha = sha.stdout.strip()
    dest = work / f"code-{sha[:12]}"
    if not (dest / "pipelines" / "cli.py").exists():
        tmp = work / f".code-{sha[:12]}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        archive = subprocess.Popen(["git", "archive", sha], cwd=REPO, stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "-C", str(tmp)], stdin=archive.stdout, check=True)
        if archive.wait() != 0:
            raise SystemExit(f"bench_stress: git archive {sha} failed")
        tmp.rename(dest)
    return dest, sha[:12]


def _deepmir() -> list:
    """The ``deepmir`` command, imported from the first ``pipelines`` on PYTHONPATH (the export)."""
    return [sys.executable, "-c", "import sys; from pipelines.cli import main; sys.exit(main())"]


def _run(cmd, log, code_dir=REPO):
    print("$ " + " ".join(map(str, cmd)), flush=True)
    with open(log, "a") as fh:
        proc = subprocess.run([str(c) for c in cmd], stdout=fh, stderr=subprocess.STDOUT, env=_env(code_dir),
                              cwd=code_dir)
    if proc.returncode != 0:
        raise SystemExit(f"bench_stress: {cmd[0]} failed (exit {proc.returncode}); see {log}")


def _cohort_complete(bids: Path, n: int) -> bool:
    ann = bids / "derivatives" / "annotations"
    return (bids / "participants.tsv").exists() and \
        len(list(ann.glob("sub-*/anat/sub-*_lesions.tsv"))) == n


#: BIDS suffix of each modality's image, for ``--subset``
SUFFIXES = {"t2": "T2w", "swi": "swi", "qsm": "Chimap"}


def subset_tag(subset) -> str:
    """``""`` for all three modalities, else e.g. ``"_t2+swi"``: the suffix of that run's folders."""
    return "" if not subset or set(subset) == set(SUFFIXES) else "_" + "+".join(m for m in SUFFIXES if m in subset)


def subset_view(bids: Path, dest: Path, subset) -> Path:
    """A BIDS folder of links to ``bids`` without the images of the modalities not in ``subset``."""
    drop = tuple(f"_{SUFFIXES[m]}." for m in SUFFIXES if m not in subset)
    for src in sorted(bids.rglob("*")):
        rel = src.relative_to(bids)
        if src.is_dir() or rel.parts[0] == "derivatives" or any(d in src.name for d in drop):
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        if not (dest / rel).exists():
            (dest / rel).symlink_to(src)
    return dest


def condition_seed(cond: str, seed_offset: int = 0) -> int:
    """The first seed of a condition's cohort: 7,300,000 + 10,000 x its index, plus ``seed_offset``
    (e.g. 100,000 for the unseen seeds 7,400,000 of ``default``)."""
    return SEED_BASE + int(seed_offset) + 10_000 * list(CONDITIONS).index(cond)


def run_condition(cond: str, n_subjects: int, work: Path, model=None, worker="debug", code_dir=REPO,
                  subset=None, seed_offset: int = 0, ablations=None) -> Path:
    """Generate, run (DEEPMIR imported from ``code_dir``, on the images of ``subset`` only when
    given) and evaluate one condition; return its folder (``<cond>``, or ``<cond>_seed<first seed>``
    with a ``seed_offset``; ``_<tag><value>`` added per generator field changed in ``ablations``,
    e.g. ``_texture0``)."""
    ablations = ablations or {}
    seed = condition_seed(cond, seed_offset)
    root = work / ((cond if not seed_offset else f"{cond}_seed{seed}")
                   + "".join(f"_{ABLATIONS[k][0]}{v:g}" for k, v in ablations.items()))
    tag = subset_tag(subset)
    bids, deriv = root / "bids", root / f"deriv{tag}"
    root.mkdir(parents=True, exist_ok=True)
    log = root / "log.txt"
    if not _cohort_complete(bids, n_subjects):
        shutil.rmtree(bids, ignore_errors=True)
        _run([sys.executable, "-m", "benchmarks.independent_sim", bids, "--subjects", n_subjects,
              "--seed", seed, "--condition", cond, *ablation_flags(ablations)], log)
    source = subset_view(bids, root / f"bids{tag}", subset) if tag else bids
    cmd = _deepmir() + ["run", source, deriv, "participant", "--worker", worker, "--n-procs", 1, "--no-report"]
    if model is not None:
        cmd += ["--model", Path(model).resolve()]
    _run(cmd, log, code_dir)
    _run(_deepmir() + ["evaluate", deriv, bids, "--tolerance-mm", TOLERANCE_MM, "--out", root / f"evaluation{tag}"],
         log, code_dir)
    return root


def _world_to_voxel_value(img, xyz, dilate_mm=0.0):
    """Value of the (optionally dilated) label image at world points ``xyz`` (n, 3); 0 outside."""
    from scipy import ndimage

    data = np.asarray(img.dataobj)
    if dilate_mm > 0:
        zooms = np.asarray(img.header.get_zooms()[:3], float)
        dist, idx = ndimage.distance_transform_edt(data == 0, sampling=zooms, return_indices=True)
        data = np.where(dist <= dilate_mm, data[tuple(idx)], 0)
    ijk = np.rint((np.linalg.inv(img.affine) @ np.c_[xyz, np.ones(len(xyz))].T)[:3].T).astype(int)
    ok = np.all((ijk >= 0) & (ijk < data.shape), axis=1)
    out = np.zeros(len(xyz), data.dtype)
    out[ok] = data[tuple(ijk[ok].T)]
    return out


def score_condition(root: Path, subset=None) -> dict:
    """The condition's row from ``deepmir evaluate``'s tables and the generator's truth."""
    import nibabel as nib

    tag = subset_tag(subset)
    bids, deriv, ev = root / "bids", root / f"deriv{tag}", root / f"evaluation{tag}"
    per_class = pd.read_csv(ev / "per_class.tsv", sep="\t").set_index("label")
    dets = pd.read_csv(ev / "detections.tsv", sep="\t")
    ann = bids / "derivatives" / "annotations"
    calc_hit = n_calc = nuc_fp = inside = n_true = 0
    subjects = sorted(p.name for p in ann.glob("sub-*") if p.is_dir())
    for sub in subjects:
        truth = pd.read_csv(ann / sub / "anat" / f"{sub}_lesions.tsv", sep="\t")
        d = dets[dets["participant_id"] == sub]
        calc = truth.loc[truth["kind"] == "calcification", ["x_mm", "y_mm", "z_mm"]].to_numpy(float)
        cmb_xyz = d.loc[d["label"] == "cmb", ["x_mm", "y_mm", "z_mm"]].to_numpy(float)
        n_calc += len(calc)
        if len(calc) and len(cmb_xyz):
            dist = np.linalg.norm(calc[:, None] - cmb_xyz[None], axis=2)
            calc_hit += int((dist.min(1) <= TOLERANCE_MM).sum())
        fp_iron = d[(d["label"] == "iron") & ~d["matched"].astype(bool)][["x_mm", "y_mm", "z_mm"]].to_numpy(float)
        if len(fp_iron):
            nuclei = nib.load(ann / sub / "anat" / f"{sub}_space-T2w_desc-nuclei_dseg.nii.gz")
            nuc_fp += int((_world_to_voxel_value(nuclei, fp_iron, dilate_mm=2.0) > 0).sum())
        lesion_xyz = truth.loc[truth["label"] > 0, ["x_mm", "y_mm", "z_mm"]].to_numpy(float)
        masks = sorted((deriv / sub / "anat").glob(f"{sub}_space-T2w_desc-brain_mask.nii*"))
        if masks and len(lesion_xyz):
            inside += int((_world_to_voxel_value(nib.load(masks[0]), lesion_xyz) > 0).sum())
        n_true += len(lesion_xyz)

    def get(label, col):
        return float(per_class.loc[label, col]) if label in per_class.index else float("nan")

    return {"condition": root.name + (f" ({tag[1:]})" if tag else ""), "subjects": len(subjects),
            "cmb_sens": get("cmb", "sensitivity"), "cmb_prec": get("cmb", "precision"),
            "cmb_fp_per_subj": get("cmb", "fp_per_subject"),
            "iron_sens": get("iron", "sensitivity"), "iron_prec": get("iron", "precision"),
            "calc_called_cmb": f"{calc_hit}/{n_calc}", "nucleus_false_iron": nuc_fp,
            "lesions_in_mask": f"{inside}/{n_true}", "_counts": {
                k: f"{int(get(k, 'tp'))}/{int(get(k, 'n_true'))} found, {int(get(k, 'fp'))} FP"
                for k in ("cmb", "iron") if k in per_class.index}}


def format_table(rows, markdown: bool) -> str:
    df = pd.DataFrame([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows], columns=COLUMNS)
    df = df.round(2)
    if not markdown:
        with pd.option_context("display.width", 200, "display.max_columns", 20):
            return df.to_string(index=False)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(v) for v in rec) + " |" for rec in df.itertuples(index=False)]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=list(CONDITIONS))
    ap.add_argument("--subjects", type=int, default=3)
    ap.add_argument("--work", type=Path, default=None, help="working folder (kept; reruns reuse it)")
    ap.add_argument("--model", type=Path, default=None, help="model .safetensors (default: the bundled one)")
    ap.add_argument("--worker", default="debug", choices=["debug", "cf"])
    ap.add_argument("--code", default="HEAD",
                    help="commit whose DEEPMIR is measured (default HEAD; 'worktree': the working tree)")
    ap.add_argument("--subset", nargs="+", default=None, choices=list(SUFFIXES),
                    help="run on these modalities only (with T2w among them), e.g. --subset t2 swi")
    ap.add_argument("--seed-offset", type=int, default=0,
                    help="added to every condition's seeds (100000: the unseen default cohort, seeds 7400000-)")
    add_ablation_arguments(ap)
    ap.add_argument("--markdown", action="store_true", help="print a README-ready Markdown table")
    args = ap.parse_args(argv)
    try:
        ablations = check_ablations(ablation_overrides(args))
    except ValueError as err:
        raise SystemExit(f"bench_stress: {err}") from None
    if args.subset is not None and "t2" not in args.subset:
        raise SystemExit("bench_stress: --subset must include t2 (the truth is scored in the T2w's world)")
    if args.model is not None and not args.model.is_file():
        raise SystemExit(f"bench_stress: {args.model}: model file does not exist")
    work = (args.work or Path(tempfile.mkdtemp(prefix="deepmir_stress_"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    code_dir, code = export_code(args.code, work)
    rows = []
    for cond in args.conditions:
        root = run_condition(cond, args.subjects, work, args.model, args.worker, code_dir, args.subset,
                             args.seed_offset, ablations)
        row = score_condition(root, args.subset)
        rows.append(row)
        print(f"{cond}: " + "; ".join(f"{k} {v}" for k, v in row["_counts"].items()), flush=True)
    changed = "".join(f", {k} {v:g}" for k, v in ablations.items())
    print(f"\nStress benchmark: DEEPMIR {code}, {args.subjects} subjects per condition (seed offset "
          f"{args.seed_offset}{changed}), lesion-wise, "
          f"{TOLERANCE_MM:g} mm; work folder {work}")
    print(format_table(rows, args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
