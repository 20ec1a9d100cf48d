"""Time and peak memory of the simulator for full-size subjects, and what one subject looks like.

Target: well under a minute per full-size subject on 2 cores.

    .venv/bin/python benchmarks/bench_simulate.py [--seeds 1 2 3] [--size full] [--threads 2]

Prints the one-off cost of building the MNI anatomy (once per process), then per subject the
seconds, the peak of numpy memory (tracemalloc) and the process's peak resident set size, and a
description of the subject: grids, lesion counts, QSM (ppm) and SWI / T2w contrast measured at
the truth centres (value at the centre / median of a ring around the lesion).
"""

from __future__ import annotations

import argparse
import os
import resource
import time
import tracemalloc

import numpy as np


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def _sample(img, xyz):
    from scipy import ndimage as ndi

    inv = np.linalg.inv(img.affine)
    ijk = inv[:3, :3] @ xyz + inv[:3, 3]
    return float(ndi.map_coordinates(np.asarray(img.dataobj, np.float32), ijk[:, None], order=1)[0])


def _ring(img, xyz, r_in, r_out):
    d = np.asarray(img.dataobj, np.float32)
    aff = img.affine
    c = np.linalg.solve(aff[:3, :3], xyz - aff[:3, 3])
    half = np.ceil(r_out / np.linalg.norm(aff[:3, :3], axis=0)) + 1
    lo = np.maximum(np.floor(c - half).astype(int), 0)
    hi = np.minimum(np.ceil(c + half).astype(int) + 1, d.shape)
    g = np.stack(np.meshgrid(*[np.arange(lo[i], hi[i]) for i in range(3)], indexing="ij"), -1).reshape(-1, 3)
    dist = np.linalg.norm(g @ aff[:3, :3].T + aff[:3, 3] - xyz, axis=1)
    sel = (dist >= r_in) & (dist <= r_out)
    return float(np.median(d[tuple(g[sel].T)]))


def describe(s) -> str:
    p = s.params
    lines = [
        f"  B0 {p['b0_tesla']} T, SWI TE {p['swi_echo_time_s'] * 1e3:.1f} ms, B0 tilt {p['b0_tilt_deg']:.1f} deg, "
        f"motion {np.round(p['motion_rotation_deg'], 1).tolist()} deg / {np.round(p['motion_translation_mm'], 1).tolist()} mm",
        f"  T2w grid {s.t2.shape} at {np.round(p['t2_voxel_mm'], 2).tolist()} mm; "
        f"SWI/QSM grid {s.swi.shape} at {np.round(p['swi_voxel_mm'], 2).tolist()} mm; "
        f"fine grid {tuple(p['fine_shape'])} at {np.round(p['fine_voxel_mm'], 2).tolist()} mm",
        f"  lesions {p['lesion_counts']}; T2w SNR {p['t2_snr_wm']:.0f}, SWI SNR {p['swi_snr_wm']:.0f}, "
        f"QSM {p['qsm_method']} ({p['qsm_regularisation']:.2f})",
    ]
    x = np.linalg.inv(s.swi_to_t2)
    for kind in ("cmb", "iron", "calcification", "vein"):
        rows = s.lesions[s.lesions["kind"] == kind]
        if rows.empty:
            continue
        q, sw, t2, chi = [], [], [], []
        for _, r in rows.iterrows():
            c = np.array([r.x_mm, r.y_mm, r.z_mm])
            cs = x[:3, :3] @ c + x[:3, 3]
            q.append(_sample(s.qsm, cs))
            sw.append(_sample(s.swi, cs) / _ring(s.swi, cs, 2 * r.radius_mm + 4, 2 * r.radius_mm + 10))
            t2.append(_sample(s.t2_clean, c) / _ring(s.t2_clean, c, r.radius_mm + 3, r.radius_mm + 9))
            chi.append(r.chi_ppm)
        lines.append(
            f"  {kind:13s} n={len(rows):2d} radius {rows.radius_mm.min():.1f}-{rows.radius_mm.max():.1f} mm; "
            f"true chi median {np.median(chi):+.2f} ppm, QSM at centre median {np.median(q):+.3f} "
            f"(range {min(q):+.3f}..{max(q):+.3f}) ppm; SWI centre/ring median {np.median(sw):.2f}; "
            f"T2w centre/ring median {np.median(t2):.2f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--size", choices=("full", "small"), default="full")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    from deepmir_tasks.simulate import simulate_subject
    from deepmir_tasks.simulate.anatomy import mni_anatomy

    t0 = time.perf_counter()
    mni_anatomy()
    print(f"MNI anatomy (once per process): {time.perf_counter() - t0:.1f} s, RSS {_rss_gb():.2f} GB")
    times = []
    for seed in args.seeds:
        tracemalloc.start()
        t0 = time.perf_counter()
        s = simulate_subject(seed, size=args.size)
        dt = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        times.append(dt)
        print(f"seed {seed} ({args.size}): {dt:.1f} s, numpy peak {peak / 1024 ** 3:.2f} GB, "
              f"process peak RSS {_rss_gb():.2f} GB")
        print(describe(s))
    print(f"mean {np.mean(times):.1f} s per {args.size} subject over {len(times)} "
          f"(min {min(times):.1f}, max {max(times):.1f}); load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
