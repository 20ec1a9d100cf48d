"""Reproduce the bundled default model: simulate, preprocess, train, calibrate, test.

One command rebuilds ``deepmir_tasks/models/deepmir_default.safetensors`` and its record::

    python -m deepmir_tasks.model.bundled --work work_tmp/bundled \\
        --out deepmir_tasks/models/deepmir_default.safetensors

Stages (``--stage``, default ``all``; each is cached on disk, so a stopped run continues):

1. ``simulate``: a training cohort (``--n-train`` subjects, seed ``--train-seed``) and a held-out
   test cohort (``--n-test``, seed ``--test-seed``, never used in training) with
   ``deepmir_tasks.simulate.write_bids_cohort`` at full size;
2. ``prepare``: every subject through the pipeline's own ``preprocess_subject`` (cached);
3. ``train``: :func:`deepmir_tasks.model.train.train` (``--resume`` continues the checkpoint);
4. ``evaluate``: per-class probability thresholds chosen on the validation fold, then lesion-wise
   figures on the held-out test cohort written into the model record.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from deepmir_tasks.io import write_json

log = logging.getLogger(__name__)

DEFAULTS = dict(n_train=32, n_test=8, train_seed=1000, test_seed=900000, steps=6000, patch=48, batch=2,
                folds=8, fold=0, levels=5, base=16, max_width=128, validate_every=500, seed=0)


def simulate_cohorts(work: Path, n_train: int, n_test: int, train_seed: int, test_seed: int) -> dict:
    from deepmir_tasks.simulate import write_bids_cohort

    out = {}
    for name, n, seed in (("train", n_train, train_seed), ("test", n_test, test_seed)):
        root = work / f"{name}_bids"
        marker = root / ".deepmir_simulated.json"
        if marker.exists() and json.loads(marker.read_text()).get("n") == n:
            out[name] = root
            continue
        t0 = time.perf_counter()
        labels = write_bids_cohort(root, n, seed=seed, size="full")
        write_json({"n": n, "seed": seed, "labels": labels, "seconds": round(time.perf_counter() - t0, 1)}, marker)
        out[name] = root
    return out


def prepare_all(bids: Path, cache: Path, progress=True) -> None:
    from tqdm import tqdm

    from deepmir_tasks.model.train import find_subjects, prepare_subject

    for sub in tqdm(find_subjects(bids, bids / "derivatives" / "annotations"), desc=f"prepare {bids.name}",
                    disable=not progress):
        prepare_subject(sub, cache)


def predict_subjects(predictor, subjects) -> list[np.ndarray]:
    return [predictor.predict(s.extra["volumes"], s.mask) for s in subjects]


def metrics_for(predictor, subjects, probs, thresholds=None) -> dict:
    from deepmir_tasks.model.predictor import DSEG_LABELS
    from deepmir_tasks.model.train import lesion_metrics, summarise_metrics

    predictor.record.setdefault("inference", {})
    old = predictor.record["inference"].get("thresholds")
    predictor.record["inference"]["thresholds"] = thresholds
    per = []
    classes = [c for c in predictor.classes if c in DSEG_LABELS and c != "background"]
    try:
        for s, p in zip(subjects, probs):
            lab = predictor.labels(p, s.mask)
            dseg = np.zeros(lab.shape, np.uint8)
            for i, name in enumerate(predictor.classes):
                if name in DSEG_LABELS:
                    dseg[lab == i] = DSEG_LABELS[name]
            per.append(lesion_metrics(dseg, s.dseg, s.affine, classes, other_xyz=s.extra.get("mimics")))
    finally:
        predictor.record["inference"]["thresholds"] = old
    return {"n_subjects": len(subjects), **summarise_metrics(per, classes)}


def calibrate_thresholds(predictor, subjects, probs, grid=(0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)) -> dict:
    """Per-class thresholds that maximise lesion-wise F1 on ``subjects`` (one class at a time)."""
    classes = [c for c in predictor.classes if c != "background"]
    best = {c: 0.5 for c in classes}
    for c in classes:
        scores = []
        for t in grid:
            m = metrics_for(predictor, subjects, probs, dict(best, **{c: t}))[c]
            f1 = m["f1"] if m["f1"] == m["f1"] else 0.0
            scores.append((f1, -abs(t - 0.5), t))
        best[c] = max(scores)[2]
    return best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m deepmir_tasks.model.bundled", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("work_tmp/bundled"))
    p.add_argument("--out", type=Path, default=Path("deepmir_tasks/models/deepmir_default.safetensors"))
    p.add_argument("--stage", default="all", choices=["all", "simulate", "prepare", "train", "evaluate"])
    for k, v in DEFAULTS.items():
        p.add_argument("--" + k.replace("_", "-"), type=type(v), default=v)
    p.add_argument("--resume", nargs="?", const=True, default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import os

    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    from deepmir_tasks.model.train import TrainConfig, load_subjects, train

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "prepared"
    stages = ["simulate", "prepare", "train", "evaluate"] if args.stage == "all" else [args.stage]
    cohorts = simulate_cohorts(work, args.n_train, args.n_test, args.train_seed, args.test_seed) \
        if "simulate" in stages or args.stage == "all" else {"train": work / "train_bids", "test": work / "test_bids"}
    if "prepare" in stages:
        for name in ("train", "test"):
            prepare_all(cohorts[name], cache, progress=not args.no_progress)
    config = TrainConfig(levels=args.levels, base=args.base, max_width=args.max_width, patch=args.patch,
                         batch=args.batch, steps=args.steps, seed=args.seed, folds=args.folds, fold=args.fold,
                         validate_every=args.validate_every)
    command = " ".join(["python -m deepmir_tasks.model.bundled", *(argv if argv is not None else sys.argv[1:])])
    info = {"data": {"source": "deepmir_tasks.simulate.write_bids_cohort (size='full')",
                     "train_cohort": {"n": args.n_train, "seed": args.train_seed},
                     "test_cohort": {"n": args.n_test, "seed": args.test_seed}},
            "command": command}
    if "train" in stages:
        train(cohorts["train"], cohorts["train"] / "derivatives" / "annotations", args.out, config,
              cache_dir=cache, resume=args.resume, threads=args.threads, device=args.device,
              progress=not args.no_progress, training_info=info)
    if "evaluate" in stages:
        evaluate_bundled(args.out, cohorts, cache, config, info)
    return 0


def evaluate_bundled(out: Path, cohorts: dict, cache: Path, config, info: dict) -> dict:
    """Calibrate thresholds on the validation fold, score the test cohort, update the record."""
    from deepmir_tasks.model.modelfile import load_record, record_path
    from deepmir_tasks.model.normalize import DEFAULT_NORMALIZATION
    from deepmir_tasks.model.predictor import Predictor
    from deepmir_tasks.model.train import find_subjects, load_subjects, split_folds

    rec = load_record(out)
    pred = Predictor.from_file(out)
    val_keys = rec.get("training", {}).get("subjects_validation") or []
    t0 = time.perf_counter()
    thresholds = None
    if val_keys:
        ann = cohorts["train"] / "derivatives" / "annotations"
        val = load_subjects(cohorts["train"], ann, cache, config, DEFAULT_NORMALIZATION, val_keys,
                            with_volumes=True, progress=False)
        vprobs = predict_subjects(pred, val)
        thresholds = calibrate_thresholds(pred, val, vprobs)
        val_argmax = metrics_for(pred, val, vprobs, None)
        val_cal = metrics_for(pred, val, vprobs, thresholds)
    ann = cohorts["test"] / "derivatives" / "annotations"
    test = load_subjects(cohorts["test"], ann, cache, config, DEFAULT_NORMALIZATION, None,
                         with_volumes=True, progress=False)
    tprobs = predict_subjects(pred, test)
    test_argmax = metrics_for(pred, test, tprobs, None)
    test_cal = metrics_for(pred, test, tprobs, thresholds) if thresholds else test_argmax
    rec.setdefault("inference", {})["thresholds"] = thresholds
    rec["validation"] = {
        "rule": "lesion-wise: a detection counts when its centroid lies within 5 mm of a true lesion of "
                "the same class, matched one-to-one greedily by distance; on_calcification counts "
                "predicted lesions within 5 mm of a simulated calcification",
        "validation_fold": {"subjects": val_keys, "argmax": val_argmax if val_keys else None,
                            "thresholds": thresholds, "calibrated": val_cal if val_keys else None},
        "held_out_test": {"cohort": info["data"]["test_cohort"], "argmax": test_argmax,
                          "with_thresholds": test_cal},
        "training_history": rec.get("validation", {}).get("training_history")
        or rec.get("validation"),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    rec["training"].update({k: v for k, v in info.items() if k not in rec["training"]})
    write_json(rec, record_path(out))
    print(json.dumps(rec["validation"]["held_out_test"], indent=2))
    return rec


if __name__ == "__main__":
    sys.exit(main())
