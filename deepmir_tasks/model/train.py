"""Training the DEEPMIR U-Net on a BIDS dataset with lesion annotations.

The pieces are plain functions so that each can be tested and reused, each in its module (this
one keeps the loss and the loop and re-exports the rest): ``config`` (:class:`TrainConfig`),
``data`` (finding and loading subjects), ``sampler`` (patches), ``scoring`` (lesion-wise
validation, hard-example mining), ``checkpoint``.

* :func:`find_subjects` lists the BIDS subjects (and sessions) that have T2w/SWI/QSM and an
  annotation dseg (``derivatives/.../sub-XX[_ses-YY]_space-T2w_dseg.nii.gz``, 0/1/2 on the T2w grid).
* :class:`PatchSampler` draws training patches with lesions over-represented (a share of patches is
  centred on a lesion, each class equally often, each lesion equally likely whatever its size) and
  augments them (mirroring, small rotations and scalings, intensity and contrast changes, noise).
* :func:`dice_ce_loss` is cross-entropy with class weights plus a soft Dice over the lesion classes.
* :func:`lesion_metrics` scores a label map lesion by lesion (a detection counts when its centroid
  lies within 5 mm of a true lesion of the same class, matched one-to-one, greedily by distance).
* :func:`start_run` settles what a run starts from (a checkpoint to resume, a model to fine-tune);
  :func:`fit` runs the loop on loaded subjects: seeded, resumable checkpoints (weights + optimiser
  + step + RNG states, read back with ``torch.load(weights_only=True)``), periodic lesion-wise
  validation, and export of the best weights as a model file.

Preparing subjects through the preprocessing graph and training from a BIDS dataset
(``workflows.train.train``) sit a layer above, in :mod:`workflows.train`.
"""


from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path

import numpy as np

from deepmir_tasks.io import InputError
from deepmir_tasks.model.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint  # noqa: F401
from deepmir_tasks.model.config import ALL_CLASSES, DSEG_VALUE, TrainConfig  # noqa: F401
from deepmir_tasks.model.data import (HARD_EXAMPLES, SMALL_CMB_VOXELS, BRIGHT_QSM_PPM,  # noqa: F401
                                      SubjectFiles, TrainSubject, bright_background, class_labels,
                                      find_subjects, load_train_subject, read_mimics, split_folds)
from deepmir_tasks.model.sampler import PatchSampler, drop_modalities  # noqa: F401
from deepmir_tasks.model.scoring import (_score, evaluate_predictor, lesion_components, lesion_metrics,  # noqa: F401
                                         match_counts, match_lesions, mine_hard_examples,
                                         summarise_metrics)

__all__ = [
    "TrainConfig",
    "SubjectFiles",
    "TrainSubject",
    "find_subjects",
    "split_folds",
    "load_train_subject",
    "PatchSampler",
    "dice_ce_loss",
    "lesion_components",
    "match_lesions",
    "lesion_metrics",
    "match_counts",
    "evaluate_predictor",
    "mine_hard_examples",
    "save_checkpoint",
    "load_checkpoint",
    "RunStart",
    "start_run",
    "init_weights",
    "fit",
]

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------- loss
def dice_ce_loss(logits, target, class_weights=None, dice_weight: float = 1.0):
    """Weighted cross-entropy + (1 - soft Dice) averaged over the foreground classes (batch Dice)."""
    import torch
    import torch.nn.functional as F

    n = logits.shape[1]
    w = None if class_weights is None else torch.as_tensor(class_weights, dtype=logits.dtype,
                                                           device=logits.device)
    ce = F.cross_entropy(logits, target, weight=w)
    if dice_weight == 0 or n < 2:
        return ce
    prob = torch.softmax(logits, dim=1)[:, 1:]
    onehot = F.one_hot(target, n).permute(0, 4, 1, 2, 3)[:, 1:].to(prob.dtype)
    dims = (0, 2, 3, 4)
    inter = (prob * onehot).sum(dims)
    denom = prob.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + 1.0) / (denom + 1.0)
    return ce + dice_weight * (1 - dice).mean()


