"""Physics-based simulator of T2w, SWI and QSM heads with microbleeds, iron and mimics.

``simulate_subject(seed, size="full", *, lesion_counts=None, lesion_ranges=None, profile="default",
factors=None)`` returns a
:class:`SimulatedSubject` with its ground truth; ``write_bids_cohort(out_dir, n_subjects, seed,
size="full", start=1, **simulate_kwargs)`` writes a BIDS dataset of them (truth under
``derivatives/annotations``); :class:`~deepmir_tasks.simulate.tasks.SimulateSubject` is the
Pydra task. Modules: ``anatomy`` (MNI maps, nuclei, regions), ``head`` (per-subject anatomy),
``lesions`` (placement), ``shapes`` (partial-volume rendering), ``physics`` (dipole field,
SWI, QSM, noise), ``acquire`` (the two sessions), ``subject`` (the whole), ``bids`` (writer),
``variability`` (the ``randomised`` profile: every factor's range with its source; its draws are
recorded in ``params["factors"]``, with ``age_years``, ``lesion_sites`` and
``nucleus_centroids_t2_mm``).

``SimulatedSubject.params`` records every random draw, among them: ``b0_tesla``,
``swi_echo_time_s``, ``t2_echo_time_s``, ``t2_voxel_mm``, ``swi_voxel_mm``,
``b0_direction_voxel`` (B0 in the SWI voxel frame; B0 is world z), ``head_scale``,
``head_rotation``, ``head_translation_mm`` (MNI -> T2w world pose), ``warp_amplitude_mm``,
``motion_rotation_deg``/``motion_translation_mm`` (``swi_to_t2``), ``tissue_chi_ppm``,
``nucleus_chi_ppm``, ``t2_snr_wm``, ``swi_snr_wm``, ``qsm_method``, ``qsm_regularisation``,
``lesion_counts`` (placed) and ``lesion_counts_requested``, ``seconds`` and ``timings_s``.
"""

from .bids import write_bids_cohort
from .lesions import DEFAULT_COUNTS, DEFAULT_RANGES
from .subject import PROFILES, SIZES, SimulatedSubject, simulate_subject

__all__ = ["SimulatedSubject", "simulate_subject", "write_bids_cohort", "SIZES", "PROFILES", "DEFAULT_COUNTS",
           "DEFAULT_RANGES"]
