"""Per-lesion tables from DEEPMIR's probability maps: what a researcher takes away.

For each class (``cmb``, ``iron``) the probability map is thresholded, split into 26-connected
components (``cc3d``), and each component is measured (:mod:`.measure`): size, equivalent-sphere
diameter, centroid in voxel and world coordinates, probability, susceptibility (QSM), local SWI
contrast and its MARS region (:mod:`.regions`). Components that are not credible detections are
moved to a second table with a ``reason``: the rules, their order and their defaults are
:class:`~deepmir_tasks.lesions.rules.LesionRules`; the columns are :mod:`.schema`.

:func:`extract_lesions` works on arrays; :func:`extract_lesions_files` reads the NIfTI maps and
writes the BIDS-derivative tables.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from deepmir_tasks.bids_names import bids_prefix, job_file_name
from deepmir_tasks.io import InputError
from deepmir_tasks.labels import CLASSES, DSEG_LABELS, LESION_CLASSES
from deepmir_tasks.lesions.measure import Volumes, measure_component, principal_extent, qsm_peak_shape
from deepmir_tasks.lesions.rules import LesionRules, drop_iron_beside_cmb, drop_reason
from deepmir_tasks.lesions.schema import (COLUMN_DESCRIPTIONS, LESION_COLUMNS, SUMMARY_COLUMNS,
                                          SUMMARY_COLUMNS_DOC, summarise_lesions, table_columns)

__all__ = [
    "CLASSES",
    "LesionRules",
    "qsm_peak_shape",
    "LESION_COLUMNS",
    "COLUMN_DESCRIPTIONS",
    "SUMMARY_COLUMNS",
    "extract_lesions",
    "extract_lesions_files",
    "summarise_lesions",
    "bids_prefix",
]


def extract_lesions(prob_cmb, prob_iron, dseg, affine, qsm, swi, mask=None, *, participant_id,
                    session_id=None, t2_to_mni=None, rules: LesionRules | None = None,
                    return_labels: bool = False, **rule_changes):
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
        rules: the :class:`LesionRules` (default: their defaults); a voxel above threshold for
            both classes goes to the more probable one.
        rule_changes: rules to change (field names of :class:`LesionRules`, e.g. ``threshold=0.7``,
            or ``min_prob_max={"cmb": p, "iron": q}``; see :meth:`LesionRules.replace`).
        return_labels: also return the label map of the kept lesions (uint8: 0, 1 CMB, 2 iron).

    Returns:
        ``(kept, dropped)``, or ``(kept, dropped, labels)`` with ``return_labels``: ``kept`` has
        :data:`LESION_COLUMNS` (``session_id`` only if given), one row per lesion, CMBs first then
        iron, each in order of position; ``dropped`` has the same columns plus ``reason``. Lesion
        ids number the kept rows from 1 and the dropped rows from 1.
    """
    from deepmir_tasks.lesions.regions import load_affine

    sub, ses, _ = bids_prefix(participant_id, session_id)
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got {affine.shape}")
    world_to_mni = load_affine(t2_to_mni)
    rules = (rules or LesionRules()).replace(**rule_changes)
    vol, cand = _volumes(prob_cmb, prob_iron, dseg, affine, qsm, swi, mask, rules.threshold)
    rows, voxels = _candidates(vol, cand, rules)
    table = _table(rows, sub, ses, world_to_mni)
    kept = table[table["reason"].isna()].reset_index(drop=True)
    dropped = table[table["reason"].notna()].reset_index(drop=True)
    labels = np.zeros(vol.mask.shape, np.uint8)
    for index, name in zip(kept["_index"], kept["label"]):
        v = voxels[int(index)]
        labels[v[:, 0], v[:, 1], v[:, 2]] = DSEG_LABELS[name]
    with_session = ses is not None
    kept = kept.assign(lesion_id=np.arange(1, len(kept) + 1, dtype=int))[table_columns(with_session)]
    dropped = dropped.assign(lesion_id=np.arange(1, len(dropped) + 1, dtype=int))[
        table_columns(with_session, dropped=True)]
    return (kept, dropped, labels) if return_labels else (kept, dropped)


