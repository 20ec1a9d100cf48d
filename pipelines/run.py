"""Running the DEEPMIR pipeline over a cohort: the Python API behind ``deepmir run``.

>>> from pipelines.run import run_cohort
>>> result = run_cohort("bids/", "derivatives/deepmir", participant_labels=["01", "02"],
...                     worker="cf", n_procs=2)
>>> result.failed            # {"02": "sub-02_Chimap.nii.gz: QSM contains 12 non-finite voxels"}

The subject workflow is split over subjects at the outer level, so a subject that fails leaves
the others finished and cached. Results are then read back subject by subject from the cache and
copied out under BIDS-derivatives names.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from deepmir_tasks.codehash import code_version
from deepmir_tasks.model.modelfile import sha256_file
from deepmir_tasks.io import InputError, as_path as _as_path, write_json

from . import bids, derivatives

log = logging.getLogger("deepmir.run")

STATUS_DONE, STATUS_CACHED, STATUS_FAILED = "done", "cached", "failed"


@dataclass
class SubjectStatus:
    subject: bids.SubjectInputs
    status: str
    reason: str = ""
    files: dict = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class CohortResult:
    output_dir: Path
    subjects: list[SubjectStatus]
    group: dict = field(default_factory=dict)

    @property
    def failed(self) -> dict[str, str]:
        return {s.subject.key: s.reason for s in self.subjects if s.status == STATUS_FAILED}

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary_lines(self) -> list[str]:
        lines = []
        for s in sorted(self.subjects, key=lambda s: (s.status != STATUS_FAILED, s.subject.key)):
            extra = f": {s.reason}" if s.reason else ""
            lines.append(f"  {s.subject.key:<20} {s.status}{extra}")
        counts = {k: sum(s.status == k for s in self.subjects) for k in (STATUS_DONE, STATUS_CACHED, STATUS_FAILED)}
        lines.append(f"{counts[STATUS_DONE]} done, {counts[STATUS_CACHED]} cached, {counts[STATUS_FAILED]} failed")
        return lines


def resolve_model_path(model=None) -> Path:
    """The model file to use: ``model`` if given, else the bundled default; checked to exist."""
    from deepmir_tasks.model.modelfile import DEFAULT_MODEL, record_path

    path = Path(model).absolute() if model else DEFAULT_MODEL
    if not path.exists():
        what = "model file" if model else "bundled model (reinstall deepmir, or pass --model)"
        raise InputError(path, f"{what} does not exist")
    if not record_path(path).exists():
        raise InputError(path, f"model has no record {record_path(path).name} beside it")
    return path


def default_cache_dir(output_dir) -> Path:
    return Path(output_dir) / "sourcedata" / "deepmir_cache"


def run_cohort(
    bids_dir,
    output_dir,
    *,
    participant_labels=None,
    session_labels=None,
    worker: str = "cf",
    n_procs: int | None = None,
    cache_dir=None,
    model=None,
    threshold: float | None = None,
    voxel_size: float = 1.0,
    tta: bool = False,
    report: bool = True,
    sbatch_args: str = "",
    progress=None,
    group: bool = True,
) -> CohortResult:
    """Run the subject pipeline on every selected subject of ``bids_dir``; write derivatives.

    ``progress`` is an optional callable ``progress(key, status, reason)`` called once per subject as
    its result becomes known. Subjects lacking an input file are reported as failed with the missing
    modality named, and never submitted. With ``group`` (default) the cohort tables and report are
    rebuilt from every subject in ``output_dir`` afterwards.
    """
    subjects = bids.find_subjects(bids_dir, participant_labels, session_labels)
    model_path = resolve_model_path(model)
    n_procs = n_procs or os.cpu_count() or 1
    output_dir = Path(output_dir).absolute()
    cache_dir = Path(cache_dir).absolute() if cache_dir else default_cache_dir(output_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)

    statuses: dict[str, SubjectStatus] = {}
    runnable = []
    for subj in subjects:
        if subj.missing:
            statuses[subj.key] = SubjectStatus(subj, STATUS_FAILED, "; ".join(
                f"no {m} image ({subj.anat_dir_rel}/{subj.key}_{m}.nii.gz)" for m in subj.missing))
        else:
            runnable.append(subj)

    params = dict(threshold=threshold, voxel_size=voxel_size, tta=tta, report=report)
    # Threads per subject (not a task input, so the cache does not depend on it): all cores when
    # subjects run one at a time, else shared out between the subjects running side by side.
    threads = max(1, n_procs // max(1, min(len(runnable), n_procs))) if worker == "cf" else n_procs
    os.environ["DEEPMIR_THREADS"] = str(threads)
    tasks = {s.key: _subject_task(s, model_path, params) for s in runnable}
    already = {k for k, t in tasks.items() if _finished(_load(t, cache_dir))}

    derivatives.write_dataset_description(
        output_dir, model_file=model_path, model_sha256=sha256_file(model_path),
        parameters=params, source_dataset=Path(bids_dir).absolute())
    for key in statuses:  # subjects refused before submission
        _record(output_dir, statuses[key], progress)

    t0, t0_wall = time.perf_counter(), time.time()

    def collect(subj, final: bool) -> bool:
        """Copy out a finished subject's results; on the final sweep, record failures too."""
        task = tasks[subj.key]
        result = _load(task, cache_dir)
        if _finished(result):
            outputs = {n: _as_path(getattr(result.outputs, n)) for n in _output_names(result.outputs)}
            status = STATUS_CACHED if subj.key in already else STATUS_DONE
            files = derivatives.write_subject(outputs, output_dir, subj)
            statuses[subj.key] = SubjectStatus(subj, status, files=files,
                                               seconds=0.0 if status == STATUS_CACHED else time.perf_counter() - t0)
        elif final:
            reason = _error_reason(cache_dir / task._checksum, cache_dir=cache_dir,
                                   marker=str(subj.files["t2"]), since=t0_wall)
            statuses[subj.key] = SubjectStatus(subj, STATUS_FAILED, reason)
        else:
            return False
        _record(output_dir, statuses[subj.key], progress)
        return True

    for subj in runnable:  # results already in the cache are reported at once
        if subj.key in already:
            collect(subj, final=False)
    pending = [s for s in runnable if s.key not in already]
    if pending:
        stop = threading.Event()
        watcher = threading.Thread(target=_watch, args=(pending, collect, stop), daemon=True)
        watcher.start()
        try:
            _submit(pending, model_path=model_path, params=params, worker=worker,
                    n_procs=n_procs, cache_dir=cache_dir, sbatch_args=sbatch_args)
        finally:
            stop.set()
            watcher.join()
        for subj in pending:
            if subj.key not in statuses:
                collect(subj, final=True)

    ordered = [statuses[s.key] for s in subjects]
    result = CohortResult(output_dir, ordered)
    if group:
        result.group = run_group(output_dir, report=report)
    return result


