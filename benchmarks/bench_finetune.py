"""Fine-tuning benchmark (issue 17): the bundled model before and after ``deepmir train --init`` on
a few subjects of a distribution it does badly on, scored on other subjects of that distribution.

    .venv/bin/python benchmarks/bench_finetune.py [--condition 7T] [--subjects 12] [--n-train 4]
        [--n-test 4] [--seed 7800000] [--steps 400] [--lr 5e-4] [--work DIR] [--code HEAD] [--markdown]

1. writes ``--subjects`` subjects of one stress condition with the independent generator
   (``python -m benchmarks.independent_sim BIDS --subjects N --seed S --condition C``; its truth
   under ``BIDS/derivatives/annotations`` is in the layout ``deepmir train`` reads) and runs them,
   in order, through the pipeline's preprocessing until ``--n-train + --n-test`` are prepared; a
   subject the preprocessing refuses (its registration check, say) is listed and left out, as
   ``deepmir run`` would fail it for either model;
2. splits the usable ones by participant: the first ``--n-train`` are the fine-tuning set, the
   next ``--n-test`` the test set (folders of symlinks, ``train_bids/`` and ``test_bids/``);
3. scores the bundled model on the test set lesion-wise (centroid within 5 mm, one-to-one) on the
   lesion table of the pipeline's own extraction, with the lesion rules of the bundled model's
   record (:func:`deepmir_tasks.model.calibrate.score_shipped`, as ``pipelines/bundled_model.py``
   scores its test cohorts);
4. fine-tunes from the bundled model with ``deepmir train --init`` on the fine-tuning set only
   (``--folds 1``: no subject of the test set is seen, and nothing is chosen on the test set);
5. scores the fine-tuned model on the same test subjects with the same rules (copied from the
   bundled record, not recalibrated), and prints a before/after table and the times.

Everything is kept under ``--work`` and reused: the cohort when complete, the preprocessing cache
(``prepared/``), the training checkpoint (``deepmir train --resume``), each model's probability
maps (``probs/``) and figures (``scores/``), so a stopped run resumes where it was. DEEPMIR runs
from a ``git archive`` export of ``--code`` (default HEAD), as in ``bench_stress.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
#: the DEEPMIR measured: a ``git archive`` export of ``--code`` (set on the re-exec in ``main``)
CODE = Path(os.environ.get("DEEPMIR_BENCH_CODE", REPO))
if str(CODE) not in sys.path:
    sys.path.insert(0, str(CODE))

from benchmarks.independent_sim import CONDITIONS  # noqa: E402

TOLERANCE_MM = 5.0
#: the bundled model's training patch mix that ``deepmir train`` can set (its record: patch 32,
#: batch 4, small CMB labels grown by 1 voxel)
TRAIN_ARGS = ["--patch", "32", "--batch", "4", "--grow-small-cmb", "1", "--folds", "1"]


def _env():
    return dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"), DEEPMIR_THREADS="1",
                PYTHONPATH=os.pathsep.join([str(CODE), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))


def _run(cmd, log: Path):
    print("$ " + " ".join(map(str, cmd)), flush=True)
    with open(log, "a") as fh:
        proc = subprocess.run([str(c) for c in cmd], stdout=fh, stderr=subprocess.STDOUT, env=_env(), cwd=CODE)
    if proc.returncode != 0:
        raise SystemExit(f"bench_finetune: {cmd[0]} failed (exit {proc.returncode}); see {log}")


def generate(bids: Path, n: int, seed: int, condition: str, log: Path) -> list[str]:
    """The cohort (reused when complete); its participant labels."""
    ann = bids / "derivatives" / "annotations"
    if not ((bids / "participants.tsv").exists() and len(list(ann.glob("sub-*/anat/sub-*_lesions.tsv"))) == n):
        _run([sys.executable, "-m", "benchmarks.independent_sim", bids, "--subjects", n, "--seed", seed,
              "--condition", condition], log)
    subs = sorted(p.name for p in bids.glob("sub-*") if p.is_dir())
    if len(subs) != n:
        raise SystemExit(f"bench_finetune: {bids}: expected {n} subjects, found {len(subs)}")
    return subs


def usable_subjects(bids: Path, subjects: list[str], n: int, cache: Path, work: Path) -> tuple[list, dict]:
    """The first ``n`` of ``subjects`` that the pipeline's preprocessing takes (cached in ``cache``),
    and those it refused, with the one-line reason (kept in ``work/refused.json``: not retried)."""
    from deepmir_tasks.io import InputError
    from deepmir_tasks.model.data import find_subjects
    from workflows.train import prepare_subject

    files = {s.key: s for s in find_subjects(bids, bids / "derivatives" / "annotations")}
    ref_file = work / "refused.json"
    refused = json.loads(ref_file.read_text()) if ref_file.exists() else {}
    usable = []
    for sub in subjects:
        if len(usable) == n:
            break
        if sub in refused:
            continue
        t0 = time.perf_counter()
        try:
            prepare_subject(files[sub], cache, 1.0)
        except InputError as err:
            refused[sub] = str(err)
            ref_file.write_text(json.dumps(refused, indent=1))
            print(f"{sub}: refused by preprocessing: {err}", flush=True)
            continue
        print(f"{sub}: prepared ({time.perf_counter() - t0:.0f} s; 0 when cached)", flush=True)
        usable.append(sub)
    if len(usable) < n:
        raise SystemExit(f"bench_finetune: only {len(usable)} of {len(subjects)} subjects preprocess, {n} needed: "
                         "generate more (--subjects)")
    return usable, {k: v for k, v in refused.items() if k in subjects}


def split_view(bids: Path, subjects: list[str], view: Path) -> Path:
    """A BIDS folder of symlinks holding only ``subjects`` (images and truth)."""
    ann_src, ann_dst = bids / "derivatives" / "annotations", view / "derivatives" / "annotations"
    ann_dst.mkdir(parents=True, exist_ok=True)
    for name in ("dataset_description.json",):
        if not (view / name).exists():
            os.symlink((bids / name).resolve(), view / name)
    if not (ann_dst / "dataset_description.json").exists():
        os.symlink((ann_src / "dataset_description.json").resolve(), ann_dst / "dataset_description.json")
    for sub in subjects:
        for src, dst in ((bids / sub, view / sub), (ann_src / sub, ann_dst / sub)):
            if not dst.exists():
                os.symlink(src.resolve(), dst)
    return view


def score_model(model: Path, tag: str, view: Path, cache: Path, rules: dict, work: Path) -> dict:
    """Lesion-wise figures of ``model`` on the subjects of ``view`` under ``rules`` (cached in
    ``work/scores/<tag>.json``; probability maps cached per subject in ``work/probs/<tag>/``)."""
    from deepmir_tasks.model.calibrate import score_shipped
    from deepmir_tasks.model.config import TrainConfig
    from deepmir_tasks.model.modelfile import sha256_file
    from deepmir_tasks.model.normalize import DEFAULT_NORMALIZATION
    from deepmir_tasks.model.predictor import Predictor
    from workflows.train import load_subjects

    sha = sha256_file(model)
    out = work / "scores" / f"{tag}.json"
    if out.exists():
        rec = json.loads(out.read_text())
        if rec["model_sha256"] == sha and rec["rules"] == rules:
            return rec
    t0 = time.perf_counter()
    subjects = load_subjects(view, view / "derivatives" / "annotations", cache, TrainConfig(), DEFAULT_NORMALIZATION,
                             None, with_volumes=True, progress=False)
    t_load = time.perf_counter() - t0
    pdir = work / "probs" / tag
    pdir.mkdir(parents=True, exist_ok=True)
    predictor, probs, t_pred = None, [], 0.0
    for s in subjects:
        f = pdir / f"{s.key}_{sha[:12]}_f32.npy"   # float32, as the pipeline thresholds them
        if not f.exists():
            predictor = predictor or Predictor.from_file(model)
            t1 = time.perf_counter()
            p = predictor.predict(s.extra["volumes"], s.mask).astype(np.float32)
            t_pred += time.perf_counter() - t1
            np.save(f.with_suffix(".partial.npy"), p)
            os.replace(f.with_suffix(".partial.npy"), f)
        probs.append(np.load(f))
    _, shipped, _ = score_shipped(subjects, probs, rules)
    rec = {"model": str(model), "model_sha256": sha, "rules": rules, "subjects": [s.key for s in subjects],
           "figures": shipped, "seconds_load": round(t_load, 1), "seconds_predict": round(t_pred, 1)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rec, indent=1))
    return rec


def _row(name: str, rec: dict) -> dict:
    f, n = rec["figures"], rec["figures"]["n_subjects"]
    row = {"model": name}
    for c in ("cmb", "iron"):
        m = f[c]
        row.update({f"{c}_sens": m["sensitivity"], f"{c}_prec": m["precision"],
                    f"{c}_fp_per_subj": round(m["fp"] / n, 2), f"{c}_tp/n": f"{m['tp']}/{m['n_true']}",
                    f"{c}_fp": m["fp"]})
    return row


def format_table(rows: list[dict], markdown: bool) -> str:
    cols = list(rows[0])
    cells = [[(f"{v:.2f}" if isinstance(v, float) else str(v)) for v in r.values()] for r in rows]
    if markdown:
        return "\n".join(["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
                         + ["| " + " | ".join(c) + " |" for c in cells])
    width = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(cols)]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(line, width)) for line in [cols] + cells)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--condition", default="7T", choices=list(CONDITIONS))
    ap.add_argument("--subjects", type=int, default=12,
                    help="subjects generated; the first n-train + n-test that preprocessing takes are used")
    ap.add_argument("--n-train", type=int, default=4, help="the first N usable subjects fine-tune")
    ap.add_argument("--n-test", type=int, default=4, help="the next N usable subjects are the test set")
    ap.add_argument("--seed", type=int, default=7_800_000,
                    help="first subject's seed (default 7,800,000: not used by bench_stress)")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=REPO / "work_tmp" / "finetune")
    ap.add_argument("--model", type=Path, default=None, help="model to start from (default: the bundled one)")
    ap.add_argument("--code", default="HEAD",
                    help="commit whose DEEPMIR is measured (default HEAD; 'worktree': the working tree)")
    ap.add_argument("--markdown", action="store_true")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = ap.parse_args(argv)
    if args.n_train < 1 or args.n_test < 1 or args.n_train + args.n_test > args.subjects:
        raise SystemExit("bench_finetune: need --n-train, --n-test >= 1 and their sum <= --subjects")
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    if args.code != "worktree" and "DEEPMIR_BENCH_CODE" not in os.environ:
        # run from a clean export, so that edits to the working tree during the run change nothing
        from benchmarks.bench_stress import export_code

        code_dir, sha = export_code(args.code, work)
        env = dict(os.environ, DEEPMIR_BENCH_CODE=str(code_dir), DEEPMIR_BENCH_COMMIT=sha,
                   PYTHONPATH=os.pathsep.join([str(code_dir), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
        os.execve(sys.executable, [sys.executable, str(Path(__file__).resolve()), *argv], env)
    import torch

    from deepmir_tasks.model.modelfile import DEFAULT_MODEL, lesion_rules

    torch.set_num_threads(args.threads)
    log = work / "log.txt"
    base_model = (args.model or DEFAULT_MODEL).resolve()
    rules = lesion_rules(base_model)   # the bundled record's rules, used for both models
    times = {}

    t0 = time.perf_counter()
    bids = work / "bids"
    subs = generate(bids, args.subjects, args.seed, args.condition, log)
    times["generate (reused when done)"] = time.perf_counter() - t0
    cache = work / "prepared"
    t0 = time.perf_counter()
    usable, refused = usable_subjects(bids, subs, args.n_train + args.n_test, cache, work)
    times["preprocess (reused when cached)"] = time.perf_counter() - t0
    train_subs, test_subs = usable[: args.n_train], usable[args.n_train:]
    train_view = split_view(bids, train_subs, work / "train_bids")
    test_view = split_view(bids, test_subs, work / "test_bids")
    print(f"fine-tuning set {train_subs}, test set {test_subs}; lesion rules {rules}", flush=True)

    t0 = time.perf_counter()
    before = score_model(base_model, "bundled", test_view, cache, rules, work)
    times["score bundled (predict test set)"] = time.perf_counter() - t0
    print("bundled: " + json.dumps({c: before["figures"][c] for c in ("cmb", "iron")}), flush=True)

    tuned = work / f"finetuned_{args.condition}.safetensors"   # checkpoint beside it: --resume continues
    rec_file = tuned.with_suffix(".json")
    done = rec_file.exists() and json.loads(rec_file.read_text())["training"].get("steps_done") == args.steps
    t0 = time.perf_counter()
    cmd = [sys.executable, "-c", "import sys; from pipelines.cli import main; sys.exit(main())", "train", train_view,
           "--annotations", train_view / "derivatives" / "annotations", "--out", tuned, "--init", base_model,
           *TRAIN_ARGS, "--steps", args.steps, "--lr", args.lr, "--cache-dir", cache, "--threads", args.threads,
           "--resume", "--no-progress"]
    if not done:
        _run(cmd, log)
    times["fine-tune (0 when reused)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    after = score_model(tuned, "finetuned", test_view, cache, rules, work)
    times["score fine-tuned (predict test set)"] = time.perf_counter() - t0

    train_rec = json.loads(rec_file.read_text())["training"]
    code = os.environ.get("DEEPMIR_BENCH_COMMIT", "working tree")
    print(f"\nFine-tuning benchmark: DEEPMIR {code}, condition {args.condition}, seeds {args.seed}-{args.seed + args.subjects - 1}; "
          f"fine-tuned on {', '.join(train_subs)} ({args.steps} steps, lr {args.lr:g}), tested on "
          f"{', '.join(test_subs)}; lesion-wise at {TOLERANCE_MM:g} mm, rules of the bundled record "
          f"(threshold {rules['threshold']}, min_voxels {rules['min_voxels']}, min_prob_cmb {rules['min_prob_cmb']}, "
          f"min_prob_iron {rules['min_prob_iron']}); work folder {work}")
    print(format_table([_row("bundled", before), _row(f"fine-tuned ({args.steps} steps)", after)], args.markdown))
    for sub, why in refused.items():
        print(f"not used: {sub} refused by preprocessing: {why}")
    for k, v in times.items():
        print(f"time: {k}: {v:.0f} s")
    if train_rec.get("seconds") is not None:
        print(f"training record: {train_rec.get('seconds')} s")
    print("train command: deepmir " + " ".join(map(str, cmd[3:])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