# ---------------------------------------------------------------------- training
def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device", "CUDA was asked for but no GPU is available")
    return torch.device(name)


def build_record(config: TrainConfig, normalization: dict, training: dict, validation: dict) -> dict:
    from deepmir_tasks import __version__

    return {
        "architecture": {"name": "UNet", "in_channels": len(config.modalities),
                         "n_classes": len(config.classes) + 1, "levels": config.levels,
                         "base": config.base, "dim": 3, "norm": config.norm, "max_width": config.max_width},
        "modalities": list(config.modalities),
        "normalization": {m: normalization[m] for m in config.modalities},
        "classes": ["background", *config.classes],
        "inference": {},
        "training": training,
        "validation": validation,
        "package_version": __version__,
    }


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warm-up over the first tenth of the steps (at most 100), then cosine decay to 5 %."""
    warm = max(1, min(100, config.steps // 10))
    if step < warm:
        return config.lr * (step + 1) / warm
    frac = (step - warm) / max(config.steps - warm, 1)
    return config.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


def _resume_config(config: TrainConfig, resume, ckpt_file: Path, overrides: dict | None):
    """(configuration, checkpoint or None): a resumed run keeps the stored configuration, except
    ``steps`` (the schedule is stretched or shortened from the current step on) and ``overrides``."""
    if not resume:
        return config, None
    rpath = ckpt_file if resume is True else Path(resume)
    if not rpath.exists():
        if resume is not True:
            raise InputError(rpath, "checkpoint to resume from does not exist")
        return config, None
    ckpt = load_checkpoint(rpath)
    stored = TrainConfig.from_json(json.loads(ckpt["config"]))
    if config.steps < int(ckpt["step"]):
        raise InputError(rpath, f"checkpoint is at step {int(ckpt['step'])}, past the {config.steps} steps asked for")
    log.info("resuming from %s at step %d", rpath, ckpt["step"])
    return dataclasses.replace(stored, steps=config.steps, **(overrides or {})), ckpt


def _init_model(config: TrainConfig, normalization, dev, ckpt):
    """(network, optimiser, numpy RNG, loop state, step), from the checkpoint when there is one."""
    import torch

    from deepmir_tasks.model.modelfile import build_network

    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    net = build_network(build_record(config, normalization, {}, {})["architecture"]).to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    state = {"best_score": -1.0, "best_step": None, "best_validation": None, "history": []}
    step = 0
    if ckpt is not None:
        net.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        step = int(ckpt["step"])
        rng.bit_generator.state = json.loads(ckpt["numpy_rng"])
        if "torch_rng" in ckpt:
            torch.set_rng_state(ckpt["torch_rng"])
        state = json.loads(ckpt.get("state", "{}")) or state
    return net, opt, rng, state, step


def _validate(net, config: TrainConfig, normalization, dev, val_subs, step: int) -> dict:
    """Lesion-wise figures of ``net`` (the inference copy of the training network) on the validation subjects."""
    from deepmir_tasks.model.predictor import Predictor

    pred = Predictor(net, build_record(config, normalization, {}, {}), device=str(dev))
    t0 = time.perf_counter()
    summary = evaluate_predictor(pred, val_subs)
    summary["step"] = step
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    return summary


class _Exporter:
    """Writes the model file of the training network at a step: a copy of it with its BatchNorm
    statistics recomputed on the training subjects (:mod:`deepmir_tasks.model.batchnorm`), the
    network that training goes on with left as it is. The copy is made once per step and is also
    what validation measures."""

    def __init__(self, net, train_subs, config, normalization, training, out, dev):
        self.net, self.subjects, self.config, self.normalization = net, train_subs, config, normalization
        self.training, self.out, self.dev = training, out, dev
        self._copy = None  # (step, network) of the last copy
        self.written = None  # the step of the last model file written

    def inference_net(self, step: int):
        import copy

        from deepmir_tasks.model.batchnorm import recompute_batchnorm

        if self._copy is None or self._copy[0] != step:
            net = recompute_batchnorm(copy.deepcopy(self.net), self.subjects, seed=self.config.seed, device=self.dev)
            self._copy = (step, net)
        return self._copy[1]

    def __call__(self, validation, step_now):
        from deepmir_tasks.model.batchnorm import describe
        from deepmir_tasks.model.modelfile import save_model

        record = build_record(self.config, self.normalization,
                              dict(self.training, steps_done=step_now, batchnorm=describe(seed=self.config.seed)),
                              validation)
        path = save_model(self.inference_net(step_now), self.out, record)
        self.written = step_now
        return path


def _checkpoint_due(config: TrainConfig, step: int) -> bool:
    return step % config.validate_every == 0 or step == config.steps


def _no_fold(train_loss) -> dict:
    return {"note": "no validation fold (folds <= 1)", "train_loss": train_loss}


def _evaluate_and_export(net, config, normalization, dev, val_subs, step, losses, state, export, bar) -> None:
    """At a validation step: record the figures (or the training loss without a validation fold)
    and export the model when it is the best so far. Both use ``net`` as ``export`` would write it
    (BatchNorm statistics recomputed), never its moving averages. Without a validation fold there is
    nothing to choose by, so :func:`fit` exports the model once, where the run ends or stops, not at every validation step: recomputing the statistics takes as long as a few
    hundred training steps on a CPU, and the checkpoint already keeps the progress."""
    train_loss = round(float(np.mean(losses[-config.validate_every:])), 5)
    if not val_subs:
        state["history"].append({"step": step, "train_loss": train_loss})
        return
    summary = dict(_validate(export.inference_net(step), config, normalization, dev, val_subs, step), train_loss=train_loss)
    state["history"].append(summary)
    score = _score(summary, config.classes)
    log.info("step %d validation %s", step, json.dumps(summary))
    bar.write(f"step {step}: validation " + ", ".join(
        f"{c} sens {summary[c]['sensitivity']:.3f} prec {summary[c]['precision']:.3f}" for c in config.classes))
    if score > state["best_score"]:
        state.update(best_score=score, best_step=step, best_validation=summary)
        export({"fold": config.fold, "folds": config.folds, **summary}, step)


def init_record(init, config: TrainConfig) -> tuple[TrainConfig, dict]:
    """(configuration, record) for fine-tuning from the model file ``init``: its architecture fields
    the command line cannot set (``max_width``, ``norm``) are taken from it; the rest must be those
    asked for, the modalities those asked for or, for a 3-D model, more of them, and the classes
    those asked for or more of them (the new model keeps the input filters of its own modalities
    and the output filters of background and its own classes: :func:`init_weights`);
    :class:`InputError` naming the differences otherwise."""
    from deepmir_tasks.model.modelfile import load_record

    rec = load_record(init)
    arch = rec["architecture"]
    config = dataclasses.replace(config, max_width=arch.get("max_width", config.max_width),
                                 norm=arch.get("norm", config.norm))
    want = build_record(config, {m: None for m in config.modalities}, {}, {})

    def subset(key):
        return list(rec[key]) != want[key] and set(want[key]) < set(rec[key])

    fewer = {"modalities": subset("modalities") and arch.get("dim", 3) == 3, "classes": subset("classes")}
    loose = {"in_channels": fewer["modalities"], "n_classes": fewer["classes"]}
    diffs = [f"{k} {arch.get(k)} (asked: {v})" for k, v in want["architecture"].items()
             if arch.get(k) != v and not loose.get(k)]
    diffs += [f"{k} {rec[k]} (asked: {want[k]})" for k in ("modalities", "classes")
              if list(rec[k]) != want[k] and not fewer[k]]
    if diffs:
        raise InputError(init, "cannot fine-tune from this model: it has " + "; ".join(diffs)
                         + "; give the same --levels and --base, and its --modalities and --classes or subsets")
    return config, rec


def init_weights(state: dict, from_modalities, to_modalities, from_classes=None, to_classes=None) -> dict:
    """The weights of a 3-D model on ``from_modalities`` for one on ``to_modalities`` (a subset):
    the first convolution keeps the input filters of the modalities kept; with ``to_classes`` (a
    subset of ``from_classes``, background first), the output convolution keeps the filters of
    the classes kept; every other weight is unchanged. A model trained with modality dropout then
    starts from what it does on that subset, and a single-class model from the multi-class
    model's evidence for its class against background."""
    keep = [list(from_modalities).index(m) for m in to_modalities]
    state = dict(state)
    first = "encoder.0.0.weight"
    state[first] = state[first][:, keep].clone()
    if to_classes is not None and list(to_classes) != list(from_classes):
        rows = [list(from_classes).index(c) for c in to_classes]
        for key in ("head.weight", "head.bias"):
            state[key] = state[key][rows].clone()
    return state


