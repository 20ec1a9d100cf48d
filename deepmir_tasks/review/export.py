"""Decisions -> training labels: an annotation dseg (1 CMB, 2 iron) where ``deepmir train`` reads it.

For each candidate a rater accepted as a CMB or an iron deposit, the lesion's extent is painted on
the working grid with the decided class:

- a kept lesion keeps its segmented extent (its component of the published dseg);
- a dropped candidate takes the component of its class's probability map at >= 0.5 around its
  centroid;
- a lesion the rater added is grown from the images (:func:`grow_lesion`: voxels as dark on SWI,
  or as paramagnetic on QSM, as the seed, within 5 mm);
- when none of that works (no map, no component near the centroid, growth leaking or finding no
  contrast) a small sphere stands in, and the export report says so.

Rejected candidates (calcification, vein, not a lesion) are not painted; calcifications and veins
go to the annotation's ``lesions.tsv`` (``kind``, world mm), which training reads as hard negatives.
The working-grid map is then brought to the grid of the subject's raw T2w (nearest neighbour
through the two affines, every lesion kept: :func:`deepmir_tasks.preprocess.resample_labels`),
which is what ``deepmir train`` expects (``ANNOT_DIR/sub-X/anat/sub-X_space-T2w_dseg.nii.gz``).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from deepmir_tasks.io import InputError, load_image, save_nifti, write_json, write_tsv
from deepmir_tasks.labels import DSEG_LABELS
from deepmir_tasks.review.decisions import (TARGET_DECISIONS, ReviewSubject, read_candidates, read_decisions,
                                            rater_decisions)

__all__ = ["GROW_RADIUS_MM", "SPHERE_RADIUS_MM", "grow_lesion", "subject_labels", "raw_t2_path",
           "export_subject", "export_review"]

#: how far from the clicked voxel an added lesion may grow
GROW_RADIUS_MM = 5.0
#: radius of the sphere that stands in when an extent cannot be found, per class
SPHERE_RADIUS_MM = {"cmb": 1.5, "iron": 2.0}
#: how far (mm) from a candidate's centroid its component may lie in the dseg or probability map
NEAR_MM = 2.0
EXPORT_REPORT = "review_export.tsv"


def _ball_distance(shape, centre, zooms) -> np.ndarray:
    grids = np.meshgrid(*[(np.arange(n) - c) * z for n, c, z in zip(shape, centre, zooms)], indexing="ij")
    return np.sqrt(sum(g * g for g in grids))


def sphere(shape, centre, zooms, radius_mm) -> np.ndarray:
    """Voxels within ``radius_mm`` of ``centre`` (the centre voxel always)."""
    out = _ball_distance(shape, centre, zooms) <= radius_mm
    out[tuple(int(c) for c in centre)] = True
    return out


def grow_lesion(ijk, label: str, swi, qsm, mask, zooms, *, radius_mm: float = GROW_RADIUS_MM):
    """Grow a lesion from a clicked voxel; return ``(bool mask, method)``, method ``"grown on SWI"``,
    ``"grown on QSM"`` or ``"sphere: <why>"``.

    Contrast is measured against the ring 5-8 mm around the click (median and MAD, inside the
    brain): a CMB is looked for as SWI darkness first, then QSM excess; an iron deposit the other
    way round. The seed is the most contrasted voxel within 1.5 mm of the click and must stand
    out by 3 robust SDs; the lesion is its 26-connected region of voxels standing out by 2 SDs
    inside the 5 mm ball. A region reaching the ball's edge (a vein, a large structure) is refused.
    """
    import cc3d

    shape = np.asarray(swi.shape)
    zooms = np.asarray(zooms, float)
    ijk = np.asarray([int(v) for v in ijk])
    reach = np.ceil((radius_mm + 3.0) / zooms).astype(int)
    lo = np.maximum(ijk - reach, 0)
    hi = np.minimum(ijk + reach + 1, shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    dist = _ball_distance(hi - lo, ijk - lo, zooms)
    inside = np.asarray(mask[box], bool) if mask is not None and np.any(mask) else np.ones(dist.shape, bool)
    ball = dist <= radius_mm
    ring = (dist > radius_mm) & (dist <= radius_mm + 3.0) & inside
    order = [("SWI", swi, -1.0), ("QSM", qsm, 1.0)]
    if label == "iron":
        order.reverse()
    why = []
    for name, image, sign in order:
        if image is None or not np.any(image):
            why.append(f"no {name}")
            continue
        img = sign * np.asarray(image[box], np.float32)
        bg = img[ring] if ring.sum() >= 20 else img[~ball]
        if bg.size < 10:
            why.append(f"{name}: too little background")
            continue
        med = float(np.median(bg))
        sd = 1.4826 * float(np.median(np.abs(bg - med))) or float(bg.std()) or 1e-6
        z = (img - med) / sd
        near = dist <= max(1.5, float(zooms.max()))
        seed = np.unravel_index(np.argmax(np.where(near, z, -np.inf)), z.shape)
        if z[seed] < 3.0:
            why.append(f"{name}: no contrast at the click (z {z[seed]:.1f})")
            continue
        cc = cc3d.connected_components(((z >= 2.0) & ball).astype(np.uint8), connectivity=26)
        region = cc == cc[seed]
        if np.any(region & (dist > radius_mm - float(zooms.max()))):
            why.append(f"{name}: region reaches {radius_mm:g} mm (vein or large structure)")
            continue
        out = np.zeros(swi.shape, bool)
        out[box] = region
        return out, f"grown on {name}"
    return sphere(swi.shape, ijk, zooms, SPHERE_RADIUS_MM.get(label, 1.5)), "sphere: " + "; ".join(why)


def _component_near(values: np.ndarray, ijk, zooms) -> np.ndarray | None:
    """The 26-connected component of ``values`` (bool) at or nearest (<= NEAR_MM) to ``ijk``."""
    import cc3d

    if not values.any():
        return None
    cc = cc3d.connected_components(values.astype(np.uint8), connectivity=26)
    at = cc[tuple(ijk)]
    if at == 0:
        idx = np.argwhere(cc > 0)
        d = np.sqrt((((idx - np.asarray(ijk)) * zooms) ** 2).sum(1))
        if d.min() > NEAR_MM:
            return None
        at = cc[tuple(idx[int(np.argmin(d))])]
    return cc == at


def subject_labels(subject: ReviewSubject, rater: str, *, include_undecided: bool = False):
    """The rater's labels for one subject on the working grid.

    Returns ``(labels uint8, affine, report rows, mimic rows, undecided candidate ids)``. Without
    ``include_undecided`` every candidate must be decided (else :class:`InputError`); with it,
    undecided kept lesions keep the model's class and undecided dropped ones vanish.
    """
    dseg_img = load_image(subject.files["dseg"], what="dseg", allow_empty=True)
    dseg = np.rint(np.asarray(dseg_img.dataobj)).astype(np.int16)
    affine = dseg_img.affine
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(0))

    def volume(name, what):
        path = subject.files.get(name)
        if path is None:
            return None
        img = load_image(path, what=what, allow_empty=True)
        if img.shape != dseg.shape:
            raise InputError(path, f"{what} shape {img.shape} differs from the dseg's {dseg.shape}")
        return np.asarray(img.dataobj, np.float32)

    swi, qsm, mask = volume("swi", "SWI"), volume("qsm", "QSM"), volume("mask", "brain mask")
    probs = {c: volume(f"probseg_{c}", f"{c} probability map") for c in TARGET_DECISIONS}
    cands = read_candidates(subject)
    mine = rater_decisions(read_decisions(subject), rater)
    undecided = [c for c in cands["candidate_id"] if not (mine.get(c) or {}).get("decision")]
    if undecided and not include_undecided:
        raise InputError(subject.review_tsv, f"{subject.key}: rater {rater} has not decided {len(undecided)} of "
                                             f"{len(cands)} candidate(s) (first: {undecided[0]}); finish the review "
                                             "or export with --include-undecided")
    items = cands.to_dict("records") + [r for c, r in mine.items() if r.get("source") == "added"]
    labels = np.zeros(dseg.shape, np.uint8)
    report, mimics = [], []
    for cand in items:
        cid = cand["candidate_id"]
        row = mine.get(cid) or {}
        decision = row.get("decision")
        if not decision:
            decision = cand.get("model_label") if cand["source"] == "kept" else None
        ijk = tuple(int(cand[a]) for a in ("i", "j", "k"))
        if any(v < 0 or v >= n for v, n in zip(ijk, dseg.shape)):
            raise InputError(subject.review_tsv, f"{cid}: centroid {ijk} lies outside the working grid {dseg.shape}")
        entry = {"participant_id": f"sub-{subject.participant_id}", "session_id": subject.session_id and
                 f"ses-{subject.session_id}", "rater": rater, "candidate_id": cid, "source": cand["source"],
                 "model_label": cand.get("model_label"), "decision": decision or "undecided",
                 "label_value": 0, "method": "not painted", "n_voxels": 0, "note": row.get("note")}
        if decision in ("calcification", "vein"):
            mimics.append({"kind": decision, "x_mm": cand["x_mm"], "y_mm": cand["y_mm"], "z_mm": cand["z_mm"],
                           "candidate_id": cid, "source": cand["source"]})
        if decision in TARGET_DECISIONS:
            region, method = _extent(cand, decision, dseg, probs, swi, qsm, mask, zooms)
            new = region & (labels == 0)
            labels[new] = DSEG_LABELS[decision]
            entry.update(label_value=DSEG_LABELS[decision], method=method, n_voxels=int(new.sum()))
            mimics.append({"kind": decision, "x_mm": cand["x_mm"], "y_mm": cand["y_mm"], "z_mm": cand["z_mm"],
                           "candidate_id": cid, "source": cand["source"]})
        report.append(entry)
    return labels, affine, report, mimics, undecided


def _extent(cand, decision, dseg, probs, swi, qsm, mask, zooms):
    ijk = tuple(int(cand[a]) for a in ("i", "j", "k"))
    model = cand.get("model_label")
    why = None
    if cand["source"] == "kept":
        region = _component_near(dseg == DSEG_LABELS.get(model, -1), ijk, zooms)
        if region is not None:
            return region, "dseg"
        why = "no dseg component at the centroid"
    elif cand["source"] == "dropped":
        prob = probs.get(model)
        region = None if prob is None else _component_near(prob >= 0.5, ijk, zooms)
        if region is not None:
            return region, "probseg >= 0.5"
        why = "no probability map" if prob is None else "no probseg >= 0.5 component at the centroid"
    else:
        return grow_lesion(ijk, decision, swi, qsm, mask, zooms)
    return sphere(dseg.shape, ijk, zooms, SPHERE_RADIUS_MM.get(decision, 1.5)), f"sphere: {why}"


def raw_t2_path(subject: ReviewSubject, output_dir, bids_dir=None) -> Path:
    """The subject's raw T2w: from ``bids_dir`` or the dataset the output was made from
    (``SourceDatasets`` in the output's ``dataset_description.json``)."""
    from deepmir_tasks.bids_files import find_subjects

    if bids_dir is None:
        desc = Path(output_dir) / "dataset_description.json"
        try:
            bids_dir = json.loads(desc.read_text())["SourceDatasets"][0]["URL"]
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            raise InputError(desc, "does not name the BIDS dataset this output was made from "
                                   "(SourceDatasets); give it with --bids-dir") from None
    subs = find_subjects(bids_dir, [subject.participant_id],
                         [subject.session_id] if subject.session_id else None, modalities=("t2",))
    t2 = subs[0].files.get("t2") if subs else None
    if t2 is None:
        raise InputError(bids_dir, f"{subject.key} has no raw T2w image to put the labels on")
    return Path(t2)


def export_subject(subject: ReviewSubject, rater: str, raw_t2, annot_dir, *, include_undecided=False) -> dict:
    """Write ``annot_dir/sub-X/anat/sub-X_space-T2w_dseg.nii.gz`` (on the raw T2w grid), its JSON
    sidecar and ``sub-X_lesions.tsv``; return ``{"dseg", "lesions", "report", "undecided"}``."""
    from deepmir_tasks.preprocess.resample import resample_labels

    labels, affine, report, lesions, undecided = subject_labels(subject, rater, include_undecided=include_undecided)
    raw = load_image(raw_t2, what="raw T2w", allow_empty=True)
    inv = np.linalg.inv(raw.affine)
    for row in lesions:
        v = np.rint(inv[:3, :3] @ [row["x_mm"], row["y_mm"], row["z_mm"]] + inv[:3, 3])
        if np.any(v < 0) or np.any(v >= np.asarray(raw.shape[:3])):
            raise InputError(raw_t2, f"{subject.key} lesion {row['candidate_id']} at "
                                     f"({row['x_mm']:.1f}, {row['y_mm']:.1f}, {row['z_mm']:.1f}) mm lies outside "
                                     "this T2w's field of view: is it the image the output was made from?")
    out_anat = Path(annot_dir) / f"sub-{subject.participant_id}" / (f"ses-{subject.session_id}" if subject.session_id
                                                                     else "") / "anat"
    dseg_path = out_anat / f"{subject.key}_space-T2w_dseg.nii.gz"
    with tempfile.TemporaryDirectory() as tmp:
        work = save_nifti(labels, affine, Path(tmp) / "work_dseg.nii.gz", dtype=np.uint8)
        resample_labels(work, raw_t2, dseg_path)
    write_json({"Description": "Lesion annotation from deepmir review: 0 background, 1 CMB, 2 iron deposit",
                "Rater": rater, "Sources": [str(subject.review_tsv), str(subject.files["dseg"])],
                "SpatialReference": str(raw_t2),
                "Lesions": {m: sum(r["method"].startswith(m) for r in report if r["label_value"])
                            for m in ("dseg", "probseg", "grown", "sphere")}},
               dseg_path.with_name(dseg_path.name.replace(".nii.gz", ".json")))
    lesions_path = out_anat / f"{subject.key}_lesions.tsv"
    write_tsv(pd.DataFrame(lesions, columns=["kind", "x_mm", "y_mm", "z_mm", "candidate_id", "source"]),
              lesions_path)
    return {"dseg": dseg_path, "lesions": lesions_path, "report": report, "undecided": undecided}


def export_review(output_dir, annot_dir, rater: str, subjects, *, bids_dir=None, include_undecided=False) -> dict:
    """Export every subject the rater reviewed; write ``annot_dir/review_export.tsv`` (one row per
    candidate: decision, label, how its extent was found) and a ``dataset_description.json``.
    Subjects the rater has not touched are skipped (listed in the result)."""
    from deepmir_tasks import __version__

    annot_dir = Path(annot_dir)
    done, skipped, rows = [], [], []
    for subject in subjects:
        if not rater_decisions(read_decisions(subject), rater):
            skipped.append(subject.key)
            continue
        res = export_subject(subject, rater, raw_t2_path(subject, output_dir, bids_dir), annot_dir,
                             include_undecided=include_undecided)
        rows += res["report"]
        done.append(res)
    if not done:
        raise InputError(output_dir, f"rater {rater} has no decisions on any of the {len(subjects)} subject(s)")
    report = pd.DataFrame(rows)
    if report["session_id"].isna().all():
        report = report.drop(columns="session_id")
    write_tsv(report, annot_dir / EXPORT_REPORT)
    desc = annot_dir / "dataset_description.json"
    if not desc.exists():
        write_json({"Name": "Lesion annotations (deepmir review)", "BIDSVersion": "1.9.0",
                    "DatasetType": "derivative",
                    "GeneratedBy": [{"Name": "deepmir review", "Version": __version__}],
                    "SourceDatasets": [{"URL": str(Path(output_dir).absolute())}]}, desc)
    return {"subjects": done, "skipped": skipped, "report": annot_dir / EXPORT_REPORT, "table": report}
