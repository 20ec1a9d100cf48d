"""Writing subjects as a BIDS raw dataset with the truth under ``derivatives/annotations``.

Layout (what ``deepmir run`` and ``deepmir evaluate`` read):
``sub-XX/anat/sub-XX_{T2w,swi,Chimap}.nii.gz`` (+ JSON sidecars; the Chimap in ppm) and
``derivatives/annotations/sub-XX/anat/``: ``sub-XX_space-T2w_dseg.nii.gz`` (0 background,
1 CMB, 2 iron deposit), ``sub-XX_space-T2w_desc-brain_mask.nii.gz``,
``sub-XX_space-T2w_desc-nuclei_dseg.nii.gz`` (deep grey nuclei, labels in ``desc-nuclei_dseg.tsv``),
``sub-XX_lesions.tsv`` (every lesion, calcifications included, world mm of the T2w session),
``sub-XX_desc-truth_xfm.json`` and ``sub-XX_desc-simulation_params.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from .nuclei import nucleus_names

__all__ = ["write_subject", "write_cohort", "SEED_BASE"]

#: subject seeds start here (condition index x 10,000 above it); DEEPMIR's own simulator cohorts
#: use seeds 1000-1015, 800000-800008, 910000-920009, far from 7,300,000-7,400,000
SEED_BASE = 7_300_000

_GENERATOR = {"Name": "benchmarks.independent_sim",
              "Description": "independent head and lesion MRI simulator (MNI152 2009 tissue maps, dipole field, "
                             "GRE dephasing, SWI, TKD/Tikhonov QSM, T2w spin echo); shares no code with "
                             "deepmir_tasks.simulate"}


def _json(obj, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def _nii(img, path, dtype):
    path.parent.mkdir(parents=True, exist_ok=True)
    out = nib.Nifti1Image(np.asarray(img.dataobj).astype(dtype), img.affine)
    out.header.set_xyzt_units("mm")
    out.set_qform(img.affine, 1)
    out.set_sform(img.affine, 1)
    nib.save(out, path)
    return path


def _sidecars(p):
    common = {"Manufacturer": "benchmarks.independent_sim", "MagneticFieldStrength": p["b0_tesla"],
              "SimulationSeed": p["seed"], "SimulationCondition": p["condition"]}
    gre = dict(common, EchoTime=round(p["gre_te_s"], 5), VoxelSizeMM=list(p["swi_voxel_mm"]),
               MRAcquisitionType="2D" if p["gre_2d"] else "3D", B0DirectionInHead=p["b0_direction_head"])
    return {
        "T2w": dict(common, ScanningSequence="SE", EchoTime=round(p["t2_te_s"], 4),
                    RepetitionTime=round(p["t2_tr_s"], 3), VoxelSizeMM=list(p["t2_voxel_mm"]),
                    MRAcquisitionType="2D"),
        "swi": dict(gre, ScanningSequence="GR", SWIPhaseMaskPower=p["phase_mask_power"]),
        "Chimap": dict(gre, Units="ppm", DipoleInversionMethod=p["qsm_method"],
                       Regularisation=round(p["qsm_regularisation"], 4),
                       ResidualBackgroundFraction=round(p["residual_background"], 4),
                       SusceptibilityReference="lateral ventricle CSF"),
    }


def write_subject(subject, root, label: str) -> dict:
    """Write one subject under ``root``; return the paths."""
    root = Path(root)
    sub = f"sub-{label}"
    anat, ann = root / sub / "anat", root / "derivatives" / "annotations" / sub / "anat"
    side = _sidecars(subject.params)
    out = {}
    for key, suffix in (("t2", "T2w"), ("swi", "swi"), ("qsm", "Chimap")):
        out[key] = _nii(getattr(subject, key), anat / f"{sub}_{suffix}.nii.gz", np.float32)
        _json(side[suffix], anat / f"{sub}_{suffix}.json")
    out["dseg"] = _nii(subject.dseg, ann / f"{sub}_space-T2w_dseg.nii.gz", np.uint8)
    out["mask"] = _nii(subject.brain_mask, ann / f"{sub}_space-T2w_desc-brain_mask.nii.gz", np.uint8)
    out["nuclei"] = _nii(subject.nuclei, ann / f"{sub}_space-T2w_desc-nuclei_dseg.nii.gz", np.uint8)
    out["lesions"] = ann / f"{sub}_lesions.tsv"
    pd.DataFrame(subject.lesions).to_csv(out["lesions"], sep="\t", index=False, na_rep="n/a")
    _json({"swi_to_t2": subject.swi_to_t2, "From": "SWI-session world (mm, RAS)",
           "To": "T2w-session world (mm, RAS)"}, ann / f"{sub}_desc-truth_xfm.json")
    _json(subject.params, ann / f"{sub}_desc-simulation_params.json")
    return out


def write_cohort(out_dir, n_subjects: int, seed: int, condition: str = "default", crop=None, overrides=None) -> list:
    """Simulate and write ``n_subjects`` (subject i uses seed ``seed + i``; ``overrides`` as
    :func:`~.subject.simulate_subject`); return their labels."""
    from .subject import simulate_subject

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: output path exists and is not a folder")
    if n_subjects < 1:
        raise ValueError(f"{out_dir}: n_subjects must be at least 1, got {n_subjects}")
    labels, rows = [], []
    for i in range(n_subjects):
        label = f"{i + 1:02d}"
        subject = simulate_subject(seed + i, condition, crop=crop, overrides=overrides)
        write_subject(subject, out_dir, label)
        kinds = pd.Series([r["kind"] for r in subject.lesions], dtype=str).value_counts()
        rows.append({"participant_id": f"sub-{label}", "seed": seed + i, "condition": condition,
                     "nucleus_texture": subject.params["nucleus_texture"],
                     "age": round(subject.params["age_years"], 1), "field_strength": subject.params["b0_tesla"],
                     **{f"n_{k}": int(kinds.get(k, 0)) for k in ("cmb", "iron", "calcification")}})
        labels.append(label)
    pd.DataFrame(rows).to_csv(out_dir / "participants.tsv", sep="\t", index=False)
    _json({"Name": f"independent simulated cohort ({condition})", "BIDSVersion": "1.9.0", "DatasetType": "raw",
           "License": "CC0", "GeneratedBy": [_GENERATOR]}, out_dir / "dataset_description.json")
    (out_dir / ".bidsignore").write_text("*_swi.nii.gz\n*_swi.json\n")
    ann = out_dir / "derivatives" / "annotations"
    _json({"Name": "independent simulator ground truth", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
           "GeneratedBy": [_GENERATOR]}, ann / "dataset_description.json")
    pd.DataFrame({"index": [0, 1, 2],
                  "name": ["background", "cerebral microbleed", "non-haemorrhagic iron deposit"],
                  "abbreviation": ["BG", "CMB", "IRON"]}).to_csv(ann / "dseg.tsv", sep="\t", index=False)
    names = nucleus_names()
    pd.DataFrame({"index": range(len(names) + 1), "name": ["background"] + names}).to_csv(
        ann / "desc-nuclei_dseg.tsv", sep="\t", index=False)
    return labels
