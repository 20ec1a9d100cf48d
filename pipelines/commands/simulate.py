"""``deepmir simulate OUT --subjects N --seed S [--size full|small] [--start K] [--profile P] [--megre]``."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from deepmir_tasks.simulate.subject import PROFILES
    parser.add_argument("out_dir", metavar="OUT", type=Path, help="BIDS folder to write (created)")
    parser.add_argument("--subjects", type=int, default=1, metavar="N", help="number of subjects (default 1)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="base seed (default 0)")
    parser.add_argument("--size", choices=("full", "small"), default="full",
                        help="full resolution or a small, fast test size (default full)")
    parser.add_argument("--profile", choices=PROFILES, default="default",
                        help="default: the original simulator (seeds reproduce); randomised: age, lesion "
                             "sites and acquisition (1.5/3/7 T, voxels, minIP, FLAIR-like, QSM method) "
                             "over their real-world ranges; randomised2: the same subjects with fine iron "
                             "texture within the normal nuclei; randomised3: those subjects with the nuclei's "
                             "darkening on SWI and T2w per ppm of iron drawn, weak to strong")
    parser.add_argument("--megre", action="store_true",
                        help="also write the raw multi-echo GRE of each head (4 echoes, magnitude and phase: "
                             "sub-X_echo-N_part-mag|phase_MEGRE.nii.gz), for QSM and SWI computed by deepmir run")
    parser.add_argument("--start", type=int, default=1, metavar="K",
                        help="number of the first subject (sub-K); seeds follow the subject number")
    parser.add_argument("--cmb", type=_range, default=None, metavar="LO[-HI]",
                        help="microbleeds per subject, e.g. 5-20 (default 0-15)")
    parser.add_argument("--iron", type=_range, default=None, metavar="LO[-HI]",
                        help="iron deposits per subject (default 0-4)")
    parser.add_argument("--calcification", type=_range, default=None, metavar="LO[-HI]",
                        help="calcifications (diamagnetic mimics) per subject (default 0-3)")
    parser.add_argument("--vein", type=_range, default=None, metavar="LO[-HI]",
                        help="veins (paramagnetic tube mimics) per subject (default 3-8)")


def _range(text: str):
    try:
        parts = [int(v) for v in text.split("-")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or LO-HI, got {text!r}") from None
    if len(parts) not in (1, 2) or min(parts) < 0 or parts[-1] < parts[0]:
        raise argparse.ArgumentTypeError(f"expected N or LO-HI with 0 <= LO <= HI, got {text!r}")
    return (parts[0], parts[-1])


def run(args) -> int:
    import time

    from deepmir_tasks.io import InputError
    from deepmir_tasks.simulate import write_bids_cohort

    if args.subjects < 1:
        raise InputError(args.out_dir, "--subjects must be at least 1")
    if args.start < 1:
        raise InputError(args.out_dir, "--start must be at least 1")
    if args.out_dir.exists() and not args.out_dir.is_dir():
        raise InputError(args.out_dir, "output path exists and is not a folder")
    counts = {k: getattr(args, k) for k in ("cmb", "iron", "calcification", "vein") if getattr(args, k) is not None}
    t0 = time.perf_counter()
    extra = {"lesion_counts": counts} if counts else {}
    if args.profile != "default":
        extra["profile"] = args.profile
    if args.megre:
        extra["megre"] = True
    labels = write_bids_cohort(args.out_dir, args.subjects, args.seed, size=args.size, start=args.start, **extra)
    import pandas as pd

    print(f"wrote {len(labels)} subject(s) to {args.out_dir} in {time.perf_counter() - t0:.1f} s")
    for label in labels:
        tsv = args.out_dir / "derivatives" / "annotations" / f"sub-{label}" / "anat" / f"sub-{label}_lesions.tsv"
        kinds = pd.read_csv(tsv, sep="\t")["kind"].value_counts()
        summary = ", ".join(f"{kinds.get(k, 0)} {k}" for k in ("cmb", "iron", "calcification", "vein"))
        print(f"  sub-{label}: T2w, SWI, Chimap{', MEGRE' if args.megre else ''} + truth ({summary})")
    return 0
