"""Reproduce the bundled default model: simulate, preprocess, train, calibrate, test.

One command rebuilds ``deepmir_tasks/models/deepmir_default.safetensors`` and its record::

    python -m deepmir_tasks.model.bundled --work work_tmp/bundled \\
        --out deepmir_tasks/models/deepmir_default.safetensors

Stages (``--stage``, default ``all``; each is cached on disk, so a stopped run continues):

1. ``data``: a training cohort (``--n-train`` subjects, seed ``--train-seed``) and a held-out
   test cohort (``--n-test``, seed ``--test-seed``, never used in training) at full size
   (both cohorts in the ``write_bids_cohort`` layout; the training cohort with raised lesion
   counts, ``TRAIN_LESION_COUNTS``, the test cohort with the simulator's defaults), and every
   subject through the pipeline's own ``preprocess_subject`` (cached), ``--jobs`` at a time;
2. ``train``: :func:`deepmir_tasks.model.train.train` (``--resume`` continues the checkpoint);
3. ``evaluate``: per-class minimum lesion peak probabilities chosen on a separate calibration
   cohort (``--n-val`` subjects, seed ``--val-seed``, default lesion counts), then lesion-wise
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

DEFAULTS = dict(n_train=16, n_val=3, n_test=6, train_seed=1000, val_seed=800000, test_seed=900000, steps=6000, patch=32, batch=4,
                folds=1, fold=0, levels=5, base=16, max_width=128, validate_every=500, seed=0,
                checkpoint_seconds=120.0)


#: training cohort: lesion counts raised so that each subject holds many examples of each class
TRAIN_LESION_COUNTS = {"cmb": (15, 30), "iron": (4, 8), "calcification": (3, 6), "vein": (3, 8)}


def write_simulated_subject(root: Path, label: str, seed: int, lesion_counts=None) -> Path:
    """Simulate one full-size subject and write it in the BIDS layout of ``write_bids_cohort``."""
    import nibabel as nib

    from deepmir_tasks.io import atomic_path, write_tsv
    from deepmir_tasks.simulate import simulate_subject

    sub = f"sub-{label}"
    anat = root / sub / "anat"
    ann = root / "derivatives" / "annotations" / sub / "anat"
    done = ann / f"{sub}_desc-truth_xfm.json"
    if done.exists():
        return root / sub
    sim = simulate_subject(seed, size="full", lesion_counts=lesion_counts)
    anat.mkdir(parents=True, exist_ok=True)
    ann.mkdir(parents=True, exist_ok=True)

    def save(img, path):
        with atomic_path(path) as tmp:
            nib.save(img, str(tmp))

    save(sim.t2, anat / f"{sub}_T2w.nii.gz")
    save(sim.swi, anat / f"{sub}_swi.nii.gz")
    save(sim.qsm, anat / f"{sub}_Chimap.nii.gz")
    save(sim.dseg, ann / f"{sub}_space-T2w_dseg.nii.gz")
    save(sim.brain_mask, ann / f"{sub}_space-T2w_desc-brain_mask.nii.gz")
    write_tsv(sim.lesions, ann / f"{sub}_lesions.tsv")
    write_json({"seed": seed, "lesion_counts": lesion_counts, "params": sim.params},
               anat / f"{sub}_simulation.json")
    write_json({"swi_to_t2": np.asarray(sim.swi_to_t2).tolist()}, done)
    return root / sub


def _write_dataset_files(root: Path, labels: list[str], name: str) -> None:
    import pandas as pd

    from deepmir_tasks.io import write_tsv

    write_json({"Name": name, "BIDSVersion": "1.9.0", "DatasetType": "raw"}, root / "dataset_description.json")
    write_tsv(pd.DataFrame({"participant_id": [f"sub-{x}" for x in labels]}), root / "participants.tsv")
    ann = root / "derivatives" / "annotations"
    write_json({"Name": f"{name}: simulated truth", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
                "GeneratedBy": [{"Name": "deepmir_tasks.simulate"}]}, ann / "dataset_description.json")
    write_tsv(pd.DataFrame({"index": [0, 1, 2], "name": ["background", "cmb", "iron"]}), ann / "dseg.tsv")


def _make_and_prepare(args) -> str:
    root, label, seed, counts, cache = args
    import os

    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    from deepmir_tasks.model.train import find_subjects, prepare_subject

    write_simulated_subject(root, label, seed, counts)
    for sub in find_subjects(root, root / "derivatives" / "annotations"):
        if sub.participant_id == f"sub-{label}":
            prepare_subject(sub, cache)
    return label


def cohort_cache(cache: Path, cohort: str) -> Path:
    """Preprocessing cache of a cohort (the cohorts reuse participant labels, so never share one)."""
    return cache if cohort == "train" else cache.with_name(cache.name + f"_{cohort}")


def simulate_and_prepare(work: Path, cache: Path, n_train: int, n_test: int, train_seed: int, test_seed: int,
                         jobs: int = 2, progress: bool = True, n_val: int = 0, val_seed: int = 800000) -> dict:
    """Simulate both cohorts (training: raised lesion counts; test: default counts) and preprocess them."""
    from concurrent.futures import ProcessPoolExecutor

    from tqdm import tqdm

    cohorts = {"train": work / "train_bids", "test": work / "test_bids", "val": work / "val_bids"}
    tasks = []
    for name, n, seed0, counts in (("train", n_train, train_seed, TRAIN_LESION_COUNTS),
                                   ("test", n_test, test_seed, None), ("val", n_val, val_seed, None)):
        if n <= 0:
            continue
        cache_dir = cohort_cache(cache, name)
        labels = [f"{i:02d}" for i in range(1, n + 1)]
        cohorts[name].mkdir(parents=True, exist_ok=True)
        _write_dataset_files(cohorts[name], labels, f"DEEPMIR simulated {name} cohort")
        tasks += [(cohorts[name], lab, seed0 + i, counts, cache_dir) for i, lab in enumerate(labels)]
    with ProcessPoolExecutor(max_workers=max(1, jobs)) as pool:
        for _ in tqdm(pool.map(_make_and_prepare, tasks), total=len(tasks), desc="simulate+prepare",
                      disable=not progress):
            pass
    return cohorts


def ready_view(bids: Path, cache: Path, view: Path) -> Path:
    """A BIDS folder of symlinks to the subjects of ``bids`` whose preprocessing is cached."""
    import os

    ann_src, ann_dst = bids / "derivatives" / "annotations", view / "derivatives" / "annotations"
    ann_dst.mkdir(parents=True, exist_ok=True)
    for name in ("dataset_description.json", "participants.tsv"):
        if (bids / name).exists() and not (view / name).exists():
            os.symlink((bids / name).resolve(), view / name)
    n = 0
    for sub in sorted(bids.glob("sub-*")):
        if (cache / sub.name / "prepared.json").exists() and (ann_src / sub.name).exists():
            for src, dst in ((sub, view / sub.name), (ann_src / sub.name, ann_dst / sub.name)):
                if not dst.exists():
                    os.symlink(src.resolve(), dst)
            n += 1
    log.info("training on the %d prepared subjects of %s", n, bids)
    return view


def predict_subjects(predictor, subjects) -> list[np.ndarray]:
    return [predictor.predict(s.extra["volumes"], s.mask).astype(np.float16) for s in subjects]


def metrics_for(predictor, subjects, probs, inference=None) -> dict:
    """Lesion-wise figures of ``predictor`` with its record's ``inference`` settings replaced."""
    from deepmir_tasks.model.predictor import DSEG_LABELS
    from deepmir_tasks.model.train import lesion_metrics, summarise_metrics

    old = predictor.record.get("inference")
    predictor.record["inference"] = dict(old or {}, **(inference or {}))
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
        predictor.record["inference"] = old
    return {"n_subjects": len(subjects), **summarise_metrics(per, classes)}


