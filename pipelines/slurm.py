"""Running DEEPMIR on SLURM: a pydra worker with fixed rough edges (job arrays: :mod:`.slurm_array`).

Two ways to use a cluster:

* One SLURM job per pydra task: ``Submitter(worker=slurm_worker(sbatch_args="-p short"))``
  (or ``worker=DeepmirSlurmWorker``, with ``sbatch_args=`` passed to the ``Submitter``). Pydra
  1.0a12 finds workers by name only inside the ``pydra.workers`` namespace package, so this
  worker is passed as a class or an object, not by a name string; its ``plugin_name()`` is
  ``"deepmir-slurm"``.
* One SLURM *array* task per participant (or per chunk of participants), each running the
  whole subject workflow in-process on a shared pydra cache, plus one group-level job that
  waits for the array: :func:`pipelines.slurm_array.submit_cohort_array` (importable from here
  too). This is the shape for cohorts of thousands:
  one ``sbatch`` call for the cohort instead of one per task, and the cluster's own scheduler
  decides how many subjects run at once.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shlex
import shutil
import sys
import time
from pathlib import Path

import attrs
import pydra.engine  # noqa: F401 - import first: pydra.workers.base alone is a circular import
from pydra.workers import base
from pydra.workers.slurm import SlurmWorker

from deepmir_tasks.io import InputError

from .sbatch import option_value as _option_value
from .sbatch import parse_sbatch_args
from .slurm_array import array_script_text, group_script_text, max_array_size, submit_cohort_array, validate_labels

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
