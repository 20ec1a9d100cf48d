"""Visual quality-control reports: one self-contained HTML page per subject and one per cohort.

Plain functions (:func:`render_subject_report`, :func:`render_cohort_report`); the Pydra tasks
around them are in :mod:`deepmir_tasks.report.tasks`.
"""

from deepmir_tasks.report.cohort import render_cohort_report
from deepmir_tasks.report.subject import render_subject_report

__all__ = ["render_subject_report", "render_cohort_report"]
