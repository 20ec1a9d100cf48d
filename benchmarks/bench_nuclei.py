"""What normal deep grey nuclei look like to the model: QSM, SWI and T2w at each nucleus's core.

    .venv/bin/python benchmarks/bench_nuclei.py DERIV BIDS [DERIV BIDS ...] [--radius-mm 2.5] [--markdown]

For each pair (a ``deepmir run`` output folder and the BIDS folder it ran on, a cohort of ``deepmir
simulate`` or of ``python -m benchmarks.independent_sim``) it reads the pipeline's preprocessed maps
in the T2w space (``desc-preproc``: T2w and SWI as robust z-scores inside the brain, QSM in ppm) and
prints, per nucleus, the median over a ball at the nucleus's centre of the QSM (ppm) and of the SWI
and T2w minus their brain medians (z units: negative = darker than the brain). Nucleus centres come
from the truth: the simulator records them (``nucleus_centroids_t2_mm`` in its parameters), the
independent generator writes a label map (``desc-nuclei_dseg``). A last row per folder gives the
medians over the iron-rich nuclei (globus pallidus, substantia nigra, red nucleus, dentate).

It compares how dark a given nuclear iron level is on SWI and T2w in two cohorts: a bright-QSM
region that is not dark on SWI is what a focal iron deposit looks like to a model trained where
nuclei are always dark.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

IRON_RICH = ("pallid", "nigra", "red", "dentate")


def nucleus_centres(bids: Path, sub: str) -> dict:
    """Nucleus name -> centre (T2w world mm) from the cohort's truth (either simulator)."""
    import nibabel as nib

    ann = bids / "derivatives" / "annotations" / sub / "anat"
    labels = ann / f"{sub}_space-T2w_desc-nuclei_dseg.nii.gz"
    if not labels.exists():
        params = json.loads((ann / f"{sub}_desc-simulation_params.json").read_text())
        return params["nucleus_centroids_t2_mm"]
    names = pd.read_csv(bids / "derivatives" / "annotations" / "desc-nuclei_dseg.tsv", sep="\t")
    img = nib.load(str(labels))
    lab, aff = np.asarray(img.dataobj), img.affine
    out = {}
    for row in names.itertuples():
        ijk = np.argwhere(lab == row.index)
        if row.index and len(ijk):
            out[row.name] = (ijk.mean(0) @ aff[:3, :3].T + aff[:3, 3]).tolist()
    return out


def subject_rows(deriv: Path, bids: Path, sub: str, radius_mm: float) -> list:
    import nibabel as nib

    anat = deriv / sub / "anat"
    load = lambda name: nib.load(str(anat / f"{sub}_space-T2w_{name}.nii.gz"))  # noqa: E731
    qsm_img = load("desc-preproc_Chimap")
    qsm, aff = qsm_img.get_fdata(), qsm_img.affine
    swi, t2 = load("desc-preproc_swi").get_fdata(), load("desc-preproc_T2w").get_fdata()
    brain = np.asarray(load("desc-brain_mask").dataobj) > 0
    xyz = np.indices(qsm.shape).reshape(3, -1).T @ aff[:3, :3].T + aff[:3, 3]
    swi_brain, t2_brain = float(np.median(swi[brain])), float(np.median(t2[brain]))
    rows = []
    for name, centre in nucleus_centres(bids, sub).items():
        ball = (np.linalg.norm(xyz - np.asarray(centre), axis=1) <= radius_mm).reshape(qsm.shape) & brain
        if ball.sum() < 3:
            continue
        rows.append({"folder": str(deriv), "participant_id": sub, "nucleus": name,
                     "qsm_ppm": float(np.median(qsm[ball])),
                     "swi_z": float(np.median(swi[ball])) - swi_brain,
                     "t2w_z": float(np.median(t2[ball])) - t2_brain})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pairs", nargs="+", type=Path, metavar="DERIV BIDS")
    ap.add_argument("--radius-mm", type=float, default=2.5)
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args(argv)
    if len(args.pairs) % 2:
        raise SystemExit("bench_nuclei: give DERIV BIDS pairs")
    rows, summary = [], []
    for deriv, bids in zip(args.pairs[::2], args.pairs[1::2]):
        for path in (deriv, bids):
            if not path.is_dir():
                raise SystemExit(f"bench_nuclei: {path}: not a folder")
        subs = sorted(p.name for p in deriv.glob("sub-*") if (p / "anat").is_dir())
        part = [r for sub in subs for r in subject_rows(deriv, bids, sub, args.radius_mm)]
        rows += part
        rich = pd.DataFrame([r for r in part if any(k in r["nucleus"].lower() for k in IRON_RICH)])
        if len(rich):
            summary.append({"folder": str(deriv), "subjects": len(subs), "nuclei": len(rich),
                            **{k: round(float(rich[k].median()), 3) for k in ("qsm_ppm", "swi_z", "t2w_z")},
                            "swi_z_per_0.1ppm": round(float((rich["swi_z"] / rich["qsm_ppm"]).median() * 0.1), 2)})
    table = pd.DataFrame(rows).round(3)
    print(table.to_string(index=False))
    print("\niron-rich nuclei (pallidum, nigra, red nucleus, dentate), medians:")
    out = pd.DataFrame(summary)
    print(out.to_markdown(index=False) if args.markdown else out.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