def _volumes(prob_cmb, prob_iron, dseg, affine, qsm, swi, mask, threshold) -> tuple[Volumes, dict]:
    """Check the maps share one 3-D grid; the class probabilities and each class's candidates."""
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
    vol = Volumes(affine=affine, probs=probs, any_candidate=cand["cmb"] | cand["iron"],
                  mask=np.ones(shape, dtype=bool) if mask is None else np.asarray(mask) > 0,
                  qsm=None if qsm is None else np.asarray(qsm, dtype=np.float32),
                  swi=None if swi is None else np.asarray(swi, dtype=np.float32))
    return vol, cand


def _candidates(vol: Volumes, cand: dict, rules: LesionRules) -> tuple[list[dict], list[np.ndarray]]:
    """Measure every 26-connected candidate of each class and give the reason to drop it, if any."""
    import cc3d

    shape = vol.mask.shape
    rows, voxels = [], []
    for name in LESION_CLASSES:
        if not cand[name].any():
            continue
        labels = cc3d.connected_components(cand[name].astype(np.uint8), connectivity=26)
        stats = cc3d.statistics(labels)
        for lab in range(1, len(stats["voxel_counts"])):
            if int(stats["voxel_counts"][lab]) == 0:
                continue
            bbox = stats["bounding_boxes"][lab]
            lo = [max(s.start - p, 0) for s, p in zip(bbox, vol.shell_pad)]
            hi = [min(s.stop + int(p), dim) for s, p, dim in zip(bbox, vol.shell_pad, shape)]
            crop = tuple(slice(a, b) for a, b in zip(lo, hi))
            comp = labels[crop] == lab
            row, ijk = measure_component(vol, name, comp, lo, crop)
            extent = principal_extent(ijk.astype(float), vol.affine) if name == "cmb" else 0.0
            row["reason"] = drop_reason(rules, row, inside_fraction=float(vol.mask[crop][comp].mean()),
                                        extent_mm=extent, has_qsm=vol.qsm is not None)
            row["_index"] = len(rows)
            rows.append(row)
            voxels.append(ijk)
    drop_iron_beside_cmb(rows, rules)
    return rows, voxels


def _table(rows: list[dict], sub: str, ses: str | None, world_to_mni) -> pd.DataFrame:
    """All candidates in one table: identifiers and region added, CMBs first, each by position."""
    from deepmir_tasks.lesions.regions import classify_world

    table = pd.DataFrame(rows, columns=[c for c in LESION_COLUMNS if c not in
                                        ("participant_id", "session_id", "lesion_id", "region")]
                         + ["reason", "_index"])
    if len(table):
        table["region"] = classify_world(table[["x_mm", "y_mm", "z_mm"]].to_numpy(float), world_to_mni)
    else:
        table["region"] = pd.Series(dtype=object)
    table["participant_id"] = sub
    if ses is not None:
        table["session_id"] = ses
    table["label"] = pd.Categorical(table["label"], categories=list(LESION_CLASSES), ordered=True)
    table = table.sort_values(["label", "k", "j", "i"], kind="stable").reset_index(drop=True)
    table["label"] = table["label"].astype(object)
    table["n_voxels"] = table["n_voxels"].astype(int)
    return table


def _load(path, what, *, allow_empty=True):
    from deepmir_tasks.io import load_image

    if path is None:
        return None
    return load_image(path, what=what, allow_empty=allow_empty)


