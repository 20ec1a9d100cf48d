"""End-to-end time per subject, the cached re-run ratio, and the cost of adding one subject.

    .venv/bin/python benchmarks/bench_pipeline.py [--subjects 2] [--size full] [--worker cf]

Prints one line per figure. Targets (2 cores, no GPU): <= 120 s per subject end to end; a re-run of
an unchanged cohort <= 2 % of the first run.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import tempfile
import time
from pathlib import Path


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--subjects", type=int, default=2)
    ap.add_argument("--size", default="full", choices=["full", "small"])
    ap.add_argument("--worker", default="cf", choices=["cf", "debug", "slurm"])
    ap.add_argument("--n-procs", type=int, default=os.cpu_count())
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()

    from deepmir_tasks.simulate import write_bids_cohort
    from pipelines.run import run_cohort

    work = args.workdir or Path(tempfile.mkdtemp(prefix="deepmir_bench_"))
    bids_dir, out, cache = work / "bids", work / "deriv", work / "cache"
    labels = write_bids_cohort(bids_dir, args.subjects + 1, seed=9000, size=args.size)
    first_labels, extra = labels[:-1], labels[-1]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, worker {args.worker}, "
          f"{args.subjects} {args.size}-size subjects")

    def timed(labels_):
        t0 = time.perf_counter()
        res = run_cohort(bids_dir, out, participant_labels=labels_, worker=args.worker,
                         n_procs=args.n_procs, cache_dir=cache)
        assert res.ok, res.failed
        return time.perf_counter() - t0

    first = timed(first_labels)
    print(f"first run: {first:.1f} s for {len(first_labels)} subjects = {first / len(first_labels):.1f} s per subject")
    again = timed(first_labels)
    print(f"unchanged re-run: {again:.2f} s = {100 * again / first:.2f} % of the first run (target <= 2 %)")
    added = timed(first_labels + [extra])
    print(f"re-run with one subject added: {added:.1f} s (one new subject; the others from cache)")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"peak memory of a worker process: {peak:.0f} MB")


if __name__ == "__main__":
    main()
