"""Running the DEEPMIR pipeline over a cohort: the Python API behind ``deepmir run``.

>>> from pipelines.run import run_cohort
>>> result = run_cohort("bids/", "derivatives/deepmir", participant_labels=["01", "02"],
...                     worker="cf", n_procs=2)
>>> result.failed            # {"02": "sub-02_Chimap.nii.gz: QSM contains 12 non-finite voxels"}

The subject workflow is split over subjects at the outer level, so a subject that fails leaves
the others finished and cached. Results are then read back subject by subject from the cache and
copied out under BIDS-derivatives names. This module only orchestrates: the statuses and results
are :mod:`pipelines.results`, the error records :mod:`pipelines.errors`, the group level
:mod:`pipelines.group`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from deepmir_tasks.bids_files import find_subjects
from deepmir_tasks.bids_names import MODALITY_NAMES, MODALITY_SUFFIX
from deepmir_tasks.io import InputError
from deepmir_tasks.model.choice import bundled_subset_models, choose_model
from deepmir_tasks.model.modelfile import load_record, sha256_file
from deepmir_tasks.settings import RunSettings
from deepmir_tasks.threads import set_subject_threads

from . import derivatives
from .errors import error_reason as _error_reason
from .errors import one_line
from .group import run_group
from .results import (
    STATUS_CACHED,
    STATUS_DONE,
    STATUS_FAILED,
    CohortResult,
    SubjectStatus,
    finished,
    load_result,
    record_status,
    result_files,
)

__all__ = ["run_cohort", "run_group", "resolve_model_path", "default_cache_dir", "CohortResult",
           "SubjectStatus", "RunSettings"]

log = logging.getLogger("deepmir.run")


def resolve_model_path(model=None) -> Path:
    """The model file to use: ``model`` if given, else the bundled default.

    Checked whole, once, before anything runs or any cached result is served: the record is read,
    the weights' SHA-256 compared with it and the weights loaded into the record's architecture
    (:func:`~deepmir_tasks.model.modelfile.load_model`); a problem is one :class:`InputError` line.
    """
    from deepmir_tasks.model.modelfile import DEFAULT_MODEL, load_model, record_path

    path = Path(model).absolute() if model else DEFAULT_MODEL
    if not path.exists():
        what = "model file" if model else "bundled model (reinstall deepmir, or pass --model)"
        raise InputError(path, f"{what} does not exist")
    if not record_path(path).exists():
        raise InputError(path, f"model has no record {record_path(path).name} beside it")
    load_model(path)
    return path


def default_cache_dir(output_dir) -> Path:
    return Path(output_dir) / "sourcedata" / "deepmir_cache"


def run_cohort(bids_dir, output_dir, *, participant_labels=None, session_labels=None, worker: str = "cf",
               n_procs: int | None = None, cache_dir=None, model=None, settings: RunSettings | None = None,
               sbatch_args: str = "", progress=None, group: bool = True, **setting_changes) -> CohortResult:
    """Run the subject pipeline on every selected subject of ``bids_dir``; write derivatives.

    ``settings`` (:class:`~deepmir_tasks.settings.RunSettings`) says how each subject is processed;
    ``setting_changes`` (``threshold=``, ``voxel_size=``, ``tta=``, ``report=``) change some of them.
    ``progress`` is an optional callable ``progress(key, status, reason)`` called once per subject as
    its result becomes known. Without ``model``, a subject runs with the bundled model made for
    exactly its modalities when the package ships one (:mod:`deepmir_tasks.model.choice`), else
    with the bundled default. A subject may lack one or two of T2w, SWI and QSM when the model serves
    subsets (trained with modality dropout); otherwise, or lacking all three, it is reported as
    failed with the missing modality named, and never submitted. With ``group`` (default) the cohort tables and report are
    rebuilt from every subject in ``output_dir`` afterwards.
    """
    settings = (settings or RunSettings()).replace(**setting_changes)
    check_output_dir(output_dir)
    subjects = find_subjects(bids_dir, participant_labels, session_labels)
    model_path = resolve_model_path(model)
    # a subject runs with the user's model, else the bundled one made for its modalities, if any
    bundled = None if model else bundled_subset_models()
    models = {s.key: model_path if model else choose_model(s.modalities, bundled=bundled) for s in subjects}
    for path in set(models.values()) - {model_path}:
        resolve_model_path(path)
    records = {path: load_record(path) for path in set(models.values())}
    n_procs = n_procs or os.cpu_count() or 1
    output_dir = Path(output_dir).absolute()
    cache_dir = Path(cache_dir).absolute() if cache_dir else default_cache_dir(output_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)

    reasons = {s.key: "; ".join(s.problems) or _missing_reason(s, models[s.key], records[models[s.key]])
               or _unreadable_reason(s) for s in subjects}
    refused = {s.key: SubjectStatus(s, STATUS_FAILED, reasons[s.key]) for s in subjects if reasons[s.key]}
    runnable = [s for s in subjects if not reasons[s.key]]
    # all cores when subjects run one at a time, else shared out between those running side by side
    set_subject_threads(n_procs, min(len(runnable), n_procs) if worker == "cf" else 1)
    derivatives.write_dataset_description(
        output_dir, model_file=model_path, model_sha256=sha256_file(model_path),
        parameters=settings.as_dict(), source_dataset=Path(bids_dir).absolute(),
        subset_models=sorted({models[s.key] for s in runnable} - {model_path}))
    for status in refused.values():
        record_status(output_dir, status, progress)

    collector = _Collector({s.key: _subject_task(s, models[s.key], settings) for s in runnable},
                           cache_dir, output_dir, progress, statuses=refused)
    pending = [s for s in runnable if not collector.collect(s, final=False, cached=True)]
    if pending:
        _run_watched(pending, collector, models=models, settings=settings, worker=worker,
                     n_procs=n_procs, cache_dir=cache_dir, sbatch_args=sbatch_args)
    result = CohortResult(output_dir, [collector.statuses[s.key] for s in subjects])
    if group:
        result.group = run_group(output_dir, report=settings.report)
    return result


#: free space below which a run is refused up front (a subject writes about 100 MB of derivatives
#: and cache at the 1 mm working grid)
MIN_FREE_BYTES = 1 << 30


def check_output_dir(output_dir) -> None:
    """Refuse, in one line naming the path, an output folder that cannot be written: a file in its
    place, no permission, a read-only or (nearly) full file system."""
    import shutil
    import tempfile

    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise InputError(output_dir, "output path exists and is not a folder")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir, prefix=".deepmir-write-test-"):
            pass
    except OSError as err:
        raise InputError(output_dir, f"cannot write to the output folder ({err.strerror or err})") from None
    free = shutil.disk_usage(output_dir).free
    if free < MIN_FREE_BYTES:
        raise InputError(output_dir, f"only {free / 1e6:.0f} MB free on this file system; a run needs "
                                     f"at least {MIN_FREE_BYTES / 1e9:.1f} GB (about 0.1 GB per subject)")


def _missing_reason(subj, model_path, record: dict) -> str:
    """Why a subject cannot run with this model (its file and ``record``) for lack of images (one
    line naming each missing modality's file, whose path names the subject), or ``""``. A model
    trained with modality dropout (:func:`~deepmir_tasks.model.predictor.serves_subsets`) takes any
    non-empty subset (the subject then runs in the space of its T2w, else SWI, else QSM, flagged
    ``no_t2w``/``no_swi``/``no_qsm``); any other model needs each of its own modalities."""
    from deepmir_tasks.model.predictor import serves_subsets

    missing, need = subj.missing, ""
    if len(missing) < len(MODALITY_SUFFIX):
        if serves_subsets(record):
            return ""
        missing = [m for m in missing if m in {MODALITY_SUFFIX[k] for k in record["modalities"]}]
        need = (f": the model {Path(model_path).name} needs "
                + " + ".join(MODALITY_NAMES[m] for m in record["modalities"])
                + " (it was not trained with modality dropout, which serves any subset)")
    if not missing:
        return ""
    return "; ".join(f"no {m} image ({subj.anat_dir_rel}/{subj.key}_{m}.nii.gz)" for m in missing) + need


def _unreadable_reason(subj) -> str | None:
    """Why one of the subject's files cannot be read as gzipped NIfTI (empty, not NIfTI, truncated
    header), or ``None``: checked per subject before any graph is built (:func:`read_header`, no
    data read), so a bad file fails its subject alone, with its name, instead of the whole cohort."""
    from fileformats.medimage import NiftiGz

    from deepmir_tasks.io import read_header

    gre = [p for files in subj.megre for p in files]
    for path in [p for p in subj.files.values() if p is not None] + gre:
        try:
            read_header(path, what="image")
            NiftiGz(path)  # the type the workflow's inputs are checked against
        except InputError as err:
            return str(err)
        except Exception as err:  # noqa: BLE001 - any failure to read is this subject's problem
            detail = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
            return f"{path}: not a readable gzipped NIfTI image ({detail})"
    return None


@dataclass
class _Collector:
    """Reads the subjects' results back from the cache and copies them out as they finish."""

    tasks: dict
    cache_dir: Path
    output_dir: Path
    progress: object = None
    statuses: dict = field(default_factory=dict)
    t0: float = field(default_factory=time.perf_counter)
    t0_wall: float = field(default_factory=time.time)

    def collect(self, subj, final: bool, cached: bool = False) -> bool:
        """Copy out a finished subject's results (``cached``: found before anything ran); on the
        final sweep record a failure too. Returns whether the subject's status is now known."""
        task = self.tasks[subj.key]
        result = load_result(task, self.cache_dir)
        if finished(result):
            files = derivatives.write_subject(result_files(result), self.output_dir, subj)
            seconds = 0.0 if cached else time.perf_counter() - self.t0
            status = SubjectStatus(subj, STATUS_CACHED if cached else STATUS_DONE, files=files, seconds=seconds,
                                   model=Path(task.model).name)
        elif final:
            reason = _error_reason(self.cache_dir / task._checksum, cache_dir=self.cache_dir,
                                   marker=str(_first_file(subj)), since=self.t0_wall)
            status = SubjectStatus(subj, STATUS_FAILED, reason, model=Path(task.model).name)
        else:
            return False
        self.statuses[subj.key] = status
        record_status(self.output_dir, status, self.progress)
        return True


