"""A cohort on SLURM as one job array plus a group-level job that waits for it.

One SLURM *array* task per participant (or per chunk of participants), each running the whole
subject workflow in-process on a shared pydra cache, plus one group-level job that waits for the
array: :func:`submit_cohort_array`. This is the shape for cohorts of thousands: one ``sbatch``
call for the cohort instead of one per task, and the cluster's own scheduler decides how many
subjects run at once.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from deepmir_tasks.bids_names import check_label
from deepmir_tasks.io import InputError, atomic_path

from .sbatch import parse_sbatch_args, run_sbatch

__all__ = ["validate_labels", "submit_cohort_array", "array_script_text", "group_script_text", "max_array_size"]


def validate_labels(participants: Sequence[str]) -> list[str]:
    """Participant labels without ``sub-``, checked against BIDS's ``^[A-Za-z0-9]+$``.

    Duplicates are dropped (first kept). Anything else (spaces, ``;``, ``$``, quotes, ``-``,
    empty) raises :class:`InputError`: labels end up in file names and on command lines.
    """
    if isinstance(participants, str):
        participants = [participants]
    labels: list[str] = []
    for raw in participants:
        label = check_label(raw, source="--participant-label")
        if label not in labels:
            labels.append(label)
    if not labels:
        raise InputError("--participant-label", "no participants to submit")
    return labels


def submit_cohort_array(
    bids_dir,
    output_dir,
    participants: list[str],
    *,
    cache_dir,
    sbatch_args: str = "",
    chunk_size: int = 1,
    extra_run_args: Sequence[str] = (),
    dry_run: bool = False,
    max_parallel: int | None = None,
    run_command: Sequence[str] | None = None,
) -> dict:
    """Submit a cohort as one SLURM job array plus a group-level job that waits for it.

    Writes into ``output_dir/slurm/``: ``participants.txt`` (one line per array task, holding
    up to ``chunk_size`` labels separated by a space), ``participant_array.sh`` (array task
    ``i`` reads line ``i+1``, checks every label again and runs ``deepmir run BIDS OUT
    participant --participant-label LABELS --worker debug --cache-dir CACHE --n-procs
    $SLURM_CPUS_PER_TASK EXTRA...``) and ``group.sh`` (``deepmir run BIDS OUT group``,
    submitted with ``--dependency=afterany:<array>`` so it runs even when a subject failed).
    Logs go to ``output_dir/slurm/logs/``. All array tasks share the pydra cache, so a
    resubmission skips finished work.

    ``sbatch_args`` (e.g. ``"-p short --mem=8G -c 2 -t 2:00:00"``; not ``--array``, ``--wrap``
    or ``--dependency``, which are set here) are split with ``shlex`` and applied to both jobs;
    no shell ever sees them, and labels never pass through a shell unquoted.
    ``max_parallel`` caps how many array tasks run at once (``--array=0-N%max_parallel``).
    An array larger than the cluster's ``MaxArraySize`` is refused with the chunk size that
    would fit. ``run_command`` replaces the command prefix ``python -m pipelines.cli run`` (default: this
    interpreter), e.g. ``["apptainer", "exec", "deepmir.sif", "deepmir", "run"]``.
    With ``dry_run`` the files are written and the sbatch commands returned, not run.

    Returns a dict: ``array_job_id``, ``group_job_id`` (None when dry), ``array_script``,
    ``group_script``, ``participants_file``, ``n_tasks``, ``commands`` (sbatch argv lists).
    """
    labels = validate_labels(participants)
    bids_dir, output_dir, cache_dir = (Path(d).resolve() for d in (bids_dir, output_dir, cache_dir))
    chunks, user_args = _check_request(labels, bids_dir, sbatch_args, chunk_size, max_parallel)
    run_command = [sys.executable, "-m", "pipelines.cli", "run"] if run_command is None else list(run_command)
    files = _write_array_files(chunks, run_command, bids_dir, output_dir, cache_dir, extra_run_args, max_parallel)
    return _submit_array(files, user_args, len(chunks), dry_run)


def _check_request(labels, bids_dir: Path, sbatch_args, chunk_size, max_parallel) -> tuple[list, list]:
    """The chunks of labels (one per array task) and the user's sbatch options, checked."""
    if int(chunk_size) < 1:
        raise InputError("--chunk-size", f"must be at least 1, got {chunk_size}")
    chunk_size = int(chunk_size)
    if not bids_dir.is_dir():
        raise InputError(bids_dir, "BIDS folder does not exist")
    try:
        user_args = parse_sbatch_args(sbatch_args, refuse=("--array", "-a", "--wrap", "--dependency", "-d"))
    except ValueError as err:
        raise InputError("--sbatch-args", str(err)) from None
    if max_parallel is not None and int(max_parallel) < 1:
        raise InputError("--max-parallel", f"must be at least 1, got {max_parallel}")
    chunks = [labels[i:i + chunk_size] for i in range(0, len(labels), chunk_size)]
    max_size = max_array_size()
    if max_size is not None and len(chunks) > max_size:  # indices 0 .. MaxArraySize-1
        fit = -(-len(labels) // max_size)
        raise InputError("--chunk-size", f"{len(chunks)} array tasks exceed this cluster's MaxArraySize "
                                         f"({max_size}); use --chunk-size {fit} or more")
    return chunks, user_args


def _write_array_files(chunks, run_command, bids_dir, output_dir, cache_dir, extra_run_args,
                       max_parallel) -> dict:
    """Write the list file and the two job scripts under ``output_dir/slurm``; return their paths."""
    slurm_dir = output_dir / "slurm"
    log_dir = slurm_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    list_file = slurm_dir / "participants.txt"
    with atomic_path(list_file) as tmp:
        tmp.write_text("".join(" ".join(chunk) + "\n" for chunk in chunks))
    array_script = slurm_dir / "participant_array.sh"
    group_script = slurm_dir / "group.sh"
    _write_script(array_script, array_script_text(
        run_command, bids_dir, output_dir, cache_dir, list_file, log_dir, len(chunks), extra_run_args,
        max_parallel=max_parallel))
    _write_script(group_script, group_script_text(run_command, bids_dir, output_dir, log_dir))
    return {"array_script": array_script, "group_script": group_script, "participants_file": list_file}


def _submit_array(files: dict, user_args: list, n_tasks: int, dry_run: bool) -> dict:
    """Submit the array, then the group job depending on it (or only list the commands, ``dry_run``)."""
    array_cmd = ["sbatch", "--parsable", *user_args, str(files["array_script"])]
    out = {"array_job_id": None, "group_job_id": None, **files, "n_tasks": n_tasks, "commands": [array_cmd]}
    if dry_run:
        out["commands"].append(["sbatch", "--parsable", *user_args, "--dependency=afterany:<array_job_id>",
                                str(files["group_script"])])
        return out
    out["array_job_id"] = run_sbatch(array_cmd)
    group_cmd = ["sbatch", "--parsable", *user_args, f"--dependency=afterany:{out['array_job_id']}",
                 str(files["group_script"])]
    out["commands"].append(group_cmd)
    out["group_job_id"] = run_sbatch(group_cmd)
    return out


def array_script_text(run_command, bids_dir, output_dir, cache_dir, list_file, log_dir, n_tasks: int,
                      extra_run_args: Sequence[str] = (), max_parallel: int | None = None) -> str:
    """The bash text of the participant array script (see :func:`submit_cohort_array`)."""
    q = shlex.quote
    throttle = f"%{int(max_parallel)}" if max_parallel else ""
    prefix = " ".join(q(str(a)) for a in run_command)
    extra = " ".join(q(str(a)) for a in extra_run_args)
    n_procs = "" if "--n-procs" in extra_run_args else ' --n-procs "${SLURM_CPUS_PER_TASK:-1}"'
    return f"""#!/bin/bash
#SBATCH --job-name=deepmir-participant
#SBATCH --array=0-{n_tasks - 1}{throttle}
#SBATCH --output={q(str(log_dir / 'participant_%A_%a.log'))}
# DEEPMIR participant level: array task i runs the labels on line i+1 of the list file.
set -euo pipefail
list_file={q(str(list_file))}
task=${{SLURM_ARRAY_TASK_ID:?this script is an sbatch array script}}
line=$(sed -n "$((task + 1))p" "$list_file")
read -r -a labels <<< "$line"
if [ "${{#labels[@]}}" -eq 0 ]; then
    echo "deepmir array task $task: no participant labels on line $((task + 1)) of $list_file" >&2
    exit 2
fi
for label in "${{labels[@]}}"; do
    if [[ ! "$label" =~ ^[A-Za-z0-9]+$ ]]; then
        echo "deepmir array task $task: invalid participant label in $list_file" >&2
        exit 2
    fi
done
echo "deepmir array task $task on $(hostname): participants ${{labels[*]}}"
exec {prefix} {q(str(bids_dir))} {q(str(output_dir))} participant \\
    --participant-label "${{labels[@]}}" --worker debug --no-group --cache-dir {q(str(cache_dir))}{n_procs}{' ' + extra if extra else ''}
"""


def group_script_text(run_command, bids_dir, output_dir, log_dir) -> str:
    """The bash text of the group-level job script (see :func:`submit_cohort_array`)."""
    q = shlex.quote
    prefix = " ".join(q(str(a)) for a in run_command)
    return f"""#!/bin/bash
#SBATCH --job-name=deepmir-group
#SBATCH --output={q(str(log_dir / 'group_%j.log'))}
# DEEPMIR group level: cohort tables from every finished subject (runs after the whole array).
set -euo pipefail
exec {prefix} {q(str(bids_dir))} {q(str(output_dir))} group
"""


def max_array_size() -> int | None:
    """The cluster's ``MaxArraySize`` (array indices must stay below it), or None if unknown."""
    if shutil.which("scontrol") is None:
        return None
    try:
        proc = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", proc.stdout, flags=re.MULTILINE)
    return int(match.group(1)) if match else None


def _write_script(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
        tmp.chmod(0o755)