@dataclasses.dataclass(frozen=True)
class RunStart:
    """What a training run starts from: the output file, its checkpoint, the configuration (the
    stored one on resume), the checkpoint read back (or None), the model file it is fine-tuned from
    with its record (or None) and the normalisation."""

    out: Path
    checkpoint: Path
    config: TrainConfig
    ckpt: dict | None
    init: Path | None
    init_record: dict | None
    normalization: dict


def start_run(out, config: TrainConfig = TrainConfig(), *, resume=None, overrides: dict | None = None,
              init=None, normalization: dict | None = None) -> RunStart:
    """Check the output name and the classes, and settle what the run starts from.

    ``resume``: a checkpoint path, or ``True`` for the default one beside ``out``
    (``<out>.ckpt.pt``); training then continues from its step with its optimiser and RNG states
    (the configuration stored in the checkpoint is used, except ``steps``: the cosine schedule is
    recomputed for the new total, which may be larger or smaller than before but not below the
    checkpoint's step). ``overrides`` replaces fields of the stored configuration on resume
    (e.g. ``{"hard_fraction": 0.2}`` to fine-tune with mined hard examples).
    ``init``: a model file whose weights (and normalisation) a new run starts from, to fine-tune it
    (same architecture; its modalities and classes or subsets: :func:`init_record`); a resumed
    checkpoint wins.
    """
    from deepmir_tasks.model.normalize import DEFAULT_NORMALIZATION

    out = Path(out)
    if not out.name.endswith(".safetensors"):
        raise InputError(out, "--out must name a .safetensors file")
    ckpt_file = checkpoint_path(out)
    config, ckpt = _resume_config(config, resume, ckpt_file, overrides)
    init_rec = None
    if init is not None and ckpt is None:
        config, init_rec = init_record(init, config)
        normalization = normalization or init_rec["normalization"]
    unknown = [c for c in config.classes if c not in DSEG_VALUE]
    if unknown or not config.classes:
        raise InputError("--classes", f"classes must be a non-empty subset of {list(DSEG_VALUE)}, got {list(config.classes)}")
    return RunStart(out, ckpt_file, config, ckpt, Path(init) if init_rec is not None else None, init_rec,
                    normalization or DEFAULT_NORMALIZATION)