def _run_watched(pending, collector: _Collector, **submit_args) -> None:
    """Submit the pending subjects, reporting each as it finishes; then record the failures."""
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(pending, collector, stop), daemon=True)
    watcher.start()
    try:
        _submit(pending, **submit_args)
    finally:
        stop.set()
        watcher.join()
    for subj in pending:
        if subj.key not in collector.statuses:
            collector.collect(subj, final=True)


def _watch(pending, collector: _Collector, stop, interval: float = 2.0):
    """Report subjects as they finish, while the submission is still running."""
    remaining = list(pending)
    while remaining and not stop.wait(interval):
        remaining = [s for s in remaining if not collector.collect(s, final=False)]


def _first_file(subj):
    """The subject's first input file (its T2w, else SWI, else QSM, else GRE): what names its job in
    pydra's error records."""
    present = [f for f in subj.files.values() if f is not None] + [p for files in subj.megre for p in files]
    return present[0] if present else subj.key


def _subject_inputs(subj) -> dict:
    mag, phase = subj.megre or (None, None)
    return dict(t2=subj.files["t2"], swi=subj.files["swi"], qsm=subj.files["qsm"],
                megre_mag=list(mag) if mag else None, megre_phase=list(phase) if phase else None,
                participant_id=subj.participant_id, session_id=subj.session_id or "")


