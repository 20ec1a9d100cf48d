"""Preprocessing: one subject's T2w, SWI and QSM into one working grid.

Steps (one module each, every one usable alone):

- :mod:`.checks` — input checks (``check_inputs``, ``guess_qsm_units``)
- :mod:`.bias` — N4 bias correction with a quick Otsu head mask (``n4_correct``)
- :mod:`.template` — affine T2w → MNI152 2009a registration (``register_to_template``)
- :mod:`.brain` — brain extraction: MNI prior + T2w intensity refinement (``extract_brain``)
- :mod:`.register` — rigid Mattes-MI registration of SWI/QSM onto the T2w (``register_to_t2``)
- :mod:`.resample` — working grid, resampling, label resampling (``make_grid``, ``resample_to_grid``,
  ``resample_labels``)
- :mod:`.normalise` — robust z-scores (T2w, SWI) and clipped ppm (QSM) (``normalise_intensity``)
- :mod:`.pipeline` — the preprocessing report (``summarise``) and output names

Pydra tasks around them are in :mod:`.tasks`; the one graph that runs them in order is
``workflows.preprocess.PreprocessSubject``, and ``workflows.preprocess.preprocess_subject`` runs
that graph for one subject in this process.
"""

from deepmir_tasks.preprocess.resample import resample_labels

__all__ = ["resample_labels"]
