"""Registration checks on valid and broken subjects: does a check separate them, with margin?

    .venv/bin/python benchmarks/bench_regqc.py BIDS_DIR [BIDS_DIR ...] --work DIR [--flip] [--markdown]

For each subject of each BIDS folder (T2w, SWI and QSM, e.g. cohorts of ``deepmir simulate`` and of
``python -m benchmarks.independent_sim``), the T2w is bias-corrected and its brain mask made as the
pipeline does, then two SWIs are registered to it (``register_rigid``, the pipeline's ``fast``
preset): its own (``valid``) and the next subject's of the same folder (``swapped``: an SWI of
another head placed in the folder). The QSM shares the SWI's transform when it lies in the SWI's
scanner space, as in the pipeline, else is registered itself. For each pair the SWI-QSM agreement
of :func:`deepmir_tasks.preprocess.regqc.swi_qsm_agreement` is measured; with ``--flip`` also the
alignment check's fits (:func:`~deepmir_tasks.preprocess.regqc.check_alignment`) of the valid pair
and of the pair with the T2w's header mirrored left-right (its data untouched).

One row per pair: folder, subject, case, the measurements, seconds. Steps are cached under
``--work`` (masks and transforms), so a rerun only adds what is new.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _subjects(bids: Path) -> list:
    out = []
    for anat in sorted(bids.glob("sub-*/anat")) + sorted(bids.glob("sub-*/ses-*/anat")):
        files = {k: next(iter(sorted(anat.glob(f"*_{suffix}.nii.gz"))), None)
                 for k, suffix in (("t2", "T2w"), ("swi", "swi"), ("qsm", "Chimap"))}
        if all(files.values()):
            out.append((anat.parent.name, files))
    return out


def _prepare(files: dict, work: Path) -> dict:
    """Bias-corrected T2w and its brain mask (the pipeline's functions), cached in ``work``."""
    from deepmir_tasks.preprocess.bias import n4_correct
    from deepmir_tasks.preprocess.brain import extract_brain
    from deepmir_tasks.preprocess.template import register_to_template

    work.mkdir(parents=True, exist_ok=True)
    t2, mni, mask = work / "t2_n4.nii.gz", work / "t2_to_mni.txt", work / "mask.nii.gz"
    if not mask.exists():
        n4_correct(files["t2"], t2, what="T2w")
        register_to_template(t2, mni)
        extract_brain(t2, mask, t2_to_mni_file=mni)
    return {"t2": t2, "mask": mask}


def _register(swi, qsm, prep: dict, work: Path, name: str) -> tuple:
    from deepmir_tasks.io import load_image
    from deepmir_tasks.preprocess.register import register_rigid, same_space

    swi_tx, qsm_tx = work / f"{name}_swi.mat", work / f"{name}_qsm.mat"
    if not swi_tx.exists():
        register_rigid(swi, prep["t2"], swi_tx, fixed_mask_file=prep["mask"], what="SWI")
    if same_space(load_image(qsm), load_image(swi)):
        return swi_tx, swi_tx
    if not qsm_tx.exists():
        register_rigid(qsm, prep["t2"], qsm_tx, fixed_mask_file=prep["mask"], what="QSM")
    return swi_tx, qsm_tx


def _flipped_t2(prep: dict, work: Path) -> tuple:
    """The T2w and its mask with the header mirrored left-right about the brain's centre."""
    import nibabel as nib

    out = work / "t2_flipped.nii.gz", work / "mask_flipped.nii.gz"
    if not out[1].exists():
        m = nib.load(prep["mask"])
        centre = m.affine[:3, :3] @ np.argwhere(np.asarray(m.dataobj) > 0).mean(axis=0) + m.affine[:3, 3]
        flip = np.diag([-1.0, 1.0, 1.0, 1.0])
        flip[0, 3] = 2 * centre[0]
        for src, dst in ((prep["t2"], out[0]), (prep["mask"], out[1])):
            img = nib.load(src)
            nib.save(nib.Nifti1Image(np.asarray(img.dataobj), flip @ img.affine), str(dst))
    return out


def measure(bids_dirs, work: Path, flip: bool = False) -> list:
    from deepmir_tasks.preprocess.regqc import check_alignment, swi_qsm_agreement

    rows = []
    for bids in bids_dirs:
        subjects = _subjects(Path(bids))
        for i, (label, files) in enumerate(subjects):
            sub_work = work / Path(bids).resolve().as_posix().strip("/").replace("/", "_") / label
            prep = _prepare(files, sub_work)
            cases = {"valid": files["swi"]}
            if len(subjects) > 1:
                other_label, other = subjects[(i + 1) % len(subjects)]
                cases[f"swapped ({other_label}'s SWI)"] = other["swi"]
            for case, swi in cases.items():
                t0 = time.perf_counter()
                swi_tx, qsm_tx = _register(swi, files["qsm"], prep, sub_work, case.split()[0])
                shared = qsm_tx == swi_tx
                row = {"folder": str(bids), "subject": label, "case": case, "qsm": "shared" if shared else "own",
                       **swi_qsm_agreement(swi, files["qsm"], prep["mask"], swi_tx, None if shared else qsm_tx)}
                if not shared:  # by the headers too
                    row["by_header"] = swi_qsm_agreement(swi, files["qsm"])["swi_contrast_at_qsm_peaks"]
                if flip and case == "valid":
                    row.update(_alignment(check_alignment, swi, prep["t2"], swi_tx, prep["mask"]))
                row["seconds"] = round(time.perf_counter() - t0, 1)
                rows.append(row)
                print(json.dumps(row), flush=True)
            if flip:
                t0 = time.perf_counter()
                t2f, maskf = _flipped_t2(prep, sub_work)
                from deepmir_tasks.preprocess.register import register_rigid

                tx = sub_work / "flipped_swi.mat"
                if not tx.exists():
                    register_rigid(files["swi"], t2f, tx, fixed_mask_file=maskf, what="SWI")
                row = {"folder": str(bids), "subject": label, "case": "T2w header flipped",
                       **_alignment(check_alignment, files["swi"], t2f, tx, maskf),
                       "seconds": round(time.perf_counter() - t0, 1)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def _alignment(check, swi, t2, tx, mask) -> dict:
    from deepmir_tasks.io import InputError

    try:
        qc = check(swi, t2, tx, mask)
    except InputError as err:
        return {"alignment": f"failed: {err}"}
    alts = qc["alternatives"]
    mirrored = alts["mirrored left-right"]
    rotated = min(v for k, v in alts.items() if not k.startswith("mirrored"))
    found = qc["mutual_information"]
    return {"mi_found": found, "mi_mirrored_gain": round((found - mirrored) / abs(found), 4),
            "mi_rotated_gain": round((found - rotated) / abs(found), 4), "rotation_deg": qc["rotation_deg"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bids", nargs="+", type=Path)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--flip", action="store_true", help="also measure the alignment check on flipped T2w headers")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args(argv)
    rows = measure(args.bids, args.work, flip=args.flip)
    if args.markdown:
        import pandas as pd

        print(pd.DataFrame(rows).drop(columns=["folder"]).to_markdown(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
