"""Finding subjects and their T2w / SWI / QSM files in a BIDS dataset (:mod:`deepmir_tasks.bids_files`).

The finder lives beside the other plain functions so that every layer (training included) can use
it; this module keeps the names the command line and its users import from here.
"""

from __future__ import annotations

from deepmir_tasks.bids_files import SubjectInputs, dataset_name, find_subjects
from deepmir_tasks.bids_names import MODALITY_SUFFIX, check_label

__all__ = ["SubjectInputs", "check_label", "find_subjects", "dataset_name", "MODALITY_SUFFIX"]
