"""Per-lesion tables from DEEPMIR's probability maps: what a researcher takes away.

For each class (``cmb``, ``iron``) the probability map is thresholded, split into 26-connected
components (``cc3d``), and each component is measured: size, equivalent-sphere diameter, centroid
in voxel and world coordinates, probability, susceptibility (QSM), local SWI contrast and its MARS
region. Components that are not credible detections are moved to a second table with a ``reason``:

``outside_mask``
    fewer than half of its voxels lie inside the brain mask;
``too_small``
    fewer than ``min_voxels`` voxels;
``low_probability``
    its largest class probability is below the class's ``min_prob_max`` (the bundled model's record
    holds values calibrated on held-out subjects);
``negative_qsm``
    mean susceptibility below ``qsm_min_ppm`` (default 0 ppm): a diamagnetic mimic such as a
    calcification, never reported as CMB or iron;
``too_large_for_cmb``
    a CMB candidate whose largest extent exceeds ``max_cmb_diameter_mm`` (10 mm, the clinical
    definition of a microbleed): flagged and dropped rather than kept as a CMB;
``vein_like``
    a CMB candidate sitting on a tube of high susceptibility: around the candidate's QSM peak,
    the 6-connected region above half the peak's contrast over the local background reaches
    further than ``max_cmb_qsm_extent_mm`` (6 mm) from it, or is elongated (ratio of its two
    longest principal axes above ``max_cmb_qsm_elongation``, 3). A microbleed is a compact blob on QSM; a vein in
    cross-section looks like one on a slice, but goes on (see :func:`qsm_peak_shape`).

Rules are checked in that order and the first that applies is the reason.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from deepmir_tasks.bids_names import bids_prefix, job_file_name
from deepmir_tasks.io import InputError
from deepmir_tasks.labels import CLASS_DESCRIPTIONS, CLASSES, DSEG_LABELS, LESION_CLASSES

__all__ = [
    "CLASSES",
    "qsm_peak_shape",
    "LESION_COLUMNS",
    "COLUMN_DESCRIPTIONS",
    "SUMMARY_COLUMNS",
    "extract_lesions",
    "extract_lesions_files",
    "summarise_lesions",
    "bids_prefix",
]

LESION_COLUMNS = (
    "participant_id", "session_id", "lesion_id", "label", "n_voxels", "volume_mm3", "diameter_mm",
    "x_mm", "y_mm", "z_mm", "i", "j", "k", "prob_max", "prob_mean", "qsm_mean_ppm", "qsm_max_ppm",
    "swi_contrast", "qsm_extent_mm", "qsm_elongation", "region",
)

#: BIDS-style sidecar for the lesion tables: column -> {"Description", "Units"?, "Levels"?}
COLUMN_DESCRIPTIONS = {
    "participant_id": {"Description": "BIDS participant label, with the 'sub-' prefix"},
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
                   "too_large_for_cmb": "CMB candidate larger than the clinical 10 mm limit",
                   "vein_like": "CMB candidate on an elongated or extended QSM-bright structure (vein)"}},
}

_SHELL_MM = 2.0


def _columns(with_session: bool, dropped: bool = False) -> list[str]:
    cols = [c for c in LESION_COLUMNS if with_session or c != "session_id"]
    return cols + (["reason"] if dropped else [])


def _principal_extent(ijk: np.ndarray, affine: np.ndarray) -> float:
    """Largest extent (mm) of a voxel set along its principal axes, plus one voxel."""
    voxel = float(np.cbrt(abs(np.linalg.det(affine[:3, :3]))))
    if len(ijk) < 2:
        return voxel
    xyz = ijk @ affine[:3, :3].T
    xyz = xyz - xyz.mean(axis=0)
    _, _, vt = np.linalg.svd(xyz, full_matrices=False)
    proj = xyz @ vt.T
    return float((proj.max(axis=0) - proj.min(axis=0)).max() + voxel)


def qsm_peak_shape(qsm: np.ndarray, peak, zooms, *, fraction: float = 0.5, search_mm: float = 10.0,
                   min_contrast_ppm: float = 0.02) -> tuple[float, float]:
    """Extent (mm) and elongation of the QSM-bright region around voxel ``peak``.

    Within ``search_mm`` of ``peak`` along each axis, the local background is the median QSM; the
    region is the 6-connected set of voxels, joined to ``peak``, at or above the background plus
    ``fraction`` of the peak's contrast over it (so that a microbleed inside an iron-rich nucleus is
    measured against the nucleus). Extent is the region's largest distance from ``peak`` in mm;
    elongation is ``sqrt(l1 / l2)`` for the two largest eigenvalues of the covariance of its voxel
    positions (mm), 1 for fewer than four voxels. ``(nan, nan)`` when the peak stands less than
    ``min_contrast_ppm`` above the background (nothing to measure).
    """
    import cc3d

    zooms = np.asarray(zooms, float)
    peak = np.asarray(peak, int)
    r = np.ceil(search_mm / zooms).astype(int)
    lo = np.maximum(peak - r, 0)
    hi = np.minimum(peak + r + 1, qsm.shape)
    box = np.asarray(qsm[tuple(slice(a, b) for a, b in zip(lo, hi))], np.float32)
    c = tuple(peak - lo)
    background = float(np.median(box))
    contrast = float(box[c]) - background
    if not contrast >= min_contrast_ppm:
        return float("nan"), float("nan")
    cc = cc3d.connected_components((box >= background + fraction * contrast).astype(np.uint8), connectivity=6)
    reg = (np.argwhere(cc == cc[c]) - np.asarray(c)) * zooms
    extent = float(np.sqrt((reg ** 2).sum(axis=1)).max())
    if len(reg) < 4:
        return extent, 1.0
    ev = np.sort(np.linalg.eigvalsh(np.cov(reg.T)))[::-1]
    return extent, float(np.sqrt(ev[0] / max(ev[1], 1e-3 * float(zooms.min()) ** 2)))


def _ball(radius_vox: np.ndarray) -> np.ndarray:
    r = np.maximum(np.ceil(radius_vox).astype(int), 1)
    grid = np.ogrid[tuple(slice(-n, n + 1) for n in r)]
    dist = sum((g / max(rv, 1e-6)) ** 2 for g, rv in zip(grid, radius_vox))
    return dist <= 1.0 + 1e-9


def extract_lesions(prob_cmb, prob_iron, dseg, affine, qsm, swi, mask=None, *, participant_id,
                    session_id=None, t2_to_mni=None, threshold: float = 0.5, min_voxels: int = 3,
                    max_cmb_diameter_mm: float = 10.0, qsm_min_ppm: float = 0.0,
                    min_prob_max: dict | None = None, max_cmb_qsm_extent_mm: float | None = 6.0,
                    max_cmb_qsm_elongation: float | None = 3.0, return_labels: bool = False):
    """Find and measure the lesions of each class; return (kept, dropped) tables.

    Args:
        prob_cmb, prob_iron: probability maps (X, Y, Z) of the two classes, or ``None`` to use
            ``dseg`` for that class (probability 1 inside the label).
        dseg: label map (0 background, 1 CMB, 2 iron) or ``None``; only used for a class whose
            probability map is missing.
        affine: 4x4 voxel -> world (mm) affine shared by every map (oblique allowed).
        qsm: QSM in ppm or ``None`` (QSM columns n/a, no ``negative_qsm`` rule).
        swi: SWI (any intensity scale) or ``None`` (``swi_contrast`` n/a).
        mask: brain mask or ``None`` (whole image).
        participant_id, session_id: BIDS labels, with or without prefix.
        t2_to_mni: 4x4 world -> MNI affine (array or text file) for ``region``; ``None`` -> ``n/a``.
        threshold: a voxel is a candidate when its class probability is at least this; a voxel
            above threshold for both classes goes to the more probable one.
        min_voxels, max_cmb_diameter_mm, qsm_min_ppm: the dropping rules (module docstring).
        min_prob_max: ``{"cmb": p, "iron": q}``: a lesion whose largest probability is below its
            class's value is dropped (``low_probability``); ``None`` keeps every candidate.
        max_cmb_qsm_extent_mm, max_cmb_qsm_elongation: the ``vein_like`` rule; ``None`` turns
            that half of it off.

        return_labels: also return the label map of the kept lesions (uint8: 0, 1 CMB, 2 iron).

    Returns:
        ``(kept, dropped)``, or ``(kept, dropped, labels)`` with ``return_labels``: ``kept`` has
        :data:`LESION_COLUMNS` (``session_id`` only if given), one row per lesion, CMBs first then
        iron, each in order of position; ``dropped`` has the same columns plus ``reason``. Lesion
        ids number the kept rows from 1 and the dropped rows from 1.
    """
    from deepmir_tasks.lesions.regions import classify_world, load_affine

    import cc3d
    from scipy import ndimage

    sub, ses, _ = bids_prefix(participant_id, session_id)
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got {affine.shape}")
    world_to_mni = load_affine(t2_to_mni)
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")

    arrays = {"prob_cmb": prob_cmb, "prob_iron": prob_iron, "dseg": dseg, "qsm": qsm, "swi": swi,
              "mask": mask}
    shapes = {k: np.shape(v) for k, v in arrays.items() if v is not None}
    if not shapes or (prob_cmb is None and prob_iron is None and dseg is None):
        raise ValueError("give at least one probability map or a dseg")
    shape = next(iter(shapes.values()))
    bad = {k: s for k, s in shapes.items() if s != shape}
    if bad or len(shape) != 3:
        raise ValueError(f"all maps must share one 3-D grid; shapes: {shapes}")

    probs = {}
    for name, p in (("cmb", prob_cmb), ("iron", prob_iron)):
        if p is None:
            p = np.zeros(shape, np.float32) if dseg is None else (np.asarray(dseg) == DSEG_LABELS[name]).astype(np.float32)
        probs[name] = np.asarray(p, dtype=np.float32)
    cand = {name: p >= threshold for name, p in probs.items()}
    both = cand["cmb"] & cand["iron"]
    if both.any():
        cmb_wins = probs["cmb"] >= probs["iron"]
        cand["cmb"] &= ~(both & ~cmb_wins)
        cand["iron"] &= ~(both & cmb_wins)
    any_cand = cand["cmb"] | cand["iron"]
    mask_arr = np.ones(shape, dtype=bool) if mask is None else np.asarray(mask) > 0
    qsm_arr = None if qsm is None else np.asarray(qsm, dtype=np.float32)
    swi_arr = None if swi is None else np.asarray(swi, dtype=np.float32)

    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    voxel_mm3 = float(abs(np.linalg.det(affine[:3, :3])))
    pad = np.ceil(_SHELL_MM / zooms).astype(int)
    ball = _ball(_SHELL_MM / zooms)

    rows, voxels = [], []
    for name in LESION_CLASSES:
        if not cand[name].any():
            continue
        labels = cc3d.connected_components(cand[name].astype(np.uint8), connectivity=26)
        stats = cc3d.statistics(labels)
        for lab in range(1, len(stats["voxel_counts"])):
            n = int(stats["voxel_counts"][lab])
            if n == 0:
                continue
            bbox = stats["bounding_boxes"][lab]
            lo = [max(s.start - p, 0) for s, p in zip(bbox, pad)]
            hi = [min(s.stop + int(p), dim) for s, p, dim in zip(bbox, pad, shape)]
            crop = tuple(slice(a, b) for a, b in zip(lo, hi))
            comp = labels[crop] == lab
            ijk_local = np.argwhere(comp)
            ijk = ijk_local + np.asarray(lo)
            centroid = ijk.mean(axis=0)
            xyz = affine[:3, :3] @ centroid + affine[:3, 3]
            p_vals = probs[name][crop][comp]
            row = {
                "label": name, "n_voxels": n, "volume_mm3": n * voxel_mm3,
                "diameter_mm": float(np.cbrt(6.0 * n * voxel_mm3 / np.pi)),
                "x_mm": xyz[0], "y_mm": xyz[1], "z_mm": xyz[2],
                "i": centroid[0], "j": centroid[1], "k": centroid[2],
                "prob_max": float(p_vals.max()), "prob_mean": float(p_vals.mean()),
                "qsm_mean_ppm": np.nan, "qsm_max_ppm": np.nan, "swi_contrast": np.nan,
                "qsm_extent_mm": np.nan, "qsm_elongation": np.nan,
            }
            if qsm_arr is not None:
                q = qsm_arr[crop][comp]
                row["qsm_mean_ppm"], row["qsm_max_ppm"] = float(q.mean()), float(q.max())
                # the QSM peak (of equal values, the one nearest the centroid)
                near = np.linalg.norm(ijk - centroid, axis=1)
                top = np.flatnonzero(q >= q.max())
                row["qsm_extent_mm"], row["qsm_elongation"] = qsm_peak_shape(
                    qsm_arr, ijk[top[np.argmin(near[top])]], zooms)
            if swi_arr is not None:
                shell = ndimage.binary_dilation(comp, structure=ball) & ~any_cand[crop] & mask_arr[crop]
                if shell.sum() >= 3:
                    s_shell = swi_arr[crop][shell]
                    sd = float(s_shell.std())
                    if sd > 0:
                        row["swi_contrast"] = (float(s_shell.mean()) - float(swi_arr[crop][comp].mean())) / sd
            inside = float(mask_arr[crop][comp].mean())
            reason = None
            if inside < 0.5:
                reason = "outside_mask"
            elif n < min_voxels:
                reason = "too_small"
            elif min_prob_max and row["prob_max"] < float(min_prob_max.get(name, 0.0)):
                reason = "low_probability"
            elif qsm_arr is not None and row["qsm_mean_ppm"] < qsm_min_ppm:
                reason = "negative_qsm"
            elif name == "cmb" and _principal_extent(ijk.astype(float), affine) > max_cmb_diameter_mm:
                reason = "too_large_for_cmb"
            elif name == "cmb" and _vein_like(row, max_cmb_qsm_extent_mm, max_cmb_qsm_elongation):
                reason = "vein_like"
            row["reason"] = reason
            row["_index"] = len(rows)
            rows.append(row)
            voxels.append(ijk)

    with_session = ses is not None
    table = pd.DataFrame(rows, columns=[c for c in LESION_COLUMNS if c not in
                                        ("participant_id", "session_id", "lesion_id", "region")]
                         + ["reason", "_index"])
    if len(table):
        table["region"] = classify_world(table[["x_mm", "y_mm", "z_mm"]].to_numpy(float), world_to_mni)
    else:
        table["region"] = pd.Series(dtype=object)
    table["participant_id"] = sub
    if with_session:
        table["session_id"] = ses
    table["label"] = pd.Categorical(table["label"], categories=list(LESION_CLASSES), ordered=True)
    table = table.sort_values(["label", "k", "j", "i"], kind="stable").reset_index(drop=True)
    table["label"] = table["label"].astype(object)
    table["n_voxels"] = table["n_voxels"].astype(int)

    kept = table[table["reason"].isna()].reset_index(drop=True)
    dropped = table[table["reason"].notna()].reset_index(drop=True)
    labels = np.zeros(shape, np.uint8)
    for index, name in zip(kept["_index"], kept["label"]):
        v = voxels[int(index)]
        labels[v[:, 0], v[:, 1], v[:, 2]] = DSEG_LABELS[name]
    kept = kept.assign(lesion_id=np.arange(1, len(kept) + 1, dtype=int))[_columns(with_session)]
    dropped = dropped.assign(lesion_id=np.arange(1, len(dropped) + 1, dtype=int))[
        _columns(with_session, dropped=True)]
    return (kept, dropped, labels) if return_labels else (kept, dropped)


def _vein_like(row: dict, max_extent, max_elongation) -> bool:
    ext, elong = row["qsm_extent_mm"], row["qsm_elongation"]
    return bool((max_extent is not None and ext == ext and ext > max_extent)
                or (max_elongation is not None and elong == elong and elong > max_elongation))


SUMMARY_COLUMNS_DOC = {
    "n_<label>": "number of kept lesions of the class",
    "n_<label>_<region>": "number of kept lesions of the class per MARS region ('-' -> '_'; "
                          "'unknown' when no T2w->MNI affine was given)",
    "total_<label>_volume_mm3": "summed volume of the kept lesions of the class (mm^3)",
    "mean_<label>_qsm_ppm": "mean of the lesions' mean susceptibility (ppm); n/a without lesions",
    "mean_qsm_ppm": "mean of the mean susceptibility over every kept lesion (ppm)",
    "n_dropped": "number of dropped candidates",
    "n_dropped_<reason>": "dropped candidates per reason",
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


def _load(path, what, *, allow_empty=True):
    from deepmir_tasks.io import load_image

    if path is None:
        return None
    return load_image(path, what=what, allow_empty=allow_empty)


def extract_lesions_files(probseg_cmb, probseg_iron, dseg, qsm, swi, mask, out_dir, participant_id,
                          session_id=None, t2_to_mni=None, threshold: float = 0.5, *,
                          min_voxels: int = 3, max_cmb_diameter_mm: float = 10.0,
                          qsm_min_ppm: float = 0.0, min_prob_max: dict | None = None,
                          max_cmb_qsm_extent_mm: float | None = 6.0,
                          max_cmb_qsm_elongation: float | None = 3.0) -> dict:
    """File-level :func:`extract_lesions`: read NIfTI maps, write the BIDS-derivative tables.

    Every image must be on one grid (the T2w working grid); a file on another grid raises
    :class:`~deepmir_tasks.io.InputError` naming it. Any of the inputs may be ``None`` except that
    one of ``probseg_cmb``/``probseg_iron``/``dseg`` must be given. Writes into ``out_dir``:

    - ``<prefix>_space-T2w_desc-deepmir_lesions.tsv`` (+ ``.json`` sidecar describing each column),
    - ``<prefix>_space-T2w_desc-dropped_lesions.tsv``,
    - ``<prefix>_space-T2w_desc-deepmir_summary.tsv`` (+ ``.json``),
    - ``<prefix>_space-T2w_desc-deepmir_dseg.nii.gz``: the kept lesions (0, 1 CMB, 2 iron),

    where ``<prefix>`` is ``sub-XX[_ses-YY]``. Returns a dict with keys ``lesions``,
    ``lesions_json``, ``dropped``, ``summary``, ``dseg`` (paths) and ``summary_json`` (the summary's column
    descriptions plus the parameters and software version that produced the tables).
    """
    from deepmir_tasks import __version__
    from deepmir_tasks.io import save_nifti, write_json, write_tsv
    from deepmir_tasks.lesions.regions import load_affine

    if probseg_cmb is None and probseg_iron is None and dseg is None:
        raise ValueError("give at least one of probseg_cmb, probseg_iron or dseg")
    sub, ses, prefix = bids_prefix(participant_id, session_id)
    files = {"probseg_cmb": (probseg_cmb, "CMB probability map"),
             "probseg_iron": (probseg_iron, "iron probability map"),
             "dseg": (dseg, "dseg"), "qsm": (qsm, "QSM"), "swi": (swi, "SWI"),
             "mask": (mask, "brain mask")}
    imgs = {k: _load(p, what) for k, (p, what) in files.items()}
    ref_key = next(k for k in ("probseg_cmb", "probseg_iron", "dseg") if imgs[k] is not None)
    ref = imgs[ref_key]
    for key, img in imgs.items():
        if img is None:
            continue
        if img.shape[:3] != ref.shape[:3] or not np.allclose(img.affine, ref.affine, atol=1e-3):
            raise InputError(files[key][0], f"{files[key][1]} is not on the grid of "
                                            f"{Path(files[ref_key][0]).name} (shape {img.shape[:3]} "
                                            f"vs {ref.shape[:3]} or a different affine)")
    data = {k: (None if v is None else np.asarray(v.dataobj)) for k, v in imgs.items()}
    for key in ("probseg_cmb", "probseg_iron"):
        if data[key] is not None and (data[key].min() < -1e-4 or data[key].max() > 1 + 1e-4):
            raise InputError(files[key][0], f"{files[key][1]} has values outside [0, 1] "
                                            f"({data[key].min():.3g} to {data[key].max():.3g})")
    mni = load_affine(t2_to_mni)
    kept, dropped, labels = extract_lesions(
        data["probseg_cmb"], data["probseg_iron"], data["dseg"], ref.affine, data["qsm"], data["swi"],
        data["mask"], participant_id=sub, session_id=ses, t2_to_mni=mni, threshold=threshold,
        min_voxels=min_voxels, max_cmb_diameter_mm=max_cmb_diameter_mm, qsm_min_ppm=qsm_min_ppm,
        min_prob_max=min_prob_max, max_cmb_qsm_extent_mm=max_cmb_qsm_extent_mm,
        max_cmb_qsm_elongation=max_cmb_qsm_elongation, return_labels=True)
    summary = summarise_lesions(kept, dropped, sub, ses)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / job_file_name(name, prefix)
             for name in ("lesions", "lesions_json", "dropped", "summary", "summary_json", "dseg")}
    sidecar = {c: COLUMN_DESCRIPTIONS[c] for c in kept.columns}
    summary_sidecar = {c: {"Description": d} for c, d in SUMMARY_COLUMNS_DOC.items()}
    summary_sidecar["GeneratedBy"] = {
        "Name": "deepmir", "Version": __version__,
        "Parameters": {"threshold": threshold, "min_voxels": min_voxels, "connectivity": 26,
                       "max_cmb_diameter_mm": max_cmb_diameter_mm, "qsm_min_ppm": qsm_min_ppm,
                       "min_prob_max": min_prob_max, "max_cmb_qsm_extent_mm": max_cmb_qsm_extent_mm,
                       "max_cmb_qsm_elongation": max_cmb_qsm_elongation,
                       "t2_to_mni": None if t2_to_mni is None else str(t2_to_mni)
                       if isinstance(t2_to_mni, (str, Path)) else "array"},
        "Sources": {k: str(v[0]) for k, v in files.items() if v[0] is not None},
    }
    write_tsv(_round(kept), paths["lesions"])
    write_json(sidecar, paths["lesions_json"])
    write_json(summary_sidecar, paths["summary_json"])
    write_tsv(_round(dropped), paths["dropped"])
    write_tsv(_round(summary), paths["summary"])
    save_nifti(labels, ref.affine, paths["dseg"])
    return paths


def _round(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    for col in out.columns:
        if out[col].dtype.kind == "f":
            out[col] = out[col].round(4)
    return out
