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

import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from deepmir_tasks import __version__
from deepmir_tasks.io import InputError

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
    threshold: float = 0.5,
    voxel_size: float = 1.0,
    tta: bool = False,
    report: bool = True,
    sbatch_args: str = "",
    progress=None,
) -> CohortResult:
    """Run the subject pipeline on every selected subject of ``bids_dir``; write derivatives.

    ``progress`` is an optional callable ``progress(key, status, reason)`` called once per subject as
    its result becomes known. Subjects lacking an input file are reported as failed with the missing
    modality named, and never submitted.
    """
    from deepmir_tasks.model.modelfile import resolve_model_path

    output_dir = Path(output_dir).absolute()
    cache_dir = Path(cache_dir).absolute() if cache_dir else default_cache_dir(output_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    model_path = Path(resolve_model_path(model)).absolute()
    n_procs = n_procs or os.cpu_count() or 1
    subjects = bids.find_subjects(bids_dir, participant_labels, session_labels)

    statuses: dict[str, SubjectStatus] = {}
    runnable = []
    for subj in subjects:
        if subj.missing:
            statuses[subj.key] = SubjectStatus(subj, STATUS_FAILED, "missing input: " + ", ".join(
                f"{subj.key}_{m}.nii.gz" for m in subj.missing))
        else:
            runnable.append(subj)

    params = dict(threshold=threshold, voxel_size=voxel_size, tta=tta, report=report)
    # Threads per subject: all cores when subjects run one at a time, else shared out.
    threads = max(1, n_procs // max(1, min(len(runnable), n_procs))) if worker == "cf" else n_procs
    tasks = {s.key: _subject_task(s, model_path, params, threads) for s in runnable}
    already = {k for k, t in tasks.items() if _finished(_load(t, cache_dir))}

    t0 = time.perf_counter()
    to_run = [k for k in tasks if k not in already]
    if to_run:
        _submit([s for s in runnable if s.key in to_run], model_path=model_path, params=params,
                threads=threads, worker=worker, n_procs=n_procs, cache_dir=cache_dir,
                sbatch_args=sbatch_args)
    elapsed = time.perf_counter() - t0

    derivatives.write_dataset_description(
        output_dir, model_file=model_path, model_sha256=derivatives.sha256_file(model_path),
        parameters=params, source_dataset=Path(bids_dir).absolute())
    for subj in runnable:
        task = tasks[subj.key]
        result = _load(task, cache_dir)
        if result is None or result.errored:
            reason = _error_reason(cache_dir / task._checksum) if result is not None else "did not run"
            statuses[subj.key] = SubjectStatus(subj, STATUS_FAILED, reason)
        else:
            outputs = {name: _as_path(getattr(result.outputs, name)) for name in _output_names(result.outputs)}
            files = derivatives.write_subject(outputs, output_dir, subj)
            status = STATUS_CACHED if subj.key in already else STATUS_DONE
            statuses[subj.key] = SubjectStatus(subj, status, files=files,
                                               seconds=0.0 if status == STATUS_CACHED else elapsed)
        if progress:
            s = statuses[subj.key]
            progress(s.subject.key, s.status, s.reason)
    ordered = [statuses[s.key] for s in subjects]
    group = derivatives.write_group_tables(output_dir, [s.files for s in ordered if s.status != STATUS_FAILED])
    result = CohortResult(output_dir, ordered, group)
    if report:
        _cohort_report(result)
    return result


def _subject_inputs(subj) -> dict:
    return dict(t2=subj.files["t2"], swi=subj.files["swi"], qsm=subj.files["qsm"],
                participant_id=subj.participant_id, session_id=subj.session_id or "")


def _subject_task(subj, model_path, params, threads):
    from workflows.subject import SubjectPipeline

    return SubjectPipeline(model=model_path, threads=threads, **params, **_subject_inputs(subj))


def _submit(subjects, *, model_path, params, threads, worker, n_procs, cache_dir, sbatch_args):
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
        kwargs["n_procs"] = n_procs
    elif worker == "slurm":
        from pipelines.slurm import slurm_worker

        worker = slurm_worker(sbatch_args=sbatch_args)
    if worker == "debug":
        jobs = [_subject_task(s, model_path, params, threads) for s in subjects]
    else:
        jobs = [CohortPipeline([_subject_inputs(s) for s in subjects], model=model_path,
                               threads=threads, **params)]
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


def _error_reason(job_dir: Path) -> str:
    """The last ``SomeError: message`` line of the first error recorded for a job (one line)."""
    import cloudpickle as cp

    err_file = job_dir / "_error.pklz"
    if not err_file.exists():
        return "failed (no error record)"
    try:
        record = cp.loads(err_file.read_bytes())
        text = "".join(record.get("error message", []))
    except Exception:  # noqa: BLE001
        return "failed (error record unreadable)"
    hits = [m for m in (_ERR_LINE.match(line.strip()) for line in text.splitlines()) if m]
    inner = [m for m in hits if m.group(1) != "RuntimeError" or "Workflow job" not in m.group(2)]
    if inner:
        m = inner[-1]
        return m.group(2) if m.group(1) == "InputError" else f"{m.group(1)}: {m.group(2)}"
    return _one_line(text)


def _one_line(err) -> str:
    lines = [l for l in str(err).strip().splitlines() if l.strip()]
    return lines[-1].strip() if lines else type(err).__name__


def _output_names(outputs):
    import attrs

    return [f.name for f in attrs.fields(type(outputs)) if not f.name.startswith("_")]


def _as_path(value):
    if value is None:
        return None
    return Path(getattr(value, "fspath", value))


def _cohort_report(result: CohortResult):
    try:
        from deepmir_tasks.report import render_cohort_report
    except ImportError:
        return None
    rows = []
    import pandas as pd

    for s in result.subjects:
        n_cmb = n_iron = 0
        iron_vol = 0.0
        if s.files.get("lesions"):
            table = pd.read_csv(s.files["lesions"], sep="\t", na_values="n/a")
            n_cmb = int((table.get("label") == "cmb").sum()) if len(table) else 0
            n_iron = int((table.get("label") == "iron").sum()) if len(table) else 0
            iron_vol = float(table.loc[table["label"] == "iron", "volume_mm3"].sum()) if len(table) else 0.0
        rows.append(dict(participant_id=s.subject.key.removeprefix("sub-"), status=s.status,
                         reason=s.reason, n_cmb=n_cmb, n_iron=n_iron, iron_volume_mm3=iron_vol,
                         report=f"{s.subject.key}.html" if s.files.get("report") else None))
    return render_cohort_report(result.output_dir / "report.html", rows,
                                group_lesions_tsv=result.group.get("lesions"))
