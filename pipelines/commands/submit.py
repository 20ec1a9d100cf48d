"""``deepmir submit BIDS_DIR OUTPUT_DIR``: a cohort as one SLURM job array plus a group job.

    deepmir submit BIDS OUT [--participant-label L ...] [--chunk-size N] [--max-parallel N]
                   [--cache-dir DIR] [--sbatch-args="..."] [--run-args="..."] [--dry-run]

Each array task runs ``deepmir run ... participant`` for its participant(s) on a shared pydra
cache; the group job (``--dependency=afterany``) then builds the cohort tables. See
:func:`pipelines.slurm.submit_cohort_array`.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path


#: options of ``deepmir run`` that the array script sets for each task
_SET_HERE = ("--participant-label", "--participant_label", "--worker", "--cache-dir")


def add_arguments(p):
    p.add_argument("bids_dir", type=Path, help="the BIDS dataset")
    p.add_argument("output_dir", type=Path, help="where the BIDS-derivatives dataset is written")
    p.add_argument("--participant-label", "--participant_label", nargs="+", metavar="LABEL",
                   help="subjects to submit (with or without 'sub-'); default every sub-* folder")
    p.add_argument("--chunk-size", type=int, default=1, metavar="N",
                   help="participants per array task (default 1); larger chunks mean fewer, longer jobs")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="pydra cache shared by the array tasks (default OUTPUT_DIR/sourcedata/deepmir_cache); "
                        "must be on a file system every node sees")
    p.add_argument("--sbatch-args", default="", metavar='"..."',
                   help='sbatch options for every job, e.g. --sbatch-args="-p short -c 2 --mem=8G -t 1:00:00" '
                        "(write it with '=' when the value starts with '-'; not --array, --wrap or "
                        "--dependency)")
    p.add_argument("--run-args", default="", metavar='"..."',
                   help='more options for each "deepmir run ... participant", e.g. '
                        '--run-args="--model m.safetensors --threshold 0.4 --no-report"')
    p.add_argument("--max-parallel", type=int, default=None, metavar="N",
                   help="at most N array tasks running at once (default: as many as SLURM allows)")
    p.add_argument("--dry-run", action="store_true",
                   help="write the scripts and print the sbatch commands without submitting")


def run(args) -> int:
    from deepmir_tasks.io import InputError
    from pipelines import bids
    from pipelines.run import default_cache_dir
    from pipelines.slurm import submit_cohort_array, validate_labels

    try:
        run_args = shlex.split(args.run_args)
    except ValueError as err:
        raise InputError("--run-args", str(err)) from None
    taken = [a for a in run_args if a.split("=", 1)[0] in _SET_HERE]
    if taken:
        raise InputError("--run-args", f"{taken[0]} is set by deepmir submit itself")
    labels = validate_labels(args.participant_label) if args.participant_label else None
    subjects = bids.find_subjects(args.bids_dir, participant_labels=labels)
    participants = list(dict.fromkeys(s.participant_id for s in subjects))
    cache_dir = args.cache_dir or default_cache_dir(args.output_dir)
    try:
        out = submit_cohort_array(
            args.bids_dir, args.output_dir, participants, cache_dir=cache_dir,
            sbatch_args=args.sbatch_args, chunk_size=args.chunk_size, dry_run=args.dry_run,
            max_parallel=args.max_parallel, extra_run_args=run_args,
        )
    except RuntimeError as err:  # sbatch missing or refusing: one line, not a traceback
        print(f"deepmir submit: error: {err}", file=sys.stderr)
        return 1
    print(f"{len(participants)} participant(s) in {out['n_tasks']} array task(s); "
          f"list: {out['participants_file']}")
    print(f"array script: {out['array_script']}\ngroup script: {out['group_script']}")
    if args.dry_run:
        for cmd in out["commands"]:
            print("would run: " + " ".join(shlex.quote(str(c)) for c in cmd))
        return 0
    print(f"submitted array job {out['array_job_id']} and group job {out['group_job_id']} "
          f"(runs after the array); logs in {Path(out['array_script']).parent / 'logs'}")
    return 0
