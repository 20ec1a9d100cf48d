"""Running DEEPMIR on SLURM: a pydra worker with fixed rough edges, and job arrays for cohorts.

Two ways to use a cluster:

* One SLURM job per pydra task: ``Submitter(worker=slurm_worker(sbatch_args="-p short"))``
  (or ``worker=DeepmirSlurmWorker``, with ``sbatch_args=`` passed to the ``Submitter``). Pydra
  1.0a12 finds workers by name only inside the ``pydra.workers`` namespace package, so this
  worker is passed as a class or an object, not by a name string; its ``plugin_name()`` is
  ``"deepmir-slurm"``.
* One SLURM *array* task per participant (or per chunk of participants), each running the
  whole subject workflow in-process on a shared pydra cache, plus one group-level job that
  waits for the array: :func:`submit_cohort_array`. This is the shape for cohorts of thousands:
  one ``sbatch`` call for the cohort instead of one per task, and the cluster's own scheduler
  decides how many subjects run at once.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import attrs
import pydra.engine  # noqa: F401 - import first: pydra.workers.base alone is a circular import
from pydra.workers import base
from pydra.workers.slurm import SlurmWorker

from deepmir_tasks.bids_names import check_label
from deepmir_tasks.io import InputError, atomic_path

log = logging.getLogger("deepmir.slurm")

__all__ = [
    "DeepmirSlurmWorker",
    "SlurmJobError",
    "slurm_worker",
    "validate_labels",
    "parse_sbatch_args",
    "submit_cohort_array",
    "array_script_text",
    "group_script_text",
    "max_array_size",
]

#: SLURM job states after which a job will not run again by itself.
FINAL_STATES = frozenset({
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED",
    "BOOT_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT",
})
#: sbatch options the worker sets itself (one script per job), so users may not pass them.
_REFUSED_WORKER_OPTS = ("--wrap", "--array", "-a")


class SlurmJobError(RuntimeError):
    """A SLURM job of a pydra task failed; the message carries the task's own error."""


class _Unreachable(RuntimeError):
    """``scontrol`` failed for another reason than an unknown job id."""


def parse_sbatch_args(sbatch_args: str | Sequence[str], refuse: Sequence[str] = ()) -> list[str]:
    """Split sbatch options as a shell would (``shlex.split``), without running a shell.

    Options named in ``refuse`` (e.g. ``--wrap``, given as ``--opt``, ``--opt=v`` or ``-o v``)
    raise :class:`ValueError` naming the option.
    """
    args = shlex.split(sbatch_args) if isinstance(sbatch_args, str) else [str(a) for a in sbatch_args]
    for arg in args:
        name = arg.split("=", 1)[0]
        short = arg[:2] if re.match(r"^-[A-Za-z]", arg) else None
        for bad in refuse:
            if name == bad or (len(bad) == 2 and short == bad):
                raise ValueError(f"sbatch option {arg!r} is set by DEEPMIR itself and cannot be passed")
    return args


def _option_value(args: list[str], short: str, long: str) -> str | None:
    """The value of ``-x V``, ``-xV``, ``--long=V`` or ``--long V`` in an argv list (last wins)."""
    value = None
    for i, arg in enumerate(args):
        if arg == short or arg == long:
            value = args[i + 1] if i + 1 < len(args) else None
        elif arg.startswith(long + "="):
            value = arg[len(long) + 1:]
        elif arg.startswith(short) and len(arg) > 2 and not arg.startswith("--"):
            value = arg[2:]
    return value


