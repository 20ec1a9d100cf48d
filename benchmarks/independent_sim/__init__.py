"""An independent head + lesion MRI simulator for out-of-distribution testing of DEEPMIR.

Written separately from ``deepmir_tasks.simulate`` and importing nothing from ``deepmir_tasks``
(only numpy, scipy, nibabel, nilearn, pandas): its own anatomy (MNI152 2009 tissue maps with deep
nuclei drawn here), its own physics code and its own parameter choices. ``python -m
benchmarks.independent_sim OUT --subjects N --seed S --condition NAME`` writes a BIDS dataset with
the truth where ``deepmir evaluate`` reads it.

Modules: conditions (stress conditions and their ranges), nuclei (deep grey nuclei and their iron
across age), anatomy (tissue maps, skull, sinuses), veins, lesions, shapes (geometry), physics
(fields, relaxation, SWI, QSM), acquire (scanner geometry, sampling, noise), truth, subject, bids.
"""

from .bids import SEED_BASE, write_cohort, write_subject
from .conditions import CONDITIONS, get_condition
from .subject import simulate_subject

__all__ = ["CONDITIONS", "SEED_BASE", "get_condition", "simulate_subject", "write_cohort", "write_subject"]
