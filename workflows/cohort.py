"""The cohort workflow: the subject workflow split over subjects at the outer level."""

from __future__ import annotations

from deepmir_tasks.settings import RunSettings
from workflows.subject import SubjectPipeline

#: the inputs that differ between subjects; everything else is shared by the cohort
SUBJECT_FIELDS = ("t2", "swi", "qsm", "megre_mag", "megre_phase", "participant_id", "session_id")


def CohortPipeline(subjects: list[dict], model, settings: RunSettings, record=None):  # noqa: N802 - named like the workflows it builds
    """The :class:`SubjectPipeline` split over ``subjects`` (dicts of :data:`SUBJECT_FIELDS`).

    The split sits at the outer level on purpose: pydra 1.0 isolates failures between the outer
    split's jobs (one failing subject leaves the others finished and cached), which a split inside a
    workflow does not. Each subject's job is the same cache entry as the unsplit subject workflow with
    the same inputs, so results are read back (and resumed) subject by subject; cohort tables are
    built from them afterwards (``pipelines.derivatives.write_group_tables``).
    """
    columns = {f: [s[f] for s in subjects] for f in SUBJECT_FIELDS}
    return SubjectPipeline(model=model, record=record, settings=settings).split(SUBJECT_FIELDS, **columns)