def _start_network(run: RunStart, dev, training_info: dict):
    """(network, optimiser, numpy RNG, loop state, step, training info): from the checkpoint when
    there is one, else from the model fine-tuned from (recorded in the training info), else new."""
    net, opt, rng, state, step = _init_model(run.config, run.normalization, dev, run.ckpt)
    if run.init_record is not None:
        from deepmir_tasks.model.modelfile import load_model

        weights = load_model(run.init, device=dev)[0].state_dict()
        weights = init_weights(weights, run.init_record["modalities"], run.config.modalities,
                               run.init_record["classes"], ["background", *run.config.classes])
        net.load_state_dict(weights)
        net.train()
        training_info = dict(training_info, init={"file": str(run.init), "sha256": run.init_record["weights_sha256"]})
    return net, opt, rng, state, step, training_info


def _class_weights(config: TrainConfig) -> list:
    weights = list(config.class_weights)[: len(config.classes) + 1]
    return weights + [weights[-1]] * (len(config.classes) + 1 - len(weights))


def fit(run: RunStart, train_subs: list, val_subs: list, training_info: dict | None = None, *,
        threads: int | None = None, device: str = "auto", progress: bool = True,
        stop_at: int | None = None, max_seconds: float | None = None) -> dict:
    """Train on loaded subjects (:class:`TrainSubject`) and write the model to ``run.out``.

    The best weights by lesion-wise validation on ``val_subs`` are exported (without them, the
    weights where the run ends or stops); ``training_info`` goes into the record's ``training``. ``stop_at`` /
    ``max_seconds`` end this run early (after that step / that much time) with a checkpoint,
    without changing the schedule, so a later resume continues exactly.
    Returns a dict with ``model``, ``record``, ``checkpoint``, ``step`` and ``validation``.
    """
    import torch
    from tqdm import tqdm

    from deepmir_tasks.model.modelfile import record_path

    config, normalization, out, ckpt_file = run.config, run.normalization, run.out, run.checkpoint
    if threads:
        torch.set_num_threads(int(threads))
    dev = _device(device)
    net, opt, rng, state, step, training_info = _start_network(run, dev, dict(training_info or {}))
    sampler = PatchSampler(train_subs, config.patch, config.lesion_fraction, config.augment,
                           config.mimic_fraction, config.hard_fraction, config.bright_fraction,
                           config.modality_dropout)
    weights = _class_weights(config)
    training = {"config": config.to_json(), "device": str(dev), **training_info}

    export = _Exporter(net, train_subs, config, normalization, training, out, dev)

    last_ckpt, losses = time.monotonic(), []
    net.train()
    bar = tqdm(total=config.steps, initial=step, desc="train", unit="step", disable=not progress)
    t_start, t_run = time.perf_counter(), time.monotonic()
    while step < config.steps:
        if (stop_at is not None and step >= stop_at) or (max_seconds and time.monotonic() - t_run > max_seconds):
            save_checkpoint(ckpt_file, net, opt, step, rng, config, state)
            break
        for g in opt.param_groups:
            g["lr"] = learning_rate(config, step)
        x, y = sampler.sample(rng, config.batch)
        loss = dice_ce_loss(net(x.to(dev)), y.to(dev), weights, config.dice_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        losses.append(float(loss.detach()))
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if step % 100 == 0:
            log.info("step %d/%d loss %.4f lr %.2e (%.2f s/step)", step, config.steps, np.mean(losses[-100:]),
                     learning_rate(config, step - 1), (time.perf_counter() - t_start) / max(len(losses), 1))
        due = _checkpoint_due(config, step)
        if due:
            _evaluate_and_export(net, config, normalization, dev, val_subs, step, losses, state, export, bar)
        if due or time.monotonic() - last_ckpt > config.checkpoint_seconds or step == config.steps:
            save_checkpoint(ckpt_file, net, opt, step, rng, config, state)
            last_ckpt = time.monotonic()
    bar.close()
    if not val_subs and export.written != step:
        export(_no_fold(round(float(np.mean(losses[-config.validate_every:])), 5) if losses else None), step)
    if not out.exists():
        export({"note": "not validated", "train_loss": float(np.mean(losses[-50:])) if losses else None}, step)
    return {"model": out, "record": record_path(out), "checkpoint": ckpt_file, "step": step,
            "validation": state.get("best_validation"), "history": state.get("history"),
            "seconds": round(time.perf_counter() - t_start, 1)}