@attrs.define(getstate_setstate=False)  # keep pydra's __getstate__ (drops the event loop)
class DeepmirSlurmWorker(SlurmWorker):
    """Pydra's SLURM worker (1.0a12) with four fixes; everything else is inherited.

    Overrides and why:

    * ``run``: **checks the cache before calling sbatch**. Pydra's worker submits every
      runnable task and the job finds its cached result only once it runs on a node, so a
      rerun of a partly finished cohort costs one queued job per finished task. Here a task
      whose successful result is already in ``cache_root`` (or a read-only cache) returns at
      once; ``rerun=True`` still submits.
    * ``run``: **parses ``sbatch_args`` with ``shlex``**, so quoted values work, and accepts
      ``-e/--error`` (pydra's worker then crashed on ``None.replace``). The job's real
      ``StdErr`` path is read back from ``scontrol``, so ``%j``/``%x`` patterns are fine.
      ``--wrap`` and ``--array`` are refused with a clear message: the worker writes its own
      script, one job per task.
    * ``_poll_job``/``_verify_exit_code``: **works without ``sacct``**. Pydra asks ``sacct``
      once a job leaves ``squeue`` and fails with "Job information not found" when the cluster
      has no accounting database, although the job succeeded. Here the state comes from
      ``scontrol show job`` (finished jobs stay there for ``MinJobAge`` seconds), then from
      ``sacct`` if it answers, and finally from the task's result file in the cache.
    * **Real error messages**: pydra's worker read the second-last line of the ``.err`` file
      and usually reported "Job failed (unknown reason - TODO)". Here the task's pickled
      traceback (``_error.pklz`` in its cache folder) is raised, ending with the exception
      line; for jobs killed before Python could record anything (time limit, memory, scancel,
      import errors) the SLURM state, exit code and the tail of the job's stderr are given.
      Such jobs are not requeued (pydra requeued cancelled jobs forever); their stale pydra
      lock is removed so that a resubmission can run them.

    The batch script passes the job file to ``load_and_run`` as a ``Path`` (pydra passed a
    ``str``, which hid unpickling errors behind an ``AttributeError``).
    """

    _plugin_name = "deepmir-slurm"
    #: seconds of failing ``scontrol`` calls (slurmctld down or overloaded) before giving up
    unreachable_timeout = 600.0

    poll_delay: float = attrs.field(default=0.5, converter=base.ensure_non_negative)
    sbatch_args: str = attrs.field(default="")

    @sbatch_args.validator
    def _check_sbatch_args(self, attribute, value):
        parse_sbatch_args(value, refuse=_REFUSED_WORKER_OPTS)

    def _prepare_runscripts(self, job, interpreter="/bin/sh", rerun=False):
        from pydra.engine.job import save

        script_dir = Path(job.cache_root) / f"{self.plugin_name()}_scripts" / job.uid
        script_dir.mkdir(parents=True, exist_ok=True)
        job_pkl = script_dir / "_job.pklz"
        if not job_pkl.exists():
            save(script_dir, job=job)
        if not job_pkl.exists() or not job_pkl.stat().st_size:
            raise RuntimeError(f"could not write the pydra job file {job_pkl}")
        code = (
            "from pathlib import Path; from pydra.engine.job import load_and_run; "
            f"load_and_run(Path({str(job_pkl)!r}), rerun={bool(rerun)})"
        )
        batch_script = script_dir / f"batchscript_{job.uid}.sh"
        batch_script.write_text(
            f"#!{interpreter}\n"
            f"#SBATCH --output={shlex.quote(str(script_dir / 'slurm-%j.out'))}\n"
            f"exec {shlex.quote(sys.executable)} -c {shlex.quote(code)}\n"
        )
        return script_dir, batch_script

    async def run(self, job, rerun: bool = False):
        """Submit one pydra job with sbatch (unless cached) and wait for it; return its Result."""
        if not rerun:
            cached = job.result()
            if cached is not None and not cached.errored:
                log.debug("%s: result found in the cache, not submitted", job.name)
                return cached
        script_dir, batch_script = self._prepare_runscripts(job, rerun=rerun)
        args = parse_sbatch_args(self.sbatch_args, refuse=_REFUSED_WORKER_OPTS)
        err_file = _option_value(args, "-e", "--error")
        if _option_value(args, "-J", "--job-name") is None:
            args.append(f"--job-name={_job_label(job)}.{job.uid}")
        if _option_value(args, "-o", "--output") is None:
            args.append(f"--output={script_dir / 'slurm-%j.out'}")
        if err_file is None:
            err_file = str(script_dir / "slurm-%j.err")
            args.append(f"--error={err_file}")
        rc, stdout, stderr = await base.read_and_display_async(
            "sbatch", "--parsable", *args, str(batch_script), hide_display=True
        )
        match = re.match(r"\s*(\d+)", stdout)
        if rc or not match:
            raise SlurmJobError(f"sbatch failed for {_job_label(job)} (exit {rc}): {stderr.strip() or stdout.strip()}")
        jobid = match.group(1)
        self.error[jobid] = err_file.replace("%j", jobid)
        log.debug("%s: submitted as SLURM job %s", job.name, jobid)
        unreachable_since = None
        try:
            while True:
                try:
                    state = await self._poll_job(jobid)
                    unreachable_since = None
                except _Unreachable as err:  # slurmctld busy or restarting: keep waiting a while
                    unreachable_since = unreachable_since or time.monotonic()
                    if time.monotonic() - unreachable_since > self.unreachable_timeout:
                        raise SlurmJobError(f"{_job_label(job)} (SLURM job {jobid}): slurmctld did not answer "
                                            f"for {self.unreachable_timeout:.0f} s: {err}") from None
                    log.warning("SLURM job %s: scontrol failed (%s); retrying", jobid, err)
                    state = False
                if state:
                    return self._outcome(job, jobid, state)
                await asyncio.sleep(self.poll_delay)
        finally:
            self.error.pop(jobid, None)

    async def _poll_job(self, jobid):
        """Return False while the job is queued or running, else a dict describing its end."""
        rc, out, err = await base.read_and_display_async(
            "scontrol", "show", "job", "-o", jobid, hide_display=True
        )
        if rc and "Invalid job id" not in err:
            raise _Unreachable(err.strip() or f"scontrol exit code {rc}")
        if rc == 0 and out.strip():
            record = _scontrol_record(out)
            if record["state"] not in FINAL_STATES:
                return False
            if record.get("stderr"):
                self.error[jobid] = record["stderr"]
            return record
        return await self._verify_exit_code(jobid)

    async def _verify_exit_code(self, jobid):
        """The end of a job ``scontrol`` has forgotten: ask ``sacct`` if it answers."""
        if shutil.which("sacct"):
            rc, out, _ = await base.read_and_display_async(
                "sacct", "-n", "-X", "-P", "-j", jobid, "-o", "State,ExitCode", hide_display=True
            )
            line = out.strip().splitlines()[0] if rc == 0 and out.strip() else ""
            if "|" in line:
                state, code = line.split("|", 1)
                state = state.split()[0].rstrip("+")
                if state not in FINAL_STATES:
                    return False
                return {"state": state, "exit_code": code}
        # Neither knows the job any more: the task's result file in the cache decides.
        return {"state": "UNKNOWN", "exit_code": "?"}

    def _outcome(self, job, jobid: str, record: dict):
        """Return the job's Result, or raise SlurmJobError with the most useful message."""
        from pydra.engine.result import load_result

        result = load_result(job.checksum, job.all_caches)
        if result is not None and not result.errored:
            if record["state"] not in ("COMPLETED", "UNKNOWN"):
                log.warning("SLURM job %s ended %s but %s has a result", jobid, record["state"], job.name)
            return result
        where = f"{_job_label(job)} (SLURM job {jobid}, {record['state']}, exit code {record.get('exit_code', '?')})"
        traceback = _pickled_traceback(job.cache_dir / "_error.pklz")
        if traceback:
            last = _last_error_line(traceback)
            raise SlurmJobError(f"{where} failed: {last}\n\nTraceback from the job:\n{traceback}"
                                f"\nCrash report: {job.cache_dir / '_error.pklz'}")
        # Killed before pydra could record an error (time limit, memory, scancel, bad python...)
        lock = job.lockfile
        if lock.exists():
            lock.unlink()
        err_file = Path(self.error.get(jobid, ""))
        tail = _tail(err_file) if err_file.is_file() else f"(no stderr file at {err_file})"
        if record["state"] == "UNKNOWN":
            raise SlurmJobError(f"{where}: SLURM no longer knows the job and it left no result; "
                                f"stderr ({err_file}):\n{tail}")
        raise SlurmJobError(f"{where} ended without a result; stderr ({err_file}):\n{tail}")


