"""Time, peak memory and accuracy of ``preprocess_subject`` on full-size simulated subjects.

Target: <= 60 s per subject on 2 cores.

    .venv/bin/python benchmarks/bench_preprocess.py [--seeds 1 2] [--size full] [--threads 2]

Each subject is simulated (``deepmir_tasks.simulate``) and written to disk first; preprocessing
then runs in a fresh child process, so its wall time and peak resident memory (``ru_maxrss`` of
the child) are preprocessing alone. Against the simulator's truth it prints: brain-mask Dice (in
the T2w grid and in the working grid), the SWI→T2w registration's mean error in the brain, the
correlation of the T2w with its clean version before/after N4, and, at every CMB, iron deposit
and calcification, the QSM peak after resampling into the working grid as a fraction of the
native-grid peak for linear, B-spline and windowed-sinc (Lanczos) interpolation. CPU seconds and
the load average are printed too: on a shared machine wall time also measures the other jobs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHILD = """
import sys, json
from workflows.preprocess import preprocess_subject
out = preprocess_subject(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], keep_intermediate=True,
                         voxel_size=float(sys.argv[5]))
print(json.dumps({k: str(v) for k, v in out.items()}))
"""


def _apply(m, pts):
    return m[:3, :3] @ pts + m[:3, 3:4]


def _extreme(data, affine, centre, radius_mm, sign):
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    c = np.linalg.solve(affine[:3, :3], np.asarray(centre) - affine[:3, 3])
    half = np.ceil((radius_mm + zooms.max()) / zooms).astype(int)
    lo = np.maximum(np.floor(c).astype(int) - half, 0)
    hi = np.minimum(np.floor(c).astype(int) + half + 2, data.shape)
    if np.any(hi <= lo):
        return 0.0
    box = data[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    ijk = np.indices(box.shape).reshape(3, -1) + lo[:, None]
    world = affine[:3, :3] @ ijk + affine[:3, 3:4]
    near = np.linalg.norm(world - np.asarray(centre)[:, None], axis=0) <= radius_mm + 0.5 * zooms.max()
    vals = box.reshape(-1)[near]
    return float(vals[np.argmax(sign * vals)]) if vals.size else 0.0


def bench_one(seed: int, size: str, threads: int, root: Path, voxel_size: float = 1.0) -> dict:
    import nibabel as nib

    from deepmir_tasks.preprocess.brain import dice
    from deepmir_tasks.preprocess.register import transform_to_ras
    from deepmir_tasks.preprocess.resample import resample_labels, resample_to_grid
    from deepmir_tasks.simulate import simulate_subject

    t = time.perf_counter()
    s = simulate_subject(seed, size=size)
    t_sim = time.perf_counter() - t
    d = root / f"seed{seed}"
    d.mkdir(parents=True, exist_ok=True)
    files = {}
    for key, name in [("t2", "sub-01_T2w"), ("swi", "sub-01_swi"), ("qsm", "sub-01_Chimap"),
                      ("brain_mask", "truth_brain_mask")]:
        files[key] = d / f"{name}.nii.gz"
        nib.save(getattr(s, key), str(files[key]))
    env = {**os.environ, "DEEPMIR_THREADS": str(threads), "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": str(threads)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, str(files["t2"]), str(files["swi"]), str(files["qsm"]),
                           str(d / "out"), str(voxel_size)], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise SystemExit(proc.stderr)
    out = {k: Path(v) for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}
    report = json.loads(out["report"].read_text())
    work = next((d / "out").glob(".preproc_*"))

    # accuracy against the truth
    truth_grid = resample_labels(files["brain_mask"], out["mask"], d / "truth_grid.nii.gz")
    mask_grid = np.asarray(nib.load(out["mask"]).dataobj) > 0
    dice_grid = dice(mask_grid, np.asarray(nib.load(truth_grid).dataobj) > 0)
    native = np.asarray(nib.load(work / "mask_native.nii.gz").dataobj) > 0
    truth = np.asarray(s.brain_mask.dataobj) > 0
    dice_t2 = dice(native, truth)
    pts = s.brain_mask.affine[:3, :3] @ np.argwhere(truth).T + s.brain_mask.affine[:3, 3:4]
    pts_swi = _apply(np.linalg.inv(s.swi_to_t2), pts)
    reg_err = float(np.linalg.norm(_apply(transform_to_ras(out["swi_to_t2"]), pts_swi) - pts, axis=0).mean())
    clean = s.t2_clean.get_fdata()[truth]
    n4 = nib.load(work / "t2_n4.nii.gz").get_fdata()[truth]
    corr = (float(np.corrcoef(s.t2.get_fdata()[truth], clean)[0, 1]), float(np.corrcoef(n4, clean)[0, 1]))

    # interpolation: QSM lesion peaks kept after resampling into the working grid
    ratios = {k: [] for k in ("linear", "bspline", "lanczos")}
    q_native, q_aff = s.qsm.get_fdata(), s.qsm.affine
    les = s.lesions[s.lesions.kind.isin(["cmb", "iron", "calcification"])]
    resampled = {}
    for interp in ratios:
        t = time.perf_counter()
        img = nib.load(resample_to_grid(files["qsm"], out["mask"], d / f"qsm_{interp}.nii.gz",
                                        transform_file=out["swi_to_t2"], interpolation=interp))
        resampled[interp] = (img.get_fdata(), img.affine, time.perf_counter() - t)
    per_lesion = []
    for row in les.itertuples():
        c = np.array([row.x_mm, row.y_mm, row.z_mm])
        sign = 1.0 if row.chi_ppm > 0 else -1.0
        nat = _extreme(q_native, q_aff, _apply(np.linalg.inv(s.swi_to_t2), c[:, None])[:, 0], row.radius_mm, sign)
        if nat * sign <= 0:
            continue
        rec = {"kind": row.kind, "radius_mm": round(float(row.radius_mm), 2),
               "chi_ppm": round(float(row.chi_ppm), 3), "native_peak": round(nat, 3)}
        for interp, (data, aff, _) in resampled.items():
            ratios[interp].append(_extreme(data, aff, c, row.radius_mm, sign) / nat)
            rec[interp] = round(ratios[interp][-1], 3)
        per_lesion.append(rec)
    return {
        "seed": seed, "size": size, "t2_shape": list(s.t2.shape), "swi_shape": list(s.swi.shape),
        "t2_voxel_mm": [round(float(z), 3) for z in s.t2.header.get_zooms()[:3]],
        "swi_voxel_mm": [round(float(z), 3) for z in s.swi.header.get_zooms()[:3]],
        "simulate_s": round(t_sim, 1), "wall_s": round(wall, 1),
        "cpu_s": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 1),
        "peak_rss_gb": round(after.ru_maxrss / 1024 ** 2, 2),
        "steps_s": report["timings_s"], "grid": report["grid"]["shape"],
        "dice_t2_grid": round(dice_t2, 4), "dice_working_grid": round(dice_grid, 4),
        "swi_reg_error_mm": round(reg_err, 3), "t2_corr_clean_before_after_n4": [round(x, 4) for x in corr],
        "qsm_peak_ratio": {k: {"n": len(v), "min": round(min(v), 3) if v else None,
                               "median": round(float(np.median(v)), 3) if v else None,
                               "frac_ge_0.7": round(float(np.mean(np.asarray(v) >= 0.7)), 3) if v else None}
                           for k, v in ratios.items()},
        "resample_qsm_s": {k: round(v[2], 2) for k, v in resampled.items()},
        "qsm_peak_per_lesion": per_lesion,
    }


def warp_eval(seeds, amplitudes=(4.0, 6.0), size: str = "small") -> list[dict]:
    """Brain-mask Dice after an extra random smooth warp of the simulated T2w and its truth mask.

    The simulator builds heads from the same MNI maps as the brain prior; a warp that neither knows
    tests the extraction on anatomy the template does not contain.
    """
    import nibabel as nib
    from scipy import ndimage

    from deepmir_tasks.preprocess.bias import n4_correct
    from deepmir_tasks.preprocess.brain import dice, extract_brain
    from deepmir_tasks.preprocess.template import register_to_template
    from deepmir_tasks.simulate import simulate_subject

    rows = []
    for seed in seeds:
        s = simulate_subject(seed, size=size)
        img, truth = s.t2, np.asarray(s.brain_mask.dataobj, np.float32)
        zooms = np.linalg.norm(img.affine[:3, :3], axis=0)
        for amp in (0.0, *amplitudes):
            rng = np.random.default_rng(1000 + seed)
            shp = img.shape
            grid = np.indices(shp).astype(np.float32)
            if amp:
                for k in range(3):
                    c = ndimage.zoom(rng.normal(size=(5, 5, 5)), np.array(shp) / 5.0, order=3)[:shp[0], :shp[1], :shp[2]]
                    grid[k] += c / np.abs(c).max() * amp / zooms[k]
            data = ndimage.map_coordinates(img.get_fdata(dtype=np.float32), grid, order=1)
            mask = ndimage.map_coordinates(truth, grid, order=1) >= 0.5
            with tempfile.TemporaryDirectory() as tmp:
                t = time.perf_counter()
                nib.save(nib.Nifti1Image(data, img.affine), f"{tmp}/t2.nii.gz")
                n4 = n4_correct(f"{tmp}/t2.nii.gz", f"{tmp}/n4.nii.gz")
                mni = register_to_template(n4, f"{tmp}/mni.txt")
                bm = extract_brain(n4, f"{tmp}/bm.nii.gz", t2_to_mni_file=mni)
                rows.append({"seed": seed, "extra_warp_mm": amp, "seconds": round(time.perf_counter() - t, 1),
                             "dice": round(dice(np.asarray(nib.load(bm).dataobj) > 0, mask), 4)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1])
    ap.add_argument("--size", default="full", choices=["full", "small"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keep", type=Path, default=None, help="keep the files in this folder")
    ap.add_argument("--voxel-size", type=float, default=1.0, help="working grid voxel size (mm)")
    ap.add_argument("--warp-eval", type=int, nargs="*", default=None, metavar="SEED",
                    help="only evaluate brain extraction on these small subjects with extra 4/6 mm warps")
    args = ap.parse_args(argv)
    if args.warp_eval is not None:
        rows = warp_eval(args.warp_eval or [11, 13, 17])
        for amp in sorted({r["extra_warp_mm"] for r in rows}):
            d = [r["dice"] for r in rows if r["extra_warp_mm"] == amp]
            print(f"extra warp {amp} mm: Dice min {min(d)}, median {float(np.median(d)):.4f} (n={len(d)})")
        return 0
    with tempfile.TemporaryDirectory(prefix="bench_pre_") as tmp:
        root = args.keep or Path(tmp)
        for seed in args.seeds:
            res = bench_one(seed, args.size, args.threads, root, args.voxel_size)
            res["load_average"] = [round(x, 2) for x in os.getloadavg()]
            print(json.dumps(res, indent=None), flush=True)
            print(f"seed {seed}: preprocessing {res['wall_s']} s wall ({res['cpu_s']} s CPU), "
                  f"peak {res['peak_rss_gb']} GB; brain Dice {res['dice_t2_grid']} (T2w grid) / "
                  f"{res['dice_working_grid']} (working grid); SWI->T2w error {res['swi_reg_error_mm']} mm; "
                  f"QSM lesion peak kept (median/min): "
                  + ", ".join(f"{k} {v['median']}/{v['min']}" for k, v in res["qsm_peak_ratio"].items()),
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