def extract_lesions_files(probseg_cmb, probseg_iron, dseg, qsm, swi, mask, out_dir, participant_id,
                          session_id=None, t2_to_mni=None, *, rules: LesionRules | None = None,
                          flags: str = "", **rule_changes) -> dict:
    """File-level :func:`extract_lesions`: read NIfTI maps, write the BIDS-derivative tables.

    Every image must be on one grid (the T2w working grid); a file on another grid raises
    :class:`~deepmir_tasks.io.InputError` naming it. Any of the inputs may be ``None`` except that
    one of ``probseg_cmb``/``probseg_iron``/``dseg`` must be given. ``rules`` and ``rule_changes``
    are those of :func:`extract_lesions`. Writes into ``out_dir``:

    - ``<prefix>_space-T2w_desc-deepmir_lesions.tsv`` (+ ``.json`` sidecar describing each column),
    - ``<prefix>_space-T2w_desc-dropped_lesions.tsv``,
    - ``<prefix>_space-T2w_desc-deepmir_summary.tsv`` (+ ``.json``),
    - ``<prefix>_space-T2w_desc-deepmir_dseg.nii.gz``: the kept lesions (0, 1 CMB, 2 iron),

    where ``<prefix>`` is ``sub-XX[_ses-YY]``. ``flags`` (from the input checks, e.g.
    ``outside_supported_resolution``), when not empty, becomes a ``flags`` column of every table. Returns a dict with keys ``lesions``,
    ``lesions_json``, ``dropped``, ``summary``, ``dseg`` (paths) and ``summary_json`` (the summary's column
    descriptions plus the parameters and software version that produced the tables).
    """
    from deepmir_tasks.io import save_nifti, write_json, write_tsv
    from deepmir_tasks.lesions.regions import load_affine

    if probseg_cmb is None and probseg_iron is None and dseg is None:
        raise ValueError("give at least one of probseg_cmb, probseg_iron or dseg")
    rules = (rules or LesionRules()).replace(**rule_changes)
    sub, ses, prefix = bids_prefix(participant_id, session_id)
    files = {"probseg_cmb": (probseg_cmb, "CMB probability map"),
             "probseg_iron": (probseg_iron, "iron probability map"),
             "dseg": (dseg, "dseg"), "qsm": (qsm, "QSM"), "swi": (swi, "SWI"),
             "mask": (mask, "brain mask")}
    ref, data = _read_maps(files)
    kept, dropped, labels = extract_lesions(
        data["probseg_cmb"], data["probseg_iron"], data["dseg"], ref.affine, data["qsm"], data["swi"],
        data["mask"], participant_id=sub, session_id=ses, t2_to_mni=load_affine(t2_to_mni), rules=rules,
        return_labels=True)
    summary = summarise_lesions(kept, dropped, sub, ses)
    if flags:
        kept, dropped, summary = (t.assign(flags=flags) for t in (kept, dropped, summary))

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / job_file_name(name, prefix)
             for name in ("lesions", "lesions_json", "dropped", "summary", "summary_json", "dseg")}
    write_tsv(_round(kept), paths["lesions"])
    write_json({c: COLUMN_DESCRIPTIONS[c] for c in kept.columns}, paths["lesions_json"])
    write_json(_summary_sidecar(rules, t2_to_mni, files), paths["summary_json"])
    write_tsv(_round(dropped), paths["dropped"])
    write_tsv(_round(summary), paths["summary"])
    save_nifti(labels, ref.affine, paths["dseg"])
    return paths


def _read_maps(files: dict):
    """Load the given maps (``{key: (path or None, what)}``), checked to share the first map's grid."""
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
    return ref, data


def _summary_sidecar(rules: LesionRules, t2_to_mni, files: dict) -> dict:
    """The summary's column descriptions, plus the rules and software that made the tables."""
    from deepmir_tasks import __version__

    sidecar = {c: {"Description": d} for c, d in SUMMARY_COLUMNS_DOC.items()}
    sidecar["GeneratedBy"] = {
        "Name": "deepmir", "Version": __version__,
        "Parameters": {"threshold": rules.threshold, "min_voxels": rules.min_voxels, "connectivity": 26,
                       "max_cmb_diameter_mm": rules.max_cmb_diameter_mm, "qsm_min_ppm": rules.qsm_min_ppm,
                       "min_prob_max": {c: rules.min_prob(c) for c in LESION_CLASSES},
                       "max_cmb_qsm_extent_mm": rules.max_cmb_qsm_extent_mm,
                       "max_cmb_qsm_elongation": rules.max_cmb_qsm_elongation,
                       "t2_to_mni": None if t2_to_mni is None else str(t2_to_mni)
                       if isinstance(t2_to_mni, (str, Path)) else "array"},
        "Sources": {k: str(v[0]) for k, v in files.items() if v[0] is not None},
    }
    return sidecar


def _round(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    for col in out.columns:
        if out[col].dtype.kind == "f":
            out[col] = out[col].round(4)
    return out