def calibrate_component_threshold(predictor, subjects, probs,
                                  grid=(0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999)) -> dict:
    """Per-class minimum peak probability of a kept lesion that maximises lesion-wise F1 on
    ``subjects`` (voxel labels stay argmax; ties go to the lower threshold)."""
    classes = [c for c in predictor.classes if c != "background"]
    best = {}
    for c in classes:
        scores = []
        for t in grid:
            m = metrics_for(predictor, subjects, probs, {"component_min_prob": {**best, c: t}})[c]
            f1 = m["f1"] if m["f1"] == m["f1"] else 0.0
            scores.append((round(f1, 6), -t))
        best[c] = -max(scores)[1]
    return best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m deepmir_tasks.model.bundled", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("work_tmp/bundled"))
    p.add_argument("--out", type=Path, default=Path("deepmir_tasks/models/deepmir_default.safetensors"))
    p.add_argument("--stage", default="all", choices=["all", "data", "train", "evaluate"])
    p.add_argument("--jobs", type=int, default=2, help="subjects simulated/preprocessed in parallel")
    for k, v in DEFAULTS.items():
        p.add_argument("--" + k.replace("_", "-"), type=type(v), default=v)
    p.add_argument("--resume", nargs="?", const=True, default=None)
    p.add_argument("--only-prepared", action="store_true",
                   help="train on the training subjects whose preprocessing has finished (while the data "
                        "stage still runs); a later --resume picks up the rest")
    p.add_argument("--stop-at", type=int, default=None, help="end this run after that step (resumable)")
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
    stages = ["data", "train", "evaluate"] if args.stage == "all" else [args.stage]
    cohorts = {"train": work / "train_bids", "test": work / "test_bids", "val": work / "val_bids"}
    if "data" in stages:
        cohorts = simulate_and_prepare(work, cache, args.n_train, args.n_test, args.train_seed, args.test_seed,
                                       jobs=args.jobs, progress=not args.no_progress, n_val=args.n_val,
                                       val_seed=args.val_seed)
    config = TrainConfig(levels=args.levels, base=args.base, max_width=args.max_width, patch=args.patch,
                         batch=args.batch, steps=args.steps, seed=args.seed, folds=args.folds, fold=args.fold,
                         validate_every=args.validate_every, checkpoint_seconds=args.checkpoint_seconds)
    # the one command that rebuilds the model from nothing (staging options left out), and this run's
    extra = [f"--{k.replace('_', '-')} {getattr(args, k)}" for k, v in DEFAULTS.items() if getattr(args, k) != v]
    command = " ".join(["python -m deepmir_tasks.model.bundled", f"--work {args.work}", f"--out {args.out}",
                        f"--threads {args.threads}", *extra])
    this_run = " ".join(["python -m deepmir_tasks.model.bundled", *(argv if argv is not None else sys.argv[1:])])
    info = {"data": {"source": "deepmir_tasks.simulate.simulate_subject(seed, size='full', lesion_counts=...)",
                     "train_cohort": {"n": args.n_train, "seeds": [args.train_seed, args.train_seed + args.n_train - 1],
                                      "lesion_counts": TRAIN_LESION_COUNTS},
                     "calibration_cohort": {"n": args.n_val, "seeds": [args.val_seed, args.val_seed + args.n_val - 1],
                                            "lesion_counts": "simulator defaults",
                                            "use": "choosing the per-class lesion probability thresholds"},
                     "test_cohort": {"n": args.n_test, "seeds": [args.test_seed, args.test_seed + args.n_test - 1],
                                     "lesion_counts": "simulator defaults"},
                     "preprocessing": "deepmir_tasks.preprocess.preprocess_subject (voxel_size 1.0, defaults)"},
            "command": command, "this_run": this_run}
    if "train" in stages:
        if args.only_prepared:
            cohorts = dict(cohorts, train=ready_view(cohorts["train"], cache, work / "train_ready"))
        train(cohorts["train"], cohorts["train"] / "derivatives" / "annotations", args.out, config,
              cache_dir=cache, resume=args.resume, threads=args.threads, device=args.device,
              progress=not args.no_progress, training_info=info, stop_at=args.stop_at)
    if "evaluate" in stages:
        evaluate_bundled(args.out, cohorts, cache, config, info)
    return 0


