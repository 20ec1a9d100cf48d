"""Reproduce the bundled default model: simulate, preprocess, train, calibrate, test.

``bash scripts/rebuild_bundled_model.sh`` rebuilds ``deepmir_tasks/models/deepmir_default.safetensors``
and its record with the recipe that produced them, stage by stage. ``--stage all`` runs data, one
training schedule and evaluate, without the hard-example fine-tuning.

Stages (``--stage``, default ``all``; each is cached on disk, so a stopped run continues; a
``--resume``d training stage whose checkpoint is already at its last step is skipped):

1. ``data``: a training cohort (``--n-train`` subjects, seed ``--train-seed``) and a held-out
   test cohort (``--n-test``, seed ``--test-seed``, never used in training) at full size
   (both cohorts in the ``write_bids_cohort`` layout; the training cohort with raised lesion
   counts, ``TRAIN_LESION_COUNTS``, the test cohort with the simulator's defaults), and every
   subject through the pipeline's own ``preprocess_subject`` (cached), ``--jobs`` at a time;
2. ``train``: :func:`workflows.train.train` (``--resume`` continues the checkpoint;
   ``--lesion-fraction``/``--mimic-fraction``/``--hard-fraction`` change the patch mix on resume);
   ``mine``: :func:`deepmir_tasks.model.train.mine_hard_examples` runs the current model on the
   training cohort and records its false positives and weak lesions, which a resumed ``train``
   with ``--hard-fraction`` > 0 then samples (not part of ``all``: it needs a trained model);
3. ``evaluate``: the lesion-extraction rules (voxel threshold, minimum size, per-class minimum
   peak probability; :data:`RULE_GRID`; the most sensitive at a precision of at least
   ``--min-precision``, default :data:`MIN_CALIBRATION_PRECISION`) chosen on a separate calibration cohort (``--n-val``
   subjects, seed ``--val-seed``, default lesion counts), then lesion-wise figures of the lesion
   table on the held-out test cohort, all written into the model record;
4. ``test``: the model as it is (rules from its record) on one more held-out cohort (use another
   ``--work`` and ``--test-seed``, after its ``data`` stage with ``--n-train 0 --n-val 0``), added
   to the record with the figures pooled over every test cohort.

``batchnorm`` (not part of ``all``; training already does it at every export) recomputes the
BatchNorm statistics of the model file ``--out`` on brain-centred crops of the training cohort
(:mod:`deepmir_tasks.model.batchnorm`) and writes it back with the cohort in its record, for a model
exported before training did so; run ``evaluate`` after it, since its lesion rules were calibrated on
the old statistics.
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
from deepmir_tasks.model.calibrate import (CALIBRATED_RULES, MIN_CALIBRATION_PRECISION, calibrate_rules,
                                          candidate_tables, predict_subjects, score_shipped, score_tables)

log = logging.getLogger(__name__)

DEFAULTS = dict(n_train=16, n_val=9, n_test=10, train_seed=1000, val_seed=800000, test_seed=910000, steps=6000, patch=32, batch=4,
                folds=1, fold=0, levels=5, base=16, max_width=128, validate_every=500, seed=0,
                checkpoint_seconds=120.0)


#: training cohort: lesion counts raised so that each subject holds many examples of each class
TRAIN_LESION_COUNTS = {"cmb": (15, 30), "iron": (4, 8), "calcification": (3, 6), "vein": (3, 8)}


def write_simulated_subject(root: Path, label: str, seed: int, lesion_counts=None, profile: str | None = None) -> Path:
    """Simulate one full-size subject and write it in the BIDS layout of ``write_bids_cohort``.

    ``profile``: the simulator's profile (None: its default; ``"randomised"``: every factor drawn
    over its real-world range)."""
    import nibabel as nib

    from deepmir_tasks.io import atomic_path, write_tsv
    from deepmir_tasks.simulate import simulate_subject

    sub = f"sub-{label}"
    anat = root / sub / "anat"
    ann = root / "derivatives" / "annotations" / sub / "anat"
    done = ann / f"{sub}_desc-truth_xfm.json"
    if done.exists():
        return root / sub
    sim = simulate_subject(seed, size="full", lesion_counts=lesion_counts, **({"profile": profile} if profile else {}))
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
    write_json({"seed": seed, "lesion_counts": lesion_counts, "profile": profile, "params": sim.params},
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
    root, label, seed, counts, cache, profile = args
    import os

    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    from deepmir_tasks.model.data import find_subjects
    from workflows.train import prepare_subject

    write_simulated_subject(root, label, seed, counts, profile)
    for sub in find_subjects(root, root / "derivatives" / "annotations"):
        if sub.participant_id == f"sub-{label}":
            prepare_subject(sub, cache)
    return label


def cohort_cache(cache: Path, cohort: str) -> Path:
    """Preprocessing cache of a cohort (the cohorts reuse participant labels, so never share one)."""
    return cache if cohort == "train" else cache.with_name(cache.name + f"_{cohort}")


def simulate_and_prepare(work: Path, cache: Path, n_train: int, n_test: int, train_seed: int, test_seed: int,
                         jobs: int = 2, progress: bool = True, n_val: int = 0, val_seed: int = 800000,
                         profile: str | None = None) -> dict:
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
        tasks += [(cohorts[name], lab, seed0 + i, counts, cache_dir, profile) for i, lab in enumerate(labels)]
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


def _describe_run(args, argv) -> dict:
    """The record's account of the data and of the command that rebuilds the model."""
    # the one command that rebuilds the model from nothing (staging options left out), and this run's
    extra = [f"--{k.replace('_', '-')} {getattr(args, k)}" for k, v in DEFAULTS.items() if getattr(args, k) != v]
    command = " ".join(["python -m pipelines.bundled_model", f"--work {args.work}", f"--out {args.out}",
                        f"--threads {args.threads}", *extra, *([f"--profile {args.profile}"] if args.profile else [])])
    this_run = " ".join(["python -m pipelines.bundled_model", *(argv if argv is not None else sys.argv[1:])])
    info = {"data": {"source": "deepmir_tasks.simulate.simulate_subject(seed, size='full', lesion_counts=...%s)"
                               % (f", profile={args.profile!r}" if args.profile else ""),
                     "train_cohort": {"n": args.n_train, "seeds": [args.train_seed, args.train_seed + args.n_train - 1],
                                      "lesion_counts": TRAIN_LESION_COUNTS},
                     "calibration_cohort": {"n": args.n_val, "seeds": [args.val_seed, args.val_seed + args.n_val - 1],
                                            "lesion_counts": "simulator defaults",
                                            "use": "choosing the per-class lesion probability thresholds"},
                     "test_cohort": {"n": args.n_test, "seeds": [args.test_seed, args.test_seed + args.n_test - 1],
                                     "lesion_counts": "simulator defaults"},
                     "preprocessing": "workflows.preprocess.preprocess_subject (voxel_size 1.0, defaults)"},
            "command": command, "this_run": this_run}
    return info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.bundled_model", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("work_tmp/bundled"))
    p.add_argument("--out", type=Path, default=Path("deepmir_tasks/models/deepmir_default.safetensors"))
    p.add_argument("--stage", default="all", choices=["all", "data", "train", "mine", "batchnorm", "evaluate", "test"])
    p.add_argument("--jobs", type=int, default=2, help="subjects simulated/preprocessed in parallel")
    p.add_argument("--profile", default=None, help="simulator profile of every cohort (e.g. randomised)")
    for k, v in DEFAULTS.items():
        p.add_argument("--" + k.replace("_", "-"), type=type(v), default=v)
    p.add_argument("--resume", nargs="?", const=True, default=None)
    p.add_argument("--init", type=Path, default=None, metavar="MODEL",
                   help="train stage: start from this model's weights (a new schedule; its modalities or more)")
    p.add_argument("--modalities", nargs="+", default=["t2", "swi", "qsm"], choices=["t2", "swi", "qsm"],
                   help="the model's inputs, in order (default: t2 swi qsm)")
    p.add_argument("--classes", nargs="+", default=["cmb", "iron"], choices=["cmb", "iron"],
                   help="the lesion classes the model learns (default: cmb iron; one of them: a single-class model)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate of the schedule (default 2e-3); on --resume replaces the checkpoint's, "
                        "so that a stretched schedule can continue at the rate the checkpoint was at")
    for name in ("lesion_fraction", "mimic_fraction", "hard_fraction", "bright_fraction", "modality_dropout"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=None,
                       help="patch mix; on --resume replaces the checkpoint's value")
    p.add_argument("--grow-small-cmb", type=int, default=None,
                   help="grow small CMB training labels by this many voxels; on --resume replaces the checkpoint's value")
    p.add_argument("--only-prepared", action="store_true",
                   help="train on the training subjects whose preprocessing has finished (while the data "
                        "stage still runs); a later --resume picks up the rest")
    p.add_argument("--stop-at", type=int, default=None, help="end this run after that step (resumable)")
    p.add_argument("--keep-rules", action="store_true",
                   help="evaluate stage: keep the lesion rules the record has calibrated and calibrate only "
                        "those it lacks")
    p.add_argument("--tta", action="store_true",
                   help="evaluate stage: calibrate and score with flip test-time augmentation, and record that "
                        "the pipeline must use it with this model (inference.tta)")
    p.add_argument("--min-precision", type=float, default=MIN_CALIBRATION_PRECISION,
                   help="evaluate stage: the operating precision of the calibration (the most sensitive rules "
                        "reaching it on the calibration cohort; default %(default)s)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import os

    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    from deepmir_tasks.model.train import TrainConfig
    from workflows.train import load_subjects, train

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "prepared"
    stages = ["data", "train", "evaluate"] if args.stage == "all" else [args.stage]
    cohorts = {"train": work / "train_bids", "test": work / "test_bids", "val": work / "val_bids"}
    if "data" in stages:
        cohorts = simulate_and_prepare(work, cache, args.n_train, args.n_test, args.train_seed, args.test_seed,
                                       jobs=args.jobs, progress=not args.no_progress, n_val=args.n_val,
                                       val_seed=args.val_seed, profile=args.profile)
    mix = {k: getattr(args, k) for k in ("lesion_fraction", "mimic_fraction", "hard_fraction", "bright_fraction",
                                         "modality_dropout", "grow_small_cmb")
           if getattr(args, k) is not None}
    lr = {} if args.lr is None else {"lr": args.lr}
    config = TrainConfig(modalities=tuple(args.modalities), classes=tuple(args.classes), levels=args.levels, base=args.base,
                         max_width=args.max_width, patch=args.patch, batch=args.batch, steps=args.steps,
                         seed=args.seed, folds=args.folds, fold=args.fold, validate_every=args.validate_every,
                         checkpoint_seconds=args.checkpoint_seconds, **mix, **lr)
    info = _describe_run(args, argv)
    if "mine" in stages:
        from deepmir_tasks.model.normalize import DEFAULT_NORMALIZATION
        from deepmir_tasks.model.predictor import Predictor
        from deepmir_tasks.model.train import mine_hard_examples

        subs = load_subjects(cohorts["train"], cohorts["train"] / "derivatives" / "annotations", cache, config,
                             DEFAULT_NORMALIZATION, None, with_volumes=True, progress=not args.no_progress)
        counts = mine_hard_examples(Predictor.from_file(args.out), subs, cache)
        print(json.dumps(counts, indent=1))
    if "train" in stages and args.resume:
        from deepmir_tasks.model.train import checkpoint_path, load_checkpoint

        ckpt = checkpoint_path(args.out) if args.resume is True else Path(args.resume)
        done = int(load_checkpoint(ckpt)["step"]) if ckpt.exists() else 0
        if done >= min(args.steps, args.stop_at or args.steps):
            log.info("checkpoint %s is at step %d: this training stage is done", ckpt, done)
            stages.remove("train")
    if "train" in stages:
        if args.only_prepared:
            cohorts = dict(cohorts, train=ready_view(cohorts["train"], cache, work / "train_ready"))
        train(cohorts["train"], cohorts["train"] / "derivatives" / "annotations", args.out, config,
              cache_dir=cache, resume=args.resume, threads=args.threads, device=args.device,
              progress=not args.no_progress, training_info=info, stop_at=args.stop_at, overrides={**mix, **lr},
              init=args.init)
    if "batchnorm" in stages:
        recompute_model_batchnorm(args.out, cohorts["train"], cache, config, described_cohort(info, "train_cohort"),
                                  progress=not args.no_progress)
    if "evaluate" in stages:
        evaluate_bundled(args.out, cohorts, cache, config, info, keep_rules=args.keep_rules,
                         min_precision=args.min_precision, tta=args.tta)
    if "test" in stages:
        test_bundled(args.out, cohorts["test"], cohort_cache(cache, "test"), config, described_cohort(info, "test_cohort"))
    return 0


def described_cohort(info: dict, name: str) -> dict:
    """The record's description of one cohort of the run (``info["data"][name]``) with the simulator it
    came from."""
    return dict(info["data"][name], source=info["data"]["source"])


def model_and_cohort(model, bids: Path, cache: Path, config, n_subjects: int | None = None, progress: bool = True):
    """``(network, record, subjects)``: the model file and the first ``n_subjects`` (default all) of the
    cohort ``bids`` (prepared in ``cache``), loaded for the model's modalities, classes and normalisation."""
    import dataclasses

    from deepmir_tasks.model.data import find_subjects
    from deepmir_tasks.model.modelfile import load_model
    from workflows.train import load_subjects

    net, rec = load_model(model)
    config = dataclasses.replace(config, modalities=tuple(rec["modalities"]), classes=tuple(rec["classes"][1:]))
    ann = bids / "derivatives" / "annotations"
    keys = [s.key for s in find_subjects(bids, ann, config.modalities)][:n_subjects]
    return net, rec, load_subjects(bids, ann, cache, config, rec["normalization"], keys, progress=progress)


def recompute_model_batchnorm(out: Path, bids: Path, cache: Path, config, cohort: dict, progress: bool = True) -> dict:
    """Recompute the BatchNorm statistics of the model file ``out`` on the training cohort ``bids``
    (prepared in ``cache``; described in the record by ``cohort``) and write it back; its record says
    how and on which cohort (``training.batchnorm``). Returns that entry."""
    from deepmir_tasks.model.batchnorm import describe, recompute_batchnorm
    from deepmir_tasks.model.modelfile import save_model

    net, rec, subs = model_and_cohort(out, bids, cache, config, progress=progress)
    recompute_batchnorm(net, subs, seed=config.seed)
    entry = dict(describe(seed=config.seed), cohort=cohort, bids_dir=str(bids))
    rec["training"] = dict(rec.get("training", {}), batchnorm=entry)
    save_model(net, out, rec)
    log.info("BatchNorm statistics of %s recomputed on %d subjects of %s", out, len(subs), bids)
    return entry


#: the record's ``validation`` entries :func:`evaluate_bundled` writes; the others (figures measured
#: elsewhere, with the rules it replaces) move to ``validation.before_this_evaluation``
_EVALUATED = ("rule", "calibration_cohort", "held_out_test", "training_history", "seconds", "before_this_evaluation")


def measured_elsewhere(rec: dict) -> dict:
    """The entries of a record's ``validation`` that :func:`evaluate_bundled` does not recompute
    (figures measured elsewhere, e.g. the independent generator's), with the ``inference`` they were
    measured with, and the record's own earlier ``before_this_evaluation`` nested inside, so that no
    evaluation loses what an older one kept; empty when there are none. A record straight from
    training (no evaluation's ``rule`` yet) holds only the training's own figures, which
    ``training_history`` keeps: nothing was measured elsewhere."""
    validation = rec.get("validation") or {}
    if "rule" not in validation:
        return validation.get("before_this_evaluation") or {}
    before = {k: v for k, v in validation.items() if k not in _EVALUATED}
    earlier = validation.get("before_this_evaluation")
    if not before:
        return earlier or {}
    return {"inference": rec.get("inference"), **before, **({"before_this_evaluation": earlier} if earlier else {})}


def evaluate_bundled(out: Path, cohorts: dict, cache: Path, config, info: dict, keep_rules: bool = False,
                     min_precision: float = MIN_CALIBRATION_PRECISION, tta: bool = False) -> dict:
    """Calibrate the lesion rules on the calibration cohort, score the test cohort, update the record.

    ``keep_rules`` holds the rules the record has already calibrated and calibrates only those it
    lacks (a rule added after the model was calibrated); ``min_precision`` is the operating
    precision of :func:`calibrate_rules`; ``tta``: predict with flip test-time augmentation
    throughout, and record it (``inference.tta``), since the rules are calibrated on its probabilities.

    Both go through the pipeline's own lesion extraction (:func:`extract_lesions`), so the figures
    are those of the lesion table a user gets. The record also keeps, as ablations, the test
    figures of the network's argmax label map (every candidate, no rule) and of the calibrated rules
    without the ``vein_like`` rule. Entries of the record's ``validation`` measured elsewhere with
    the previous rules (the independent generator's, the modality table) are kept, with those rules,
    under ``validation.before_this_evaluation``.
    """
    from deepmir_tasks.model.modelfile import LESION_RULE_DEFAULTS, load_record, record_path
    from deepmir_tasks.model.normalize import DEFAULT_NORMALIZATION
    from deepmir_tasks.model.predictor import Predictor
    from workflows.train import load_subjects

    rec = load_record(out)
    pred = Predictor.from_file(out, tta=tta)
    t0 = time.perf_counter()
    rules, calib = dict(LESION_RULE_DEFAULTS), None
    val_dir = cohorts.get("val")
    if val_dir is not None and val_dir.exists() and any(val_dir.glob("sub-*")):
        val = load_subjects(val_dir, val_dir / "derivatives" / "annotations", cohort_cache(cache, "val"), config,
                            DEFAULT_NORMALIZATION, None, with_volumes=True, progress=False)
        calibrated = (rec.get("inference") or {}).get("lesions") or {}
        hold = {k: v for k, v in calibrated.items() if k in CALIBRATED_RULES} if keep_rules else None
        rules, figures = calibrate_rules(val, predict_subjects(pred, val), hold, classes=pred.classes[1:],
                                         min_precision=min_precision)
        calib = {"subjects": len(val), "cohort": described_cohort(info, "calibration_cohort"),
                 "rules": rules, "figures": figures, "held": sorted(hold or {}), "min_precision": min_precision}
        log.info("calibrated lesion rules %s: %s", rules, json.dumps(figures))
        del val
    ann = cohorts["test"] / "derivatives" / "annotations"
    test = load_subjects(cohorts["test"], ann, cohort_cache(cache, "test"), config, DEFAULT_NORMALIZATION, None,
                         with_volumes=True, progress=False)
    t1 = time.perf_counter()
    tprobs = predict_subjects(pred, test)
    t_pred = (time.perf_counter() - t1) / max(len(test), 1)
    tables, shipped, no_vein = score_shipped(test, tprobs, rules)
    argmax_tables = tables if rules["threshold"] == 0.5 else candidate_tables(test, tprobs, 0.5)
    everything = dict(LESION_RULE_DEFAULTS, min_voxels=1)
    argmax = score_tables(test, [t.assign(reason=None) for t in argmax_tables], everything)
    before = measured_elsewhere(rec)
    rec["inference"] = dict(rec.get("inference") or {}, lesions=rules, tta=bool(tta))
    history = rec.get("validation", {}).get("training_history")
    if history is None:
        history = rec.get("validation")
    rec["validation"] = {
        "rule": "lesion-wise, on the lesion table of the pipeline's extraction: a detection counts when "
                "its centroid lies within 5 mm of a true lesion of the same class, matched one-to-one "
                "greedily by distance; on_calcification / on_vein count kept lesions within 5 mm of a "
                "simulated calcification / vein",
        "calibration_cohort": calib,
        "held_out_test": {"cohort": described_cohort(info, "test_cohort"), "as_shipped": shipped,
                          "without_vein_rule": no_vein, "network_only": argmax,
                          "seconds_per_subject_predict": round(t_pred, 1)},
        "training_history": history,
        "seconds": round(time.perf_counter() - t0, 1),
        **({"before_this_evaluation": before} if before else {}),
    }
    runs = rec["training"].get("runs", [])
    rec["training"].update({k: v for k, v in info.items() if k != "this_run"})
    rec["training"]["runs"] = runs + [info["this_run"]]
    write_json(rec, record_path(out))
    print(json.dumps({"rules": rules, **rec["validation"]["held_out_test"]}, indent=2))
    return rec


def test_bundled(out: Path, bids: Path, cache: Path, config, cohort: dict) -> dict:
    """Score the model as it is (lesion rules from its record, nothing chosen here) on one more
    held-out test cohort; add it to the record's ``validation.more_test_cohorts`` and recompute
    ``validation.pooled_test``, the counts pooled over every test cohort."""
    from deepmir_tasks.model.modelfile import lesion_rules, load_record, record_path
    from deepmir_tasks.model.normalize import DEFAULT_NORMALIZATION
    from deepmir_tasks.model.predictor import Predictor
    from deepmir_tasks.model.train import summarise_metrics
    from workflows.train import load_subjects

    rec = load_record(out)
    rules = lesion_rules(out)
    subjects = load_subjects(bids, bids / "derivatives" / "annotations", cache, config, DEFAULT_NORMALIZATION, None,
                             with_volumes=True, progress=False)
    _, shipped, no_vein = score_shipped(subjects, predict_subjects(Predictor.from_file(out), subjects), rules)
    result = {"cohort": cohort, "as_shipped": shipped, "without_vein_rule": no_vein}
    val = rec["validation"]
    more = [m for m in val.get("more_test_cohorts", []) if m["cohort"]["seeds"] != cohort["seeds"]] + [result]
    val["more_test_cohorts"] = more
    runs = [val["held_out_test"]["as_shipped"]] + [m["as_shipped"] for m in more]
    counts = [{c: {k: v for k, v in r[c].items() if k not in ("sensitivity", "precision", "f1")}
               for c in ("cmb", "iron")} for r in runs]
    val["pooled_test"] = {"cohorts": [val["held_out_test"]["cohort"]] + [m["cohort"] for m in more],
                          "n_subjects": sum(r["n_subjects"] for r in runs),
                          **summarise_metrics(counts, ("cmb", "iron"))}
    write_json(rec, record_path(out))
    print(json.dumps({"this_cohort": result["as_shipped"], "pooled": val["pooled_test"]}, indent=2))
    return rec


if __name__ == "__main__":
    sys.exit(main())
