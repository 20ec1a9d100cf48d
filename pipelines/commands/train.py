"""``deepmir train``: train a DEEPMIR model on a BIDS dataset with lesion annotations.

Example::

    deepmir train bids/ --annotations bids/derivatives/annotations --out my_model.safetensors \\
        --modalities t2 swi qsm --classes cmb iron --folds 5 --fold 0 --steps 4000 --threads 2

Each subject is preprocessed with the pipeline's own preprocessing (cached under ``--cache-dir``,
so reruns skip it). A checkpoint ``<out>.ckpt.pt`` is written every few minutes; ``--resume``
continues from it (or from the checkpoint path given). The model file is the best validated
weights of the fold (or the last ones with ``--folds 1``) with its JSON record beside it.
"""

from __future__ import annotations

import json
from pathlib import Path


def add_arguments(p):
    p.add_argument("bids_dir", type=Path, help="BIDS raw dataset (sub-XX/anat/*_T2w, *_swi, *_Chimap)")
    p.add_argument("--annotations", type=Path, required=True,
                   help="derivatives folder with sub-XX/anat/sub-XX_space-T2w_dseg.nii.gz (0/1/2)")
    p.add_argument("--out", type=Path, required=True, help="model file to write (.safetensors; .json beside)")
    p.add_argument("--modalities", nargs="+", default=["t2", "swi", "qsm"], choices=["t2", "swi", "qsm"])
    p.add_argument("--classes", nargs="+", default=["cmb", "iron"], choices=["cmb", "iron"])
    p.add_argument("--folds", type=int, default=5, help="k-fold split by subject (1 = train on all)")
    p.add_argument("--fold", type=int, default=0, help="which fold to hold out for validation")
    p.add_argument("--steps", type=int, default=None,
                   help="total optimiser steps (default 2000; with --resume, the checkpoint's total)")
    p.add_argument("--patch", type=int, default=48, help="patch edge in voxels (multiple of 2**(levels-1))")
    p.add_argument("--batch", type=int, default=2, help="patches per step")
    p.add_argument("--levels", type=int, default=5, help="U-Net resolution levels")
    p.add_argument("--base", type=int, default=16, help="feature maps at full resolution")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (AdamW, cosine decay)")
    p.add_argument("--validate-every", type=int, default=500, help="steps between validations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grow-small-cmb", type=int, default=0, metavar="N",
                   help="grow the training labels of CMBs under 8 voxels by N voxels, so that a dot "
                        "annotated on thick slices is covered (the bundled model used 1; default 0)")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT",
                   help="continue from <out>.ckpt.pt, or from the checkpoint given")
    p.add_argument("--init", type=Path, default=None, metavar="MODEL",
                   help="fine-tune: start from this model's weights and normalisation (same --modalities, "
                        "--classes, --levels, --base), e.g. on annotations exported by deepmir review")
    p.add_argument("--cache-dir", type=Path, default=None, help="preprocessing cache (default beside --out)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from deepmir_tasks.io import InputError
    from deepmir_tasks.model.train import TrainConfig
    from workflows.train import train

    if args.patch % 2 ** (args.levels - 1):
        raise InputError("--patch", f"patch {args.patch} must be a multiple of 2**(levels-1) = {2 ** (args.levels - 1)}")
    if args.folds > 1 and not 0 <= args.fold < args.folds:
        raise InputError("--fold", f"must be in 0..{args.folds - 1}")
    steps = args.steps
    if steps is None:
        steps = 2000
        if args.resume:
            from deepmir_tasks.model.train import checkpoint_path, load_checkpoint

            ck = checkpoint_path(args.out) if args.resume is True else Path(args.resume)
            if ck.exists():
                steps = json.loads(load_checkpoint(ck)["config"])["steps"]
    config = TrainConfig(modalities=tuple(args.modalities), classes=tuple(args.classes), levels=args.levels,
                         base=args.base, patch=args.patch, batch=args.batch, steps=steps, lr=args.lr,
                         seed=args.seed, folds=args.folds, fold=args.fold, validate_every=args.validate_every,
                         grow_small_cmb=args.grow_small_cmb)
    if args.threads:
        import os

        os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(args.threads)
    res = train(args.bids_dir, args.annotations, args.out, config, cache_dir=args.cache_dir,
                resume=args.resume, init=args.init, threads=args.threads, device=args.device,
                progress=not args.no_progress,
                training_info={"command": "deepmir train " + " ".join(_argv(args))})
    print(json.dumps({"model": str(res["model"]), "checkpoint": str(res["checkpoint"]), "step": res["step"],
                      "validation": res["validation"]}, indent=2, default=str))
    return 0


def _argv(args) -> list[str]:
    import sys

    argv = sys.argv[1:]
    return argv[argv.index("train") + 1:] if "train" in argv else []