def evaluate_bundled(out: Path, cohorts: dict, cache: Path, config, info: dict) -> dict:
    """Choose lesion thresholds on the calibration cohort, score the test cohort, update the record."""
    from deepmir_tasks.model.modelfile import load_record, record_path
    from deepmir_tasks.model.normalize import DEFAULT_NORMALIZATION
    from deepmir_tasks.model.predictor import Predictor
    from deepmir_tasks.model.train import load_subjects

    rec = load_record(out)
    pred = Predictor.from_file(out)
    pred.record["inference"] = {k: v for k, v in (pred.record.get("inference") or {}).items()
                                if k not in ("thresholds", "component_min_prob")}
    t0 = time.perf_counter()
    calib = None
    val_dir = cohorts.get("val")
    if val_dir is not None and val_dir.exists() and any(val_dir.glob("sub-*")):
        val = load_subjects(val_dir, val_dir / "derivatives" / "annotations", cohort_cache(cache, "val"), config,
                            DEFAULT_NORMALIZATION, None, with_volumes=True, progress=False)
        vprobs = predict_subjects(pred, val)
        comp = calibrate_component_threshold(pred, val, vprobs)
        calib = {"subjects": len(val), "component_min_prob": comp,
                 "argmax": metrics_for(pred, val, vprobs),
                 "calibrated": metrics_for(pred, val, vprobs, {"component_min_prob": comp})}
        del val, vprobs
    ann = cohorts["test"] / "derivatives" / "annotations"
    test = load_subjects(cohorts["test"], ann, cohort_cache(cache, "test"), config, DEFAULT_NORMALIZATION, None,
                         with_volumes=True, progress=False)
    t1 = time.perf_counter()
    tprobs = predict_subjects(pred, test)
    t_pred = (time.perf_counter() - t1) / max(len(test), 1)
    test_argmax = metrics_for(pred, test, tprobs)
    inference = dict(pred.record.get("inference") or {})
    if calib:
        inference["component_min_prob"] = calib["component_min_prob"]
    test_final = metrics_for(pred, test, tprobs, inference)
    rec["inference"] = dict(inference, thresholds=None)
    history = rec.get("validation", {}).get("training_history")
    if history is None:
        history = rec.get("validation")
    rec["validation"] = {
        "rule": "lesion-wise: a detection counts when its centroid lies within 5 mm of a true lesion of "
                "the same class, matched one-to-one greedily by distance; on_calcification / on_vein count "
                "predicted lesions within 5 mm of a simulated calcification / vein",
        "calibration_cohort": calib,
        "held_out_test": {"cohort": info["data"]["test_cohort"], "argmax": test_argmax,
                          "as_shipped": test_final,
                          "seconds_per_subject_predict": round(t_pred, 1)},
        "training_history": history,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    runs = rec["training"].get("runs", [])
    rec["training"].update({k: v for k, v in info.items() if k != "this_run"})
    rec["training"]["runs"] = runs + [info["this_run"]]
    write_json(rec, record_path(out))
    print(json.dumps(rec["validation"]["held_out_test"], indent=2))
    return rec


if __name__ == "__main__":
    sys.exit(main())
