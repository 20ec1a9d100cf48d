"""The lesion tables' schema: columns, their descriptions (the BIDS sidecars) and the summary.

``<prefix>_desc-deepmir_lesions.tsv`` has :data:`LESION_COLUMNS` (``session_id`` only when the
dataset has sessions); the dropped table adds ``reason``; :func:`summarise_lesions` makes the
one-row summary whose columns are :data:`SUMMARY_COLUMNS` (see :data:`SUMMARY_COLUMNS_DOC`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from deepmir_tasks.bids_names import bids_prefix
from deepmir_tasks.labels import CLASS_DESCRIPTIONS, LESION_CLASSES

__all__ = ["LESION_COLUMNS", "COLUMN_DESCRIPTIONS", "SUMMARY_COLUMNS", "SUMMARY_COLUMNS_DOC", "table_columns",
           "summarise_lesions"]

LESION_COLUMNS = (
    "participant_id", "session_id", "lesion_id", "label", "n_voxels", "volume_mm3", "diameter_mm",
    "x_mm", "y_mm", "z_mm", "i", "j", "k", "prob_max", "prob_mean", "qsm_mean_ppm", "qsm_max_ppm",
    "swi_contrast", "qsm_extent_mm", "qsm_elongation", "region",
)

#: BIDS-style sidecar for the lesion tables: column -> {"Description", "Units"?, "Levels"?}
COLUMN_DESCRIPTIONS = {
    "participant_id": {"Description": "BIDS participant label, with the 'sub-' prefix"},
    "flags": {"Description": "Only when the subject ran without a modality or with an override: 'no_qsm' "
                             "(T2w + SWI only: a calcification cannot be told from a CMB by the sign of its "
                             "susceptibility, and the QSM-based vein rule could not apply), "
                             "'outside_supported_resolution' (--allow-resolution), 'registration_suspect' (the SWI fitted the "
                             "T2w better mirrored or rotated: check the registration), 'qsm_units_unverified' "
                             "(a QSM that did not look like ppm, trusted with --qsm-units ppm); ';'-separated"},
    "session_id": {"Description": "BIDS session label, with the 'ses-' prefix (only when sessions exist)"},
    "lesion_id": {"Description": "Lesion number within this subject (and session), from 1, CMBs first"},
    "label": {"Description": "Class of the lesion",
              "Levels": {c: CLASS_DESCRIPTIONS[c] for c in LESION_CLASSES}},
    "n_voxels": {"Description": "Number of voxels in the 26-connected component", "Units": "voxels"},
    "volume_mm3": {"Description": "Lesion volume: number of voxels times the voxel volume", "Units": "mm^3"},
    "diameter_mm": {"Description": "Equivalent-sphere diameter, (6 V / pi)^(1/3)", "Units": "mm"},
    "x_mm": {"Description": "Centroid, world (scanner) x coordinate of the T2w grid, RAS+", "Units": "mm"},
    "y_mm": {"Description": "Centroid, world (scanner) y coordinate of the T2w grid, RAS+", "Units": "mm"},
    "z_mm": {"Description": "Centroid, world (scanner) z coordinate of the T2w grid, RAS+", "Units": "mm"},
    "i": {"Description": "Centroid, first voxel index (0-based, may be fractional)", "Units": "voxels"},
    "j": {"Description": "Centroid, second voxel index (0-based, may be fractional)", "Units": "voxels"},
    "k": {"Description": "Centroid, third voxel index (0-based, may be fractional)", "Units": "voxels"},
    "prob_max": {"Description": "Largest class probability inside the lesion (the detection score)",
                 "Units": "probability (0-1)"},
    "prob_mean": {"Description": "Mean class probability inside the lesion", "Units": "probability (0-1)"},
    "qsm_mean_ppm": {"Description": "Mean magnetic susceptibility inside the lesion (QSM)", "Units": "ppm"},
    "qsm_max_ppm": {"Description": "Largest magnetic susceptibility inside the lesion (QSM)", "Units": "ppm"},
    "swi_contrast": {
        "Description": "Local SWI contrast-to-noise ratio: (mean SWI of a shell around the lesion - "
                       "mean SWI in the lesion) / standard deviation of SWI in the shell. The shell is "
                       "the voxels within 2 mm of the lesion, inside the brain mask and outside any "
                       "candidate. Positive = darker than its surroundings (blooming). n/a when the "
                       "shell has fewer than 3 voxels or no variation. A ratio to the shell standard "
                       "deviation is used rather than to its mean because DEEPMIR's SWI is a z-score "
                       "whose local mean may be near 0.",
        "Units": "arbitrary (ratio)"},
    "qsm_extent_mm": {
        "Description": "Around the lesion's QSM peak, the 6-connected region above the local background "
                       "(median QSM within 10 mm) plus half the peak's contrast over it: its largest "
                       "distance from the peak (searched up to 10 mm). Small for a compact microbleed, "
                       "long for a vein; n/a without QSM or when the peak stands less than 0.02 ppm "
                       "above the background",
        "Units": "mm"},
    "qsm_elongation": {
        "Description": "Of the same region: square root of the ratio of the two largest variances along "
                       "its principal axes (1 = round, large = tubular); n/a as above",
        "Units": "ratio"},
    "region": {
        "Description": "MARS location (Gregoire et al. 2009) of the centroid after mapping it to MNI152 "
                       "space with the T2w->MNI affine; n/a when no affine was given",
        "Levels": {"lobar-frontal": "frontal cortex or subcortical white matter",
                   "lobar-parietal": "parietal cortex or subcortical white matter",
                   "lobar-temporal": "temporal cortex or subcortical white matter",
                   "lobar-occipital": "occipital cortex or subcortical white matter",
                   "lobar-insula": "insular cortex",
                   "lobar": "lobar, lobe not determined (near a lobe boundary or outside the template brain)",
                   "deep": "basal ganglia, thalamus, internal/external capsule, corpus callosum, "
                           "deep and periventricular white matter",
                   "infratentorial": "brainstem and cerebellum"}},
    "reason": {
        "Description": "Why the candidate was dropped",
        "Levels": {"outside_mask": "fewer than half of its voxels inside the brain mask",
                   "too_small": "fewer voxels than the minimum size",
                   "low_probability": "largest probability below the class's minimum",
                   "negative_qsm": "diamagnetic (mean QSM below the minimum, e.g. calcification)",
                   "weak_qsm": "no paramagnetic QSM evidence (QSM peak below the minimum, e.g. where the QSM is void)",
                   "too_large_for_cmb": "CMB candidate larger than the clinical 10 mm limit",
                   "vein_like": "CMB candidate on an elongated or extended QSM-bright structure, or iron "
                                "candidate on an elongated one (vein)",
                   "beside_cmb": "iron candidate whose centroid lies within the rule's distance of a kept CMB: "
                                 "one lesion called twice, kept as the CMB"}},
}


def table_columns(with_session: bool, dropped: bool = False) -> list[str]:
    cols = [c for c in LESION_COLUMNS if with_session or c != "session_id"]
    return cols + (["reason"] if dropped else [])


SUMMARY_COLUMNS_DOC = {
    "n_<label>": "number of kept lesions of the class",
    "n_<label>_<region>": "number of kept lesions of the class per MARS region ('-' -> '_'; "
                          "'unknown' when no T2w->MNI affine was given)",
    "total_<label>_volume_mm3": "summed volume of the kept lesions of the class (mm^3)",
    "mean_<label>_qsm_ppm": "mean of the lesions' mean susceptibility (ppm); n/a without lesions",
    "mean_qsm_ppm": "mean of the mean susceptibility over every kept lesion (ppm)",
    "n_dropped": "number of dropped candidates",
    "n_dropped_<reason>": "dropped candidates per reason",
    "flags": "only when the subject ran without a modality or with an override (see the lesion table's "
             "flags column)",
}


def _region_key(region: str) -> str:
    return "unknown" if region in ("n/a", "", None) else str(region).replace("-", "_")


def _summary_columns(with_session: bool) -> list[str]:
    from deepmir_tasks.lesions.regions import REGIONS

    cols = ["participant_id"] + (["session_id"] if with_session else [])
    for lab in LESION_CLASSES:
        cols.append(f"n_{lab}")
        cols += [f"n_{lab}_{_region_key(r)}" for r in REGIONS + ("n/a",)]
    cols += ["total_cmb_volume_mm3", "total_iron_volume_mm3", "mean_cmb_qsm_ppm", "mean_iron_qsm_ppm",
             "mean_qsm_ppm", "n_dropped"]
    cols += [f"n_dropped_{r}" for r in COLUMN_DESCRIPTIONS["reason"]["Levels"]]
    return cols


SUMMARY_COLUMNS = tuple(_summary_columns(False))


def summarise_lesions(kept: pd.DataFrame, dropped: pd.DataFrame, participant_id,
                      session_id=None) -> pd.DataFrame:
    """One-row summary of a subject's tables: counts per class and region, volumes, mean QSM."""
    sub, ses, _ = bids_prefix(participant_id, session_id)
    row: dict = {"participant_id": sub}
    if ses:
        row["session_id"] = ses
    for col in _summary_columns(ses is not None):
        if col.startswith("n_"):
            row.setdefault(col, 0)
    for lab in LESION_CLASSES:
        sel = kept[kept["label"] == lab]
        row[f"n_{lab}"] = int(len(sel))
        for reg, count in sel["region"].value_counts().items():
            row[f"n_{lab}_{_region_key(reg)}"] = int(count)
        row[f"total_{lab}_volume_mm3"] = float(sel["volume_mm3"].sum())
        q = pd.to_numeric(sel["qsm_mean_ppm"], errors="coerce").dropna()
        row[f"mean_{lab}_qsm_ppm"] = float(q.mean()) if len(q) else np.nan
    q = pd.to_numeric(kept["qsm_mean_ppm"], errors="coerce").dropna()
    row["mean_qsm_ppm"] = float(q.mean()) if len(q) else np.nan
    row["n_dropped"] = int(len(dropped))
    for reason, count in dropped["reason"].value_counts().items():
        row[f"n_dropped_{reason}"] = int(count)
    return pd.DataFrame([row], columns=_summary_columns(ses is not None))
