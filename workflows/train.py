"""Training data through the pipeline's own preprocessing graph, and training from a BIDS dataset.

The loop, the loss, the sampler and the scoring are plain functions in :mod:`deepmir_tasks.model`;
what needs the preprocessing graph (:func:`workflows.preprocess.preprocess_subject`) lives here, a
layer above them:

* :func:`prepare_subject` preprocesses one annotated subject (cached on disk) and brings its
  annotation into the working grid with ``resample_labels``, so a rerun skips it;
* :func:`load_subjects` finds, prepares and loads the subjects of a dataset;
* :func:`train` splits them by subject, loads them and runs :func:`deepmir_tasks.model.train.fit`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from deepmir_tasks.io import InputError, load_image, write_json
from deepmir_tasks.model.config import TrainConfig
from deepmir_tasks.model.data import (HARD_EXAMPLES, SubjectFiles, TrainSubject, find_subjects,
                                      load_train_subject, read_mimics, split_folds)
from deepmir_tasks.model.train import fit, start_run
from deepmir_tasks.preprocess.resample import resample_labels
from workflows.preprocess import preprocess_subject

__all__ = ["prepare_subject", "load_subjects", "train"]


def prepare_subject(sub: SubjectFiles, cache_dir, voxel_size: float = 1.0) -> dict:
    """Preprocess one subject (cached): working-grid t2/swi/qsm/mask and the annotation dseg.

    Returns a dict of paths with keys ``t2``, ``swi``, ``qsm``, ``mask``, ``dseg``, ``t2_to_mni``.
    The cache is ``cache_dir/<key>/prepared.json``; it is reused when all its files still exist.
    """
    out_dir = Path(cache_dir) / sub.key
    marker = out_dir / "prepared.json"
    if marker.exists():
        try:
            rec = json.loads(marker.read_text())
            paths = {k: out_dir / v for k, v in rec["files"].items()}
            if rec.get("voxel_size") == voxel_size and all(p.exists() for p in paths.values()):
                return paths
        except (json.JSONDecodeError, KeyError):
            pass
    t0 = time.perf_counter()
    # annotated training data are taken at whatever resolution they have (the user chose them)
    res = preprocess_subject(sub.t2, sub.swi, sub.qsm, out_dir, voxel_size=voxel_size, allow_resolution=True)
    dseg = resample_labels(sub.dseg, res["t2"], out_dir / f"{sub.key}_space-work_desc-annotation_dseg.nii.gz")
    paths = {k: Path(res[k]) for k in ("t2", "swi", "qsm", "mask") if res.get(k) is not None}
    paths["dseg"] = Path(dseg)
    if res.get("t2_to_mni") is not None:
        paths["t2_to_mni"] = Path(res["t2_to_mni"])
    write_json({"files": {k: str(p.relative_to(out_dir)) if p.is_relative_to(out_dir) else str(p)
                          for k, p in paths.items()},
                "voxel_size": voxel_size, "seconds": round(time.perf_counter() - t0, 1),
                "source": {"t2": str(sub.t2), "swi": str(sub.swi), "qsm": str(sub.qsm), "dseg": str(sub.dseg)}},
               marker)
    return paths


def load_subjects(bids_dir, annotations_dir, cache_dir, config: TrainConfig, normalization: dict,
                  keys=None, with_volumes=False, progress=True) -> list[TrainSubject]:
    """Find, prepare (cached) and load subjects; ``with_volumes`` keeps raw volumes for validation."""
    from tqdm import tqdm

    subs = find_subjects(bids_dir, annotations_dir, config.modalities)
    if keys is not None:
        subs = [s for s in subs if s.key in set(keys)]
    out = []
    for sub in tqdm(subs, desc="prepare", unit="subject", disable=not progress):
        paths = prepare_subject(sub, cache_dir, config.voxel_size)
        ts = load_train_subject(sub.key, paths, config.modalities, config.classes, normalization,
                                config.grow_small_cmb)
        ts.extra["mimics"] = read_mimics(sub.lesions_tsv)
        hard = Path(cache_dir) / sub.key / HARD_EXAMPLES
        if config.hard_fraction > 0 and hard.exists():
            ts.extra["hard_examples"] = json.loads(hard.read_text())
        ts.extra["paths"] = {k: str(v) for k, v in paths.items()}
        if with_volumes:
            ts.extra["volumes"] = {m: np.asarray(load_image(paths[m]).dataobj, np.float32)
                                   for m in config.modalities}
        out.append(ts)
    return out


def train(bids_dir, annotations_dir, out, config: TrainConfig = TrainConfig(), *, cache_dir=None,
          resume=None, threads: int | None = None, device: str = "auto", progress: bool = True,
          normalization: dict | None = None, training_info: dict | None = None,
          stop_at: int | None = None, max_seconds: float | None = None, overrides: dict | None = None,
          init=None) -> dict:
    """Train a model on a BIDS dataset and write it to ``out`` (``.safetensors`` + ``.json``) with a
    checkpoint beside.

    ``resume``, ``overrides``, ``init`` and ``normalization`` set up the run
    (:func:`deepmir_tasks.model.train.start_run`); ``threads``, ``device``, ``stop_at`` and
    ``max_seconds`` go to :func:`deepmir_tasks.model.train.fit`. The subjects are split into folds
    by participant (``config.folds``, ``config.fold``), prepared into ``cache_dir`` (default: a
    folder beside ``out``) and loaded. Returns what ``fit`` returns.
    """
    run = start_run(out, config, resume=resume, overrides=overrides, init=init, normalization=normalization)
    config = run.config
    cache_dir = Path(cache_dir) if cache_dir else run.out.parent / (run.out.name.removesuffix(".safetensors") + "_cache")
    keys = [s.key for s in find_subjects(bids_dir, annotations_dir, config.modalities)]
    try:
        train_keys, val_keys = split_folds(keys, config.folds, config.fold, config.seed)
    except ValueError as err:
        raise InputError(bids_dir, str(err)) from None
    train_subs = load_subjects(bids_dir, annotations_dir, cache_dir, config, run.normalization, train_keys,
                               progress=progress)
    val_subs = load_subjects(bids_dir, annotations_dir, cache_dir, config, run.normalization, val_keys,
                             with_volumes=True, progress=progress) if val_keys else []
    info = {"bids_dir": str(bids_dir), "subjects_train": train_keys, "subjects_validation": val_keys,
            **(training_info or {})}
    return fit(run, train_subs, val_subs, info, threads=threads, device=device, progress=progress,
               stop_at=stop_at, max_seconds=max_seconds)
