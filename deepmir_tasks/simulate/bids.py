"""Writing simulated subjects as a BIDS raw dataset with truth under ``derivatives/annotations``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io import InputError, atomic_path, save_nifti, write_json, write_tsv
from .variability import RANDOMISED_PROFILES

__all__ = ["write_bids_cohort", "write_subject", "sidecars"]

DSEG_TSV_ROWS = [
    {"index": 0, "name": "background", "abbreviation": "BG"},
    {"index": 1, "name": "cerebral microbleed", "abbreviation": "CMB"},
    {"index": 2, "name": "non-haemorrhagic iron deposit", "abbreviation": "IRON"},
]


def sidecars(subject) -> dict:
    """BIDS JSON sidecars (``t2``, ``swi``, ``qsm``) describing the simulated acquisitions."""
    p = subject.params
    common = {
        "Manufacturer": "DEEPMIR simulator",
        "MagneticFieldStrength": p["b0_tesla"],
        "SimulationSeed": p["seed"],
        "SimulationSize": p["size"],
    }
    t2 = dict(common, **{
        "MRAcquisitionType": "2D", "ScanningSequence": "SE", "SequenceName": "simulated T2w TSE",
        "EchoTime": round(p["t2_echo_time_s"], 5), "RepetitionTime": round(p["t2_repetition_time_s"], 4),
        "SliceThickness": round(p["t2_voxel_mm"][2], 4), "VoxelSizeMM": [round(v, 4) for v in p["t2_voxel_mm"]],
        "SNRWhiteMatter": round(p["t2_snr_wm"], 2), "BiasFieldStrength": round(p["t2_bias_strength"], 3),
    })
    b0 = {"B0Direction": p["b0_direction_world"],
          "B0DirectionVoxel": [round(v, 6) for v in p["b0_direction_voxel"]],
          "B0TiltDegrees": round(p["b0_tilt_deg"], 3)}
    swi = dict(common, **b0, **{
        "MRAcquisitionType": "3D", "ScanningSequence": "GR", "SequenceName": "simulated SWI GRE",
        "EchoTime": round(p["swi_echo_time_s"], 5), "RepetitionTime": round(p["swi_repetition_time_s"], 4),
        "FlipAngle": round(p["swi_flip_angle_deg"], 2),
        "SliceThickness": round(p["swi_voxel_mm"][2], 4), "VoxelSizeMM": [round(v, 4) for v in p["swi_voxel_mm"]],
        "SNRWhiteMatter": round(p["swi_snr_wm"], 2),
        "SWIHighPassSigmaMM": round(p["swi_hpf_sigma_mm"], 3), "SWIPhaseMaskPower": p["swi_phase_mask_power"],
    })
    qsm = dict(common, **b0, **{
        "Units": "ppm", "EchoTime": round(p["swi_echo_time_s"], 5),
        "VoxelSizeMM": [round(v, 4) for v in p["swi_voxel_mm"]],
        "DipoleInversionMethod": p["qsm_method"],
        **({"TKDThreshold": round(p["qsm_regularisation"], 4)} if p["qsm_method"] == "TKD"
           else {"TikhonovLambda": round(p["qsm_regularisation"], 4)}),
        "MaskErosionMM": round(p["qsm_mask_erosion_mm"], 3), "SusceptibilityReference": "CSF (0 ppm)",
    })
    if p.get("profile") in RANDOMISED_PROFILES:
        _randomised_sidecars(p, t2, swi, qsm)
    return {"t2": t2, "swi": swi, "qsm": qsm}


def _randomised_sidecars(p, t2, swi, qsm):
    """What the randomised profile varies beyond the default's fields (default sidecars unchanged)."""
    for side in (t2, swi, qsm):
        side["SimulationProfile"] = p["profile"]
        side["SubjectAgeYears"] = round(p["age_years"], 1)
    if p["t2_variant"] != "TSE":
        t2.update({"SequenceName": f"simulated T2w {p['t2_variant']}", "ScanningSequence": ["SE", "IR"],
                   "InversionTime": round(p["t2_inversion_time_s"], 4)})
    swi["SWIMinIPSlices"] = p["swi_minip_slices"]
    qsm["ResidualBackgroundFraction"] = round(p["factors"]["qsm_residual_background"], 4)


