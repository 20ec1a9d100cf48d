"""Physics-based simulator of T2w, SWI and QSM heads with microbleeds, iron and mimics.

``simulate_subject(seed, size)`` returns one subject with its ground truth;
``write_bids_cohort(out_dir, n_subjects, seed, size)`` writes a BIDS dataset of them.
"""

from .bids import write_bids_cohort
from .subject import SimulatedSubject, simulate_subject

__all__ = ["SimulatedSubject", "simulate_subject", "write_bids_cohort"]
