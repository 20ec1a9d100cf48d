"""Time of recomputing a model's BatchNorm statistics (what every training export now adds).

    .venv/bin/python benchmarks/bench_batchnorm.py WORK [--model FILE] [--subjects 4] [--crops 128]

WORK is a ``pipelines.bundled_model --work`` folder whose training cohort is prepared (``WORK/train_bids``,
``WORK/prepared``). Prints the seconds to load the model and the subjects and to recompute the statistics, and the
largest change of a running mean or variance against the model's own, relative to its norm.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("work", type=Path)
    ap.add_argument("--model", type=Path, default=None, help="model file (default: the bundled one)")
    ap.add_argument("--subjects", type=int, default=4)
    ap.add_argument("--crops", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from deepmir_tasks.model.batchnorm import recompute_batchnorm
    from deepmir_tasks.model.train import TrainConfig
    from pipelines.bundled_model import model_and_cohort

    t0 = time.perf_counter()
    net, rec, subs = model_and_cohort(args.model, args.work / "train_bids", args.work / "prepared", TrainConfig(),
                                      args.subjects, progress=False)
    t1 = time.perf_counter()
    before = {k: v.clone() for k, v in net.state_dict().items() if "running_" in k}
    recompute_batchnorm(net, subs, crops=args.crops)
    t2 = time.perf_counter()
    after = net.state_dict()
    change = max(float((after[k] - v).norm() / max(float(v.norm()), 1e-12)) for k, v in before.items())
    print(f"machine: {os.cpu_count()} cores, {args.threads} threads; subjects {len(subs)}, crops {args.crops}")
    print(f"load model and subjects: {t1 - t0:.1f} s; recompute statistics: {t2 - t1:.1f} s")
    print(f"largest relative change of a running statistic: {change:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
