"""Pydra tasks around :func:`render_subject_report` and :func:`render_cohort_report`."""

from __future__ import annotations

from pathlib import Path

from fileformats.generic import File
from fileformats.medimage import NiftiGz
from fileformats.text import Tsv
from pydra.compose import python

from deepmir_tasks import __version__

__all__ = ["RenderSubjectReport", "RenderCohortReport"]


@python.define
class RenderSubjectReport(python.Task["RenderSubjectReport.Outputs"]):
    """Render the self-contained visual QC page of one subject (``sub-<label>[_ses-<label>].html``).

    Args:
        participant_id: subject label, with or without ``sub-``
        t2: preprocessed T2w (working grid; None: a subject without a T2w)
        swi: SWI on the same grid (None: a subject without an SWI)
        qsm: QSM in ppm on the same grid (None: a subject without a QSM)
        mask: brain mask on the same grid
        dseg: detections (1 CMB, 2 iron) on the same grid
        lesions_tsv: per-lesion table (``i, j, k`` index the working grid)
        dropped_tsv: candidates dropped as mimics (optional)
        inputs: description of the raw inputs (file names, shapes, voxel sizes)
        provenance: software version, model name and SHA-256, parameters, run time
        session_id: session label, with or without ``ses-`` (optional)
        preproc_report: the preprocessing report, whose input-check warnings the page shows (optional)
        version: package version, so that a new release renders a new page
    """

    participant_id: str
    t2: NiftiGz | None = None
    swi: NiftiGz | None = None
    qsm: NiftiGz | None = None
    mask: NiftiGz
    dseg: NiftiGz
    lesions_tsv: Tsv
    dropped_tsv: Tsv | None = None
    inputs: dict | None = None
    provenance: dict | None = None
    session_id: str | None = None
    preproc_report: File | None = None
    version: str = __version__

    class Outputs(python.Outputs):
        report: File

    @staticmethod
    def function(participant_id, t2, swi, qsm, mask, dseg, lesions_tsv, dropped_tsv, inputs,
                 provenance, session_id, preproc_report, version):
        import json

        from deepmir_tasks.report.subject import render_subject_report
        from deepmir_tasks.io import as_path as fspath
        from deepmir_tasks.report._tables import strip_prefix

        name = f"sub-{strip_prefix(participant_id, 'sub-')}"
        if session_id:
            name += f"_ses-{strip_prefix(session_id, 'ses-')}"
        return render_subject_report(
            Path.cwd() / f"{name}.html", participant_id=participant_id, t2=fspath(t2), swi=fspath(swi),
            qsm=fspath(qsm), mask=fspath(mask), dseg=fspath(dseg), lesions_tsv=fspath(lesions_tsv),
            dropped_tsv=fspath(dropped_tsv), inputs=inputs, provenance=provenance, session_id=session_id,
            input_warnings=json.loads(fspath(preproc_report).read_text()).get("warnings") if preproc_report else None)


@python.define
class RenderCohortReport(python.Task["RenderCohortReport.Outputs"]):
    """Render the cohort QC page (``report.html``): subjects' status and counts, distributions.

    The page is written in the job's folder; links in ``subjects[...]["report"]`` are relative to
    where the page is finally placed (the derivatives root), so copy it there.

    Args:
        subjects: one dict per subject (``participant_id``, ``status``, ``reason``, ``n_cmb``,
            ``n_iron``, ``iron_volume_mm3``, ``report``)
        group_lesions_tsv: group lesion table for the distribution plots (optional)
        version: package version, so that a new release renders a new page
    """

    subjects: list[dict]
    group_lesions_tsv: Tsv | None = None
    version: str = __version__

    class Outputs(python.Outputs):
        report: File

    @staticmethod
    def function(subjects, group_lesions_tsv, version):
        from deepmir_tasks.report.cohort import render_cohort_report

        group = None if group_lesions_tsv is None else Path(
            str(group_lesions_tsv.fspath if hasattr(group_lesions_tsv, "fspath") else group_lesions_tsv))
        return render_cohort_report(Path.cwd() / "report.html", list(subjects), group)