def slurm_worker(sbatch_args: str = "", poll_delay: float = 0.5) -> DeepmirSlurmWorker:
    """A :class:`DeepmirSlurmWorker` for ``Submitter(worker=...)``; ``sbatch_args`` is checked now."""
    try:
        return DeepmirSlurmWorker(sbatch_args=sbatch_args, poll_delay=poll_delay)
    except ValueError as err:
        raise InputError("--sbatch-args", str(err)) from None


def _job_label(job) -> str:
    """The node name of a job in its workflow, or its task class for a task run on its own."""
    return type(job.task).__name__ if job.name == "main" else job.name


def _scontrol_record(text: str) -> dict:
    """JobState, ExitCode and StdErr from one ``scontrol show job -o`` line."""
    state = re.search(r"\bJobState=(\S+)", text)
    code = re.search(r"\bExitCode=(\S+)", text)
    err = re.search(r"\bStdErr=(.*?)(?:\s+\w+=|\s*$)", text)
    return {
        "state": state.group(1) if state else "UNKNOWN",
        "exit_code": code.group(1) if code else "?",
        "stderr": err.group(1) if err else None,
    }


def _pickled_traceback(error_file: Path) -> str:
    if not error_file.exists():
        return ""
    import cloudpickle as cp

    try:
        with error_file.open("rb") as fp:
            error = cp.load(fp)
    except Exception as err:  # noqa: BLE001 - a damaged crash report must not hide the failure
        return f"(crash report {error_file} could not be read: {err})"
    message = error.get("error message", error) if isinstance(error, dict) else error
    return "".join(message) if isinstance(message, list) else str(message)