def _watch(pending, collect, stop, interval: float = 2.0):
    """Report subjects as they finish, while the submission is still running."""
    remaining = list(pending)
    while remaining and not stop.wait(interval):
        remaining = [s for s in remaining if not collect(s, final=False)]


def _record(output_dir, status: SubjectStatus, progress):
    """Write ``logs/<key>_status.json`` (read by the group level) and tell the caller."""
    write_json({"participant_id": status.subject.participant_id, "session_id": status.subject.session_id,
                "status": status.status, "reason": status.reason, "seconds": round(status.seconds, 1),
                "version": code_version()},
               Path(output_dir) / "logs" / f"{status.subject.key}_status.json")
    if progress:
        progress(status.subject.key, status.status, status.reason)


def run_group(output_dir, *, report: bool = True) -> dict:
    """Build ``group/lesions.tsv``, ``group/summary.tsv`` and ``report.html`` from every subject
    already in ``output_dir`` (the ``group`` analysis level; also run after each participant run)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise InputError(output_dir, "output folder does not exist: run the participant level first")
    written = []
    for status_file in sorted((output_dir / "logs").glob("*_status.json")):
        st = json.loads(status_file.read_text())
        key = status_file.name.removesuffix("_status.json")
        anat = output_dir / f"sub-{st['participant_id']}"
        if st.get("session_id"):
            anat = anat / f"ses-{st['session_id']}"
        anat = anat / "anat"
        files = {name: anat / tmpl.format(key=key) for name, tmpl in derivatives.DERIVATIVE_NAMES.items()
                 if name in ("lesions", "summary", "dropped") and (anat / tmpl.format(key=key)).exists()}
        written.append((key, st, files))
    group = derivatives.write_group_tables(output_dir, [files for _, st, files in written
                                                         if st["status"] != STATUS_FAILED])
    if report:
        _cohort_report(output_dir, written, group)
    return group


def _subject_inputs(subj) -> dict:
    return dict(t2=subj.files["t2"], swi=subj.files["swi"], qsm=subj.files["qsm"],
                participant_id=subj.participant_id, session_id=subj.session_id or "")


def _subject_task(subj, model_path, params):
    from workflows.subject import SubjectPipeline

    return SubjectPipeline(model=model_path, **params, **_subject_inputs(subj))


def _submit(subjects, *, model_path, params, worker, n_procs, cache_dir, sbatch_args):
    """Run the subject workflows.

    Under ``cf`` and ``slurm`` the subject workflow is split over subjects at the outer level
    (:func:`workflows.cohort.CohortPipeline`): subjects run side by side and a failing one leaves
    the others finished and cached. The ``debug`` worker raises the first error and stops, so
    under it subjects are submitted one at a time.
    """
    from pydra.engine.submitter import Submitter

    from workflows.cohort import CohortPipeline

    kwargs = {}
    if worker == "cf":
        from pipelines.workers import LocalWorker

        worker = LocalWorker(n_procs=n_procs)
    elif worker == "slurm":
        from pipelines.slurm import slurm_worker

        worker = slurm_worker(sbatch_args=sbatch_args)
    if worker == "debug":
        jobs = [_subject_task(s, model_path, params) for s in subjects]
    else:
        jobs = [CohortPipeline([_subject_inputs(s) for s in subjects], model=model_path, **params)]
    with Submitter(worker=worker, cache_root=cache_dir, **kwargs) as sub:
        for job in jobs:
            try:
                sub(job, raise_errors=False)
            except Exception as err:  # noqa: BLE001 - one subject must never stop the others
                log.warning("subject workflow raised: %s", _one_line(err))


def _finished(result) -> bool:
    return result is not None and not result.errored


def _load(task, cache_dir):
    from pydra.engine.result import load_result

    return load_result(task._checksum, [Path(cache_dir)])


_ERR_LINE = re.compile(r"^(?:[\w.]+\.)?(\w*(?:Error|Exception)): (.+)$")


def _error_reason(job_dir: Path, *, cache_dir=None, marker: str = "", since: float = 0.0) -> str:
    """One line saying why a subject's job failed.

    The subject's own error record is read first. Some failures (e.g. a check of the job's inputs
    before it starts) are recorded only by the outer split job, whose record holds a section per
    failed subject: then the section mentioning ``marker`` (the subject's T2w path) is used.
    """
    text = _read_error(job_dir / "_error.pklz")
    if text is None and cache_dir is not None:
        for err_file in Path(cache_dir).glob("*/_error.pklz"):
            if err_file.stat().st_mtime < since - 1:
                continue
            outer = _read_error(err_file) or ""
            sections = [sec for sec in outer.split("\nJob '") if marker and marker in sec]
            if sections:
                text = sections[-1]
                break
    if text is None:
        return "failed (no error record)"
    hits = [m for m in (_ERR_LINE.match(line.strip()) for line in text.splitlines()) if m]
    inner = [m for m in hits if m.group(1) != "RuntimeError" or "Workflow job" not in m.group(2)]
    if inner:
        m = inner[-1]
        return m.group(2) if m.group(1) == "InputError" else f"{m.group(1)}: {m.group(2)}"
    return _one_line(text)


def _read_error(err_file: Path) -> str | None:
    import cloudpickle as cp

    if not err_file.exists():
        return None
    try:
        return "".join(cp.loads(err_file.read_bytes()).get("error message", []))
    except Exception:  # noqa: BLE001 - an unreadable record is reported as such by the caller
        return None


def _one_line(err) -> str:
    lines = [l for l in str(err).strip().splitlines() if l.strip()]
    return lines[-1].strip() if lines else type(err).__name__


def _output_names(outputs):
    import attrs

    return [f.name for f in attrs.fields(type(outputs)) if not f.name.startswith("_")]


def _cohort_report(output_dir, written, group):
    import pandas as pd

    try:
        from deepmir_tasks.report import render_cohort_report
    except ImportError:  # reports are optional for the tables
        return None
    rows = []
    for key, st, files in written:
        table = (pd.read_csv(files["lesions"], sep="\t", na_values="n/a", keep_default_na=False)
                 if "lesions" in files else pd.DataFrame(columns=["label", "volume_mm3"]))
        is_iron = table["label"] == "iron"
        html = Path(output_dir) / f"{key}.html"
        rows.append(dict(participant_id=key.removeprefix("sub-"), status=st["status"], reason=st["reason"],
                         n_cmb=int((table["label"] == "cmb").sum()), n_iron=int(is_iron.sum()),
                         iron_volume_mm3=float(table.loc[is_iron, "volume_mm3"].sum()),
                         report=html.name if html.exists() else None))
    return render_cohort_report(Path(output_dir) / "report.html", rows, group_lesions_tsv=group.get("lesions"))
