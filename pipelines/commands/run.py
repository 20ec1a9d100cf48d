"""``deepmir run BIDS_DIR OUTPUT_DIR {participant,group}``: the BIDS-App entry point."""

from __future__ import annotations

import sys
import time
from pathlib import Path


def add_arguments(p):
    from deepmir_tasks.settings import RunSettings

    p.add_argument("bids_dir", type=Path, help="the BIDS dataset (T2w, swi and Chimap images under anat/)")
    p.add_argument("output_dir", type=Path, help="where the BIDS-derivatives dataset is written")
    p.add_argument("analysis_level", choices=["participant", "group"],
                   help="participant: run subjects; group: rebuild cohort tables and report from "
                        "existing subject derivatives")
    p.add_argument("--participant-label", "--participant_label", nargs="+", metavar="LABEL",
                   help="subjects to run (with or without 'sub-'); default all")
    p.add_argument("--session-label", "--session_label", nargs="+", metavar="LABEL",
                   help="sessions to run (with or without 'ses-'); default all")
    p.add_argument("--worker", choices=["cf", "slurm", "debug"], default="cf",
                   help="cf: local processes (default); slurm: one SLURM job per task; "
                        "debug: in this process, one subject at a time")
    p.add_argument("--n-procs", type=int, default=None, help="local processes/threads (default: all cores)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="pydra cache (default OUTPUT_DIR/sourcedata/deepmir_cache); reruns resume from it")
    p.add_argument("--model", type=Path, default=None, help="model .safetensors for every subject (default: the bundled model, or the "
                   "bundled model made for exactly the subject's modalities when there is one)")
    p.add_argument("--threshold", type=float, default=None,
                   help="voxel probability threshold for a lesion candidate (default: the model's calibrated "
                        "value, 0.5 if its record gives none)")
    p.add_argument("--voxel-size", type=float, default=RunSettings.voxel_size,
                   help=f"working grid voxel size in mm (default {RunSettings.voxel_size:g})")
    p.add_argument("--tta", action="store_true",
                   help="flip test-time augmentation (4x the inference time, steadier); always on for a "
                        "model whose lesion rules were calibrated with it (both bundled models)")
    p.add_argument("--qsm-units", choices=["auto", "ppm", "ppb"], default=RunSettings.qsm_units,
                   help="auto (default): a QSM whose values do not look like ppm fails its subject; "
                        "ppm: trust the values as they are; ppb: divide them by 1000")
    p.add_argument("--recompute-qsm", action="store_true",
                   help="compute QSM and SWI from the raw multi-echo GRE (*_part-{mag,phase}_MEGRE) even "
                        "for subjects that have them (subjects without GRE keep theirs)")
    p.add_argument("--allow-resolution", action="store_true",
                   help="run subjects whose voxels are outside the supported range (see the README), "
                        "flagged in the lesion table and report, instead of failing them")
    p.add_argument("--no-report", action="store_true", help="skip the HTML reports")
    p.add_argument("--no-group", action="store_true",
                   help="participant level only: do not rebuild the cohort tables afterwards (SLURM array "
                        "tasks use this; a final 'group' run builds them once)")
    p.add_argument("--sbatch-args", default="", help='extra sbatch options for --worker slurm, e.g. "-p short --mem=8G"')


def run(args) -> int:
    from deepmir_tasks.settings import RunSettings
    from pipelines.run import run_cohort, run_group

    if args.analysis_level == "group":
        result = run_group(args.output_dir)
        print(f"group tables: {result['lesions']} and {result['summary']}")
        return 0

    t0 = time.perf_counter()

    def progress(key, status, reason):
        extra = f" ({reason})" if reason else ""
        print(f"[{time.perf_counter() - t0:7.1f} s] {key}: {status}{extra}", flush=True)

    result = run_cohort(
        args.bids_dir, args.output_dir,
        participant_labels=args.participant_label, session_labels=args.session_label,
        worker=args.worker, n_procs=args.n_procs, cache_dir=args.cache_dir, model=args.model,
        settings=RunSettings(threshold=args.threshold, voxel_size=args.voxel_size, tta=args.tta,
                             report=not args.no_report, qsm_units=args.qsm_units,
                             allow_resolution=args.allow_resolution, recompute_qsm=args.recompute_qsm),
        sbatch_args=args.sbatch_args, progress=progress,
        group=not args.no_group,
    )
    print(f"\nDEEPMIR finished in {time.perf_counter() - t0:.1f} s; derivatives in {result.output_dir}")
    for line in result.summary_lines():
        print(line)
    if result.group.get("lesions"):
        print(f"cohort lesion table: {result.group['lesions']}")
    if (result.output_dir / "report.html").exists():
        print(f"cohort report: {result.output_dir / 'report.html'}")
    if not result.ok:
        print(f"deepmir run: {len(result.failed)} subject(s) failed", file=sys.stderr)
        return 1
    return 0