def write_subject(subject, root, label: str) -> dict:
    """Write one simulated subject under ``root`` (raw) and ``root/derivatives/annotations``."""
    root = Path(root)
    sub = f"sub-{label}"
    anat = root / sub / "anat"
    ann = root / "derivatives" / "annotations" / sub / "anat"
    side = sidecars(subject)
    out = {}
    for key, suffix in (("t2", "T2w"), ("swi", "swi"), ("qsm", "Chimap")):
        img = getattr(subject, key)
        path = anat / f"{sub}_{suffix}.nii.gz"
        save_nifti(np.asarray(img.dataobj, np.float32), img.affine, path, header=img.header)
        write_json(side[key], anat / f"{sub}_{suffix}.json")
        out[key] = path
    if subject.megre is not None:  # raw multi-echo GRE of the same head, on the SWI grid
        from .megre import write_echoes

        m = subject.megre
        out["megre"] = write_echoes(anat, sub, m["magnitude"], m["phase"], subject.swi.affine, m["echo_times_s"],
                                    m["b0_tesla"])
    out["dseg"] = save_nifti(np.asarray(subject.dseg.dataobj, np.uint8), subject.dseg.affine,
                             ann / f"{sub}_space-T2w_dseg.nii.gz", header=subject.dseg.header)
    out["mask"] = save_nifti(np.asarray(subject.brain_mask.dataobj, np.uint8), subject.brain_mask.affine,
                             ann / f"{sub}_space-T2w_desc-brain_mask.nii.gz", header=subject.brain_mask.header)
    out["lesions"] = write_tsv(subject.lesions, ann / f"{sub}_lesions.tsv")
    out["xfm"] = write_json({"swi_to_t2": np.asarray(subject.swi_to_t2).tolist(),
                             "From": "SWI-session world (mm, RAS)", "To": "T2w-session world (mm, RAS)"},
                            ann / f"{sub}_desc-truth_xfm.json")
    write_json(subject.params, ann / f"{sub}_desc-simulation_params.json")
    return out


def write_bids_cohort(out_dir, n_subjects: int, seed: int, size: str = "full", start: int = 1,
                      **simulate_kwargs) -> list[str]:
    """Simulate ``n_subjects`` and write them as a BIDS dataset; return labels ("01", "02", ...).

    Subject ``start + i`` uses seed ``seed + start + i - 1``, so cohorts written in pieces
    (``start``) are identical to one written at once. Extra keyword arguments go to
    :func:`simulate_subject` (e.g. ``lesion_counts``, ``profile="randomised"``, ``factors``).
    """
    import pandas as pd

    from .. import __version__
    from .subject import simulate_subject

    out_dir = Path(out_dir)
    if n_subjects < 1:
        raise ValueError("n_subjects must be at least 1")
    if start < 1:
        raise ValueError("start must be at least 1")
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(out_dir, "output path exists and is not a folder")
    width = max(2, len(str(start + n_subjects - 1)))
    labels = []
    rows = []
    for i in range(n_subjects):
        num = start + i
        label = f"{num:0{width}d}"
        subject = simulate_subject(seed + num - 1, size, **simulate_kwargs)
        write_subject(subject, out_dir, label)
        labels.append(label)
        counts = subject.params["lesion_counts"]
        rows.append({"participant_id": f"sub-{label}", "seed": seed + num - 1,
                     "field_strength": subject.params["b0_tesla"],
                     "n_cmb": counts.get("cmb", 0), "n_iron": counts.get("iron", 0),
                     "n_calcification": counts.get("calcification", 0), "n_vein": counts.get("vein", 0)})
        if subject.params.get("profile") in RANDOMISED_PROFILES:
            rows[-1].update(profile=subject.params["profile"], age=round(subject.params["age_years"], 1))
    _merge_participants(out_dir / "participants.tsv", pd.DataFrame(rows))
    gen = [{"Name": "deepmir simulate", "Version": __version__,
            "Description": "physics-based T2w/SWI/QSM simulator (dipole field, GRE dephasing, TKD/Tikhonov QSM)"}]
    write_json({"Name": "DEEPMIR simulated cohort", "BIDSVersion": "1.9.0", "DatasetType": "raw",
                "GeneratedBy": gen, "License": "CC0"}, out_dir / "dataset_description.json")
    write_json({"participant_id": {"Description": "participant label"},
                "seed": {"Description": "simulator seed"},
                "field_strength": {"Description": "B0", "Units": "T"}},
               out_dir / "participants.json")
    # SWI magnitude is not (yet) a BIDS suffix: tell the validator to skip it
    with atomic_path(out_dir / ".bidsignore") as tmp:
        tmp.write_text("*_swi.nii.gz\n*_swi.json\n")
    ann = out_dir / "derivatives" / "annotations"
    write_json({"Name": "DEEPMIR simulated ground truth", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
                "GeneratedBy": gen}, ann / "dataset_description.json")
    write_tsv(pd.DataFrame(DSEG_TSV_ROWS), ann / "dseg.tsv")
    return labels


def _merge_participants(path, new):
    import pandas as pd

    if path.exists():
        old = pd.read_csv(path, sep="\t", dtype={"participant_id": str})
        old = old[~old["participant_id"].isin(new["participant_id"])]
        new = pd.concat([old, new], ignore_index=True).sort_values("participant_id")
    write_tsv(new, path)
