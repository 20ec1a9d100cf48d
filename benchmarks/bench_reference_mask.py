"""Brain mask and MNI affine from each possible reference image (issue 13): T2w, SWI or QSM.

A subject without a T2w is processed in its SWI's space (else its QSM's): the brain mask is the
MNI prior carried through the reference's affine to MNI, trimmed of skull-dark voxels (T2w, SWI),
or the QSM's support (QSM). For simulated subjects this prints, per reference, the brain mask's
Dice against the simulator's brain (compared on the T2w grid through the true SWI->T2w transform)
and the fraction of true CMBs and iron deposits whose centre lies inside the mask.

    .venv/bin/python benchmarks/bench_reference_mask.py --seeds 11 12 13 14 15 16 --size small
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def _mask_on_t2_grid(mask_img, ref_to_t2: np.ndarray, t2_img) -> np.ndarray:
    """A mask on another grid, brought onto the T2w grid (nearest) through ``ref_to_t2`` (world)."""
    from scipy import ndimage

    vox = np.linalg.inv(mask_img.affine) @ np.linalg.inv(ref_to_t2) @ t2_img.affine
    return ndimage.affine_transform(np.asarray(mask_img.dataobj, np.float32), vox[:3, :3], vox[:3, 3],
                                    output_shape=t2_img.shape[:3], order=0) > 0.5


def _inside(mask_img, ref_to_t2, xyz_t2: np.ndarray) -> np.ndarray:
    """Whether world points of the T2w session fall inside a mask on the reference's grid."""
    pts = np.c_[xyz_t2, np.ones(len(xyz_t2))] @ (np.linalg.inv(mask_img.affine) @ np.linalg.inv(ref_to_t2)).T
    ijk = np.rint(pts[:, :3]).astype(int)
    data = np.asarray(mask_img.dataobj) > 0
    ok = np.all((ijk >= 0) & (ijk < np.asarray(data.shape)), axis=1)
    out = np.zeros(len(ijk), bool)
    out[ok] = data[tuple(ijk[ok].T)]
    return out


def measure(seed: int, size: str, work: Path) -> list[dict]:
    import nibabel as nib

    from deepmir_tasks.preprocess.bias import n4_correct
    from deepmir_tasks.preprocess.brain import dice, extract_brain
    from deepmir_tasks.preprocess.template import register_to_template
    from deepmir_tasks.simulate import simulate_subject

    subj = simulate_subject(seed, size=size)
    truth = np.asarray(subj.brain_mask.dataobj) > 0
    les = subj.lesions[subj.lesions["kind"].isin(["cmb", "iron"])]
    xyz = les[["x_mm", "y_mm", "z_mm"]].to_numpy(float)
    rows = []
    for ref, img, to_t2 in (("T2w", subj.t2, np.eye(4)), ("SWI", subj.swi, subj.swi_to_t2),
                            ("QSM", subj.qsm, subj.swi_to_t2)):
        t0 = time.perf_counter()
        raw = work / f"{seed}_{ref}.nii.gz"
        nib.save(img, raw)
        src = raw
        if ref != "QSM":
            src = n4_correct(raw, work / f"{seed}_{ref}_n4.nii.gz")
        mni = register_to_template(src, work / f"{seed}_{ref}_mni.txt", contrast=ref)
        mask_file = extract_brain(src, work / f"{seed}_{ref}_mask.nii.gz", t2_to_mni_file=mni, contrast=ref)
        mask_img = nib.load(mask_file)
        on_t2 = _mask_on_t2_grid(mask_img, to_t2, subj.t2)
        inside = _inside(mask_img, to_t2, xyz)
        rows.append({"seed": seed, "reference": ref, "dice": round(dice(on_t2, truth), 3),
                     "lesions_inside": int(inside.sum()), "lesions": int(len(inside)),
                     "seconds": round(time.perf_counter() - t0, 1)})
        print(rows[-1], flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[11, 12, 13, 14, 15, 16])
    ap.add_argument("--size", default="small", choices=("small", "full"))
    args = ap.parse_args(argv)
    import pandas as pd

    with tempfile.TemporaryDirectory(prefix="deepmir_refmask_") as tmp:
        rows = [r for seed in args.seeds for r in measure(seed, args.size, Path(tmp))]
    df = pd.DataFrame(rows)
    agg = df.groupby("reference").agg(dice_min=("dice", "min"), dice_median=("dice", "median"),
                                      lesions_inside=("lesions_inside", "sum"), lesions=("lesions", "sum"),
                                      seconds=("seconds", "median"))
    print(agg.loc[["T2w", "SWI", "QSM"]].to_string())


if __name__ == "__main__":
    main()
