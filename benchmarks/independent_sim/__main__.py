"""``python -m benchmarks.independent_sim OUT --subjects N --seed S --condition NAME [--nucleus-texture X]
[--nucleus-r2s-scale Y]`` (the ablations of ``conditions.ABLATIONS``: the same seeds, one field changed)."""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

from .bids import SEED_BASE, write_cohort
from .conditions import CONDITIONS, ablation_overrides, add_ablation_arguments


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.independent_sim", description=__doc__)
    ap.add_argument("out", type=Path, help="BIDS folder to write (truth under derivatives/annotations)")
    ap.add_argument("--subjects", type=int, default=3)
    ap.add_argument("--seed", type=int, default=SEED_BASE, help=f"first subject's seed (default {SEED_BASE})")
    ap.add_argument("--condition", default="default", choices=sorted(CONDITIONS))
    add_ablation_arguments(ap)
    args = ap.parse_args(argv)
    overrides = ablation_overrides(args)
    t0 = time.perf_counter()
    try:
        labels = write_cohort(args.out, args.subjects, args.seed, args.condition, overrides=overrides)
    except ValueError as err:
        print(f"independent_sim: {err}", file=sys.stderr)
        return 2
    secs = time.perf_counter() - t0
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    print(f"wrote {len(labels)} subject(s) ({args.condition}) to {args.out} in {secs:.1f} s "
          f"({secs / len(labels):.1f} s per subject, peak memory {peak_gb:.2f} GB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