def _subject_task(subj, model_path, settings: RunSettings):
    from deepmir_tasks.model.modelfile import record_path
    from workflows.subject import SubjectPipeline

    # the record is an input of its own, so that a changed record (e.g. its lesion rules) is a new
    # cache entry, never a stale result
    return SubjectPipeline(model=model_path, record=record_path(model_path), settings=settings,
                           **_subject_inputs(subj))


def _submit(subjects, *, models: dict, settings: RunSettings, worker, n_procs, cache_dir, sbatch_args):
    """Run the subject workflows (``models``: the model file of each subject, by key).

    Under ``cf`` and ``slurm`` the subject workflow is split over subjects at the outer level
    (:func:`workflows.cohort.CohortPipeline`, one per model): subjects run side by side and a
    failing one leaves the others finished and cached. The ``debug`` worker raises the first error
    and stops, so under it subjects are submitted one at a time.
    """
    from pydra.engine.submitter import Submitter

    from workflows.cohort import CohortPipeline

    if worker == "cf":
        from pipelines.workers import LocalWorker

        worker = LocalWorker(n_procs=n_procs)
    elif worker == "slurm":
        from pipelines.slurm import slurm_worker

        worker = slurm_worker(sbatch_args=sbatch_args)
    if worker == "debug":
        jobs = [_subject_task(s, models[s.key], settings) for s in subjects]
    else:
        from deepmir_tasks.model.modelfile import record_path

        groups = {}
        for s in subjects:
            groups.setdefault(models[s.key], []).append(s)
        jobs = [CohortPipeline([_subject_inputs(s) for s in group], model=path, record=record_path(path),
                               settings=settings) for path, group in groups.items()]
    with Submitter(worker=worker, cache_root=cache_dir) as sub:
        for job in jobs:
            try:
                sub(job, raise_errors=False)
            except Exception as err:  # noqa: BLE001 - one subject must never stop the others
                log.warning("subject workflow raised: %s", one_line(err))