def _last_error_line(traceback: str) -> str:
    """The ``SomeError: message`` line of a formatted traceback (the last one, if chained)."""
    lines = [ln for ln in traceback.splitlines() if ln.strip()]
    for line in reversed(lines):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Warning)\b", line):
            return line.strip()
    return lines[-1].strip() if lines else "unknown error"


def _tail(path: Path, n: int = 20) -> str:
    lines = path.read_text(errors="replace").splitlines()
    return "\n".join(lines[-n:]) if lines else "(empty)"


# ---------------------------------------------------------------------------------------------
# Job arrays for large cohorts
# ---------------------------------------------------------------------------------------------

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
    if int(chunk_size) < 1:
        raise InputError("--chunk-size", f"must be at least 1, got {chunk_size}")
    chunk_size = int(chunk_size)
    bids_dir = Path(bids_dir).resolve()
    output_dir = Path(output_dir).resolve()
    cache_dir = Path(cache_dir).resolve()
    if not bids_dir.is_dir():
        raise InputError(bids_dir, "BIDS folder does not exist")
    try:
        user_args = parse_sbatch_args(sbatch_args, refuse=("--array", "-a", "--wrap", "--dependency", "-d"))
    except ValueError as err:
        raise InputError("--sbatch-args", str(err)) from None
    run_command = [sys.executable, "-m", "pipelines.cli", "run"] if run_command is None else list(run_command)

    slurm_dir = output_dir / "slurm"
    log_dir = slurm_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    chunks = [labels[i:i + chunk_size] for i in range(0, len(labels), chunk_size)]
    if max_parallel is not None and int(max_parallel) < 1:
        raise InputError("--max-parallel", f"must be at least 1, got {max_parallel}")
    max_size = max_array_size()
    if max_size is not None and len(chunks) > max_size:  # indices 0 .. MaxArraySize-1
        fit = -(-len(labels) // max_size)
        raise InputError("--chunk-size", f"{len(chunks)} array tasks exceed this cluster's MaxArraySize "
                                         f"({max_size}); use --chunk-size {fit} or more")
    list_file = slurm_dir / "participants.txt"
    with atomic_path(list_file) as tmp:
        tmp.write_text("".join(" ".join(chunk) + "\n" for chunk in chunks))

    array_script = slurm_dir / "participant_array.sh"
    group_script = slurm_dir / "group.sh"
    _write_script(array_script, array_script_text(
        run_command, bids_dir, output_dir, cache_dir, list_file, log_dir, len(chunks), extra_run_args,
        max_parallel=max_parallel))
    _write_script(group_script, group_script_text(run_command, bids_dir, output_dir, log_dir))

    array_cmd = ["sbatch", "--parsable", *user_args, str(array_script)]
    out = {
        "array_job_id": None, "group_job_id": None, "array_script": array_script,
        "group_script": group_script, "participants_file": list_file, "n_tasks": len(chunks),
        "commands": [array_cmd],
    }
    if dry_run:
        out["commands"].append(["sbatch", "--parsable", *user_args, "--dependency=afterany:<array_job_id>",
                                str(group_script)])
        return out
    out["array_job_id"] = _sbatch(array_cmd)
    group_cmd = ["sbatch", "--parsable", *user_args, f"--dependency=afterany:{out['array_job_id']}",
                 str(group_script)]
    out["commands"].append(group_cmd)
    out["group_job_id"] = _sbatch(group_cmd)
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


def _sbatch(argv: list[str]) -> str:
    """Run sbatch (no shell) and return the job id; RuntimeError with sbatch's message otherwise."""
    if shutil.which(argv[0]) is None:
        raise RuntimeError(f"{argv[0]} not found on PATH: is this a SLURM login node?")
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    match = re.match(r"\s*(\d+)", proc.stdout)
    if proc.returncode or not match:
        raise RuntimeError(f"sbatch failed (exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()}")
    return match.group(1)
