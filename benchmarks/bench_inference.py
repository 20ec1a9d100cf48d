"""Inference time and peak memory of the DEEPMIR predictor on one full-size subject.

Target: <= 30 s and <= 4 GB on 2 cores for a whole brain in the 1 mm working grid.

    .venv/bin/python benchmarks/bench_inference.py [--model M.safetensors] [--threads 2] [--tta]
        [--prepared DIR]   # a folder with *_desc-preproc_{T2w,swi,Chimap}.nii.gz + *_desc-brain_mask

Without ``--prepared`` it simulates one full-size subject (``deepmir_tasks.simulate``) and, to
keep preprocessing out of the timing, resamples its SWI/QSM onto the T2w grid with the known
transform; without a bundled model it uses randomly initialised weights of the default
architecture (the timing does not depend on the weight values). Also prints the sliding-window
(96³, 50 % overlap) time for comparison. Peak memory is the process's maximum resident set size. CPU seconds and the load average are
printed too: on a shared machine wall time mostly measures the other jobs.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def simulated_volumes():
    from scipy.ndimage import affine_transform

    from deepmir_tasks.simulate import simulate_subject

    s = simulate_subject(424242, size="full")
    ref = s.t2
    vols = {"t2": np.asarray(ref.dataobj, np.float32)}
    t2_from_swi = np.asarray(s.swi_to_t2)
    for m, img in (("swi", s.swi), ("qsm", s.qsm)):
        # voxel of T2 grid -> world T2 -> world SWI -> voxel of SWI grid
        mat = np.linalg.inv(img.affine) @ np.linalg.inv(t2_from_swi) @ ref.affine
        vols[m] = affine_transform(np.asarray(img.dataobj, np.float32), mat[:3, :3], mat[:3, 3],
                                   output_shape=ref.shape, order=1)
    mask = np.asarray(s.brain_mask.dataobj) > 0
    return vols, mask, "simulated full-size subject (seed 424242), T2w grid " + str(ref.shape)


def prepared_volumes(folder: Path):
    from deepmir_tasks.io import load_volume

    def one(pattern):
        hits = sorted(folder.glob(pattern))
        if not hits:
            raise SystemExit(f"{folder}: no file matches {pattern}")
        return load_volume(hits[0], allow_empty=True)[0]

    vols = {"t2": one("*desc-preproc_T2w.nii.gz"), "swi": one("*desc-preproc_swi.nii.gz"),
            "qsm": one("*desc-preproc_Chimap.nii.gz")}
    return vols, one("*desc-brain_mask.nii.gz") > 0, f"prepared subject {folder}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tta", action="store_true")
    p.add_argument("--prepared", type=Path, default=None)
    p.add_argument("--no-windows", action="store_true", help="skip the sliding-window comparison")
    args = p.parse_args(argv)

    import torch

    from deepmir_tasks.model.modelfile import DEFAULT_MODEL
    from deepmir_tasks.model.predictor import Predictor

    torch.set_num_threads(args.threads)
    vols, mask, what = prepared_volumes(args.prepared) if args.prepared else simulated_volumes()
    model = args.model or DEFAULT_MODEL
    rss0 = _rss_gb()
    if Path(model).exists():
        pred = Predictor.from_file(model, threads=args.threads)
        source = str(model)
    else:
        from deepmir_tasks.model.normalize import DEFAULT_NORMALIZATION
        from deepmir_tasks.model.unet import UNet

        pred = Predictor(UNet(3, 3, 5, 16, max_width=128).eval(),
                         {"architecture": {"dim": 3}, "modalities": ["t2", "swi", "qsm"],
                          "normalization": DEFAULT_NORMALIZATION, "classes": ["background", "cmb", "iron"]},
                         threads=args.threads)
        source = "random weights, UNet 5 levels / base 16 / max width 128"
    idx = np.argwhere(mask)
    box = (idx.max(0) - idx.min(0) + 1).tolist()
    t0, c0 = time.perf_counter(), time.process_time()
    probs = pred.predict(vols, mask, tta=args.tta)
    t_whole, c_whole = time.perf_counter() - t0, time.process_time() - c0
    rss_whole = _rss_gb()
    result = {"data": what, "grid": list(mask.shape), "brain_box": box, "model": source,
              "threads": args.threads, "tta": pred.uses_tta(args.tta), "whole_volume_s": round(t_whole, 2),
              "whole_volume_cpu_s": round(c_whole, 2), "load_average_1min": round(__import__("os").getloadavg()[0], 2),
              "peak_rss_gb_after_whole": round(rss_whole, 2), "rss_gb_before_predict": round(rss0, 2)}
    if not args.no_windows:
        pred.max_voxels, pred.window = 0, 96
        t0 = time.perf_counter()
        probs_w = pred.predict(vols, mask, tta=False)
        result["windows_96_overlap50_s"] = round(time.perf_counter() - t0, 2)
        same = pred.uses_tta(False) == pred.uses_tta(args.tta)   # both passes augmented, or neither
        result["windows_vs_whole_max_abs_diff"] = float(np.abs(probs_w - probs).max()) if same else None
        result["peak_rss_gb"] = round(_rss_gb(), 2)
    result["target"] = "whole volume <= 30 s and <= 4 GB on 2 cores"
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
