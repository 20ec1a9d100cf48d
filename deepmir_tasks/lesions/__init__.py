"""Lesion extraction, per-lesion tables, MARS regions and lesion-wise evaluation.

Plain functions only (no Pydra here; the tasks are in :mod:`deepmir_tasks.lesions.tasks`).
"""

from deepmir_tasks.lesions.extract import (
    CLASSES,
    COLUMN_DESCRIPTIONS,
    LESION_COLUMNS,
    extract_lesions,
    extract_lesions_files,
    summarise_lesions,
)
from deepmir_tasks.lesions.tables import combine_tables, write_group_tables

__all__ = [
    "CLASSES",
    "COLUMN_DESCRIPTIONS",
    "LESION_COLUMNS",
    "combine_tables",
    "extract_lesions",
    "extract_lesions_files",
    "summarise_lesions",
    "write_group_tables",
]
