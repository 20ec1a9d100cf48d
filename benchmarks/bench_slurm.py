"""SLURM overhead per task: DeepmirSlurmWorker against pydra's ``cf`` worker, same workflows.

    bash scripts/slurm/start_cluster.sh
    .venv/bin/python benchmarks/bench_slurm.py [--sleep 2] [--subjects 3] [--poll 0.5]

Workflows (toy python tasks, no imaging):
  * latency: a chain of 4 empty tasks, run serially: wall time per task is the fixed cost of
    one job (submission, start-up of a Python process on the node, polling).
  * cohort: SUBJECTS subjects x 2 sequential tasks sleeping SLEEP s, split over subjects at the
    outer level (the shape ``deepmir run`` uses); with 2 cores the ideal is
    max(ceil(2 * SUBJECTS / 2), 2) * SLEEP s.
  * rerun: the cohort again, unchanged (all cached), and with the second task changed (the
    first is cached): the count of sbatch calls shows that cached tasks are not submitted.
Prints one table; nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pydra.compose import python, workflow
from pydra.engine.submitter import Submitter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipelines.slurm import slurm_worker  # noqa: E402


@python.define
def Nap(seconds: float, tag: int, offset: int = 0) -> int:
    time.sleep(seconds)
    return tag + 1 + offset


@workflow.define
def EmptyChain(start: int) -> int:
    a = workflow.add(Nap(seconds=0.0, tag=start), name="a")
    b = workflow.add(Nap(seconds=0.0, tag=a.out), name="b")
    c = workflow.add(Nap(seconds=0.0, tag=b.out), name="c")
    d = workflow.add(Nap(seconds=0.0, tag=c.out), name="d")
    return d.out


@workflow.define
def SubjectLike(subject: int, seconds: float, second_offset: int = 0) -> int:
    pre = workflow.add(Nap(seconds=seconds, tag=subject), name="pre")
    # the offset keeps the second task's inputs distinct from any subject's first task
    seg = workflow.add(Nap(seconds=seconds, tag=pre.out, offset=1000 + second_offset), name="seg")
    return seg.out


def _run(task, worker: str, cache: Path, poll: float) -> float:
    if worker == "cf":
        sub = Submitter(worker="cf", n_procs=2, cache_root=cache)
    else:
        sub = Submitter(worker=slurm_worker(poll_delay=poll), cache_root=cache)
    t0 = time.perf_counter()
    with sub:
        res = sub(task, raise_errors=True)
    elapsed = time.perf_counter() - t0
    if res.errored:
        raise RuntimeError(f"{worker}: the benchmark workflow failed: {res.errors}")
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sleep", type=float, default=2.0, help="seconds per cohort task (default 2)")
    ap.add_argument("--subjects", type=int, default=3, help="subjects in the cohort workflow (default 3)")
    ap.add_argument("--poll", type=float, default=0.5, help="DeepmirSlurmWorker poll_delay (default 0.5)")
    args = ap.parse_args()
    real_sbatch = shutil.which("sbatch")
    if real_sbatch is None:
        print("bench_slurm: sbatch not on PATH; start scripts/slurm/start_cluster.sh first", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="deepmir-bench-slurm-") as tmp:
        tmp = Path(tmp)
        # count sbatch calls through a logging shim first on PATH
        (tmp / "shim").mkdir()
        log = tmp / "sbatch.log"
        log.touch()
        (tmp / "shim" / "sbatch").write_text(f'#!/bin/sh\necho "$*" >> "{log}"\nexec "{real_sbatch}" "$@"\n')
        (tmp / "shim" / "sbatch").chmod(0o755)
        os.environ["PATH"] = f"{tmp / 'shim'}{os.pathsep}{os.environ['PATH']}"

        def calls() -> int:
            return len(log.read_text().splitlines())

        subjects = list(range(1, args.subjects + 1))
        rows = []
        for worker in ("cf", "slurm"):
            cache = tmp / f"cache-{worker}"
            n0 = calls()
            t = _run(EmptyChain(start=0), worker, cache, args.poll)
            rows.append((worker, "latency: chain of 4 empty tasks", t, t / 4, calls() - n0))
            cohort = SubjectLike(seconds=args.sleep).split(subject=subjects)
            n_tasks = 2 * len(subjects)
            n0 = calls()
            t = _run(cohort, worker, cache, args.poll)
            ideal = max(-(-n_tasks // 2), 2) * args.sleep
            rows.append((worker, f"cohort: {len(subjects)} subj x 2 tasks x {args.sleep:g} s "
                                 f"(ideal {ideal:.1f} s)", t, (t - ideal) / n_tasks, calls() - n0))
            n0 = calls()
            t = _run(SubjectLike(seconds=args.sleep).split(subject=subjects), worker, cache, args.poll)
            rows.append((worker, "rerun, all cached", t, float("nan"), calls() - n0))
            n0 = calls()
            t = _run(SubjectLike(seconds=args.sleep, second_offset=1).split(subject=subjects), worker, cache,
                     args.poll)
            ideal = -(-len(subjects) // 2) * args.sleep
            rows.append((worker, f"rerun, 2nd task changed (ideal {ideal:.1f} s)", t, (t - ideal) / len(subjects),
                         calls() - n0))

    nodes = subprocess.run(["sinfo", "-h", "-o", "%c CPUs %m MB"], capture_output=True, text=True).stdout.strip()
    print(f"bench_slurm: DeepmirSlurmWorker (poll {args.poll:g} s) vs cf (n_procs=2); cluster: {nodes}")
    print(f"{'worker':<7} {'workflow':<52} {'wall s':>7} {'overhead s/task':>16} {'sbatch calls':>13}")
    for worker, what, t, per, n in rows:
        per_text = "-" if per != per else f"{per:.2f}"
        print(f"{worker:<7} {what:<52} {t:7.2f} {per_text:>16} {n:>13}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
