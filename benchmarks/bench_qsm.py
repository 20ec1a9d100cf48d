"""QSM/SWI from raw multi-echo GRE: time, peak memory and accuracy against a known susceptibility.

Target (issue 14): a whole brain (~200x240x160 at 1 mm) in <= 2 minutes on 2 cores and <= 4 GB.

    OMP_NUM_THREADS=2 DEEPMIR_THREADS=2 .venv/bin/python benchmarks/bench_qsm.py [--voxel-mm 1.0]
        [--seed 7] [--method tv|tkd] [--lambda 3e-4] [--magnitude-mask]

A child process simulates one head (``deepmir_tasks.simulate.megre``: 4 echoes at 3 T, oblique
slab, air cavities, shim residual, phase offset, noise) and writes it as BIDS with scanner-integer
phase; this process then reads it back and runs the chain (``deepmir_tasks.qsm.pipeline``), timing
each step. Peak memory is this process's maximum resident set size (the simulation is not in it).
Accuracy inside the brain (the QSM mask within the true brain): QSM Challenge 2.0 metrics
(NRMSE, HFEN, XSIM), correlation, per-nucleus means against the truth and their regression slope
(the reconstruction's underestimation), and each CMB's peak / calcification's minimum.
By default the true brain mask is given (as the T2w mask would be); ``--magnitude-mask`` uses the
GRE magnitude's own mask instead.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import pickle
import resource
import tempfile
import time
from pathlib import Path

import numpy as np


def _simulate(args, out_dir):
    from deepmir_tasks.simulate.megre import simulate_megre, write_megre_bids

    t = time.perf_counter()
    sim = simulate_megre(args.seed, voxel_mm=args.voxel_mm)
    paths = write_megre_bids(sim, out_dir, phase_units="scanner")
    truth = {"chi": sim.chi_ppm, "brain": sim.brain_mask, "nuclei": sim.nuclei, "lesions": sim.lesions,
             "paths": paths, "seconds": time.perf_counter() - t}
    Path(out_dir, "truth.pkl").write_bytes(pickle.dumps(truth))


def _rss_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def _chain(truth, args):
    from deepmir_tasks.qsm.background import vsharp
    from deepmir_tasks.qsm.bids import load_megre
    from deepmir_tasks.qsm.field import fit_field, hz_to_ppm
    from deepmir_tasks.qsm.inversion import invert_dipole
    from deepmir_tasks.qsm.mask import brain_mask, refine_mask
    from deepmir_tasks.qsm.swi import clear_swi

    laps, t = {}, time.perf_counter()

    def lap(name):
        nonlocal t
        now = time.perf_counter()
        laps[name] = round(now - t, 2)
        t = now

    d = load_megre(truth["paths"]["mag"], truth["paths"]["phase"])
    lap("read")
    vox = d.voxel_mm
    mask = brain_mask(d.magnitude, vox, None if args.magnitude_mask else truth["brain"])
    lap("mask")
    fit = fit_field(d.magnitude, d.phase, d.echo_times_s, mask, vox)
    field = hz_to_ppm(fit["field_hz"], d.b0_tesla)
    if args.magnitude_mask:
        mask = refine_mask(mask, fit["residual"])
    lap("unwrap + field fit")
    local, qmask = vsharp(field, mask, vox)
    lap("V-SHARP")
    kw = {"lam": args.lam} if args.method == "tv" else {}
    chi = invert_dipole(local, qmask, vox, d.affine, args.method, **kw)
    lap(f"dipole inversion ({args.method})")
    clear_swi(d.magnitude, fit["field_hz"], mask, vox, d.echo_times_s, b0_tesla=d.b0_tesla)
    lap("SWI")
    return d, chi, qmask, laps


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--voxel-mm", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--method", default="tv")
    ap.add_argument("--lambda", dest="lam", type=float, default=3e-4)
    ap.add_argument("--magnitude-mask", action="store_true")
    args = ap.parse_args(argv)
    from deepmir_tasks.qsm.metrics import qsm_metrics
    from deepmir_tasks.simulate.anatomy import NUCLEI_LABELS

    with tempfile.TemporaryDirectory() as tmp:
        p = mp.get_context("spawn").Process(target=_simulate, args=(args, tmp))
        p.start()
        p.join()
        truth = pickle.loads(Path(tmp, "truth.pkl").read_bytes())
        print(f"simulated in {truth['seconds']:.1f} s (child process)")
        cpu0, t0 = time.process_time(), time.perf_counter()
        d, chi, qmask, laps = _chain(truth, args)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    print(f"grid {d.magnitude.shape} voxel {d.voxel_mm} mm, {len(d.echo_times_s)} echoes, phase read as {d.phase_units}")
    print(f"chain: {wall:.1f} s wall, {cpu:.1f} s CPU, peak RSS {_rss_gb():.2f} GB; threads "
          f"DEEPMIR_THREADS={os.environ.get('DEEPMIR_THREADS', 'all')}, load average {os.getloadavg()[0]:.1f}")
    print("steps (s):", laps)
    q = qmask & truth["brain"]
    t = truth["chi"] - truth["chi"][q].mean()
    x = chi - chi[q].mean()
    met = qsm_metrics(x, t, q)
    print("in the brain: " + ", ".join(f"{k} {v:.3f}" for k, v in met.items()) + f" ({q.sum()} voxels)")
    rows = []
    for lab, name in enumerate(NUCLEI_LABELS, start=1):
        sel = q & (truth["nuclei"] == lab)
        if sel.sum() > 20:
            rows.append((name, float(t[sel].mean()), float(x[sel].mean())))
    if rows:
        tt, xx = np.array([r[1] for r in rows]), np.array([r[2] for r in rows])
        slope = float(np.sum(tt * xx) / np.sum(tt * tt))
        for name, a, b in rows:
            print(f"  {name:24s} truth {a:+.4f} recon {b:+.4f} recon/slope {b / slope:+.4f} ppm")
        print(f"deep nuclei: slope recon/truth {slope:.3f}; |mean error| {np.abs(xx - tt).mean():.4f} ppm, "
              f"after the slope {np.abs(xx / slope - tt).mean():.4f} ppm")
    for les in truth["lesions"]:
        i, j, k = les["centre_vox"]
        patch = chi[i - 1:i + 2, j - 1:j + 2, k - 1:k + 2]
        val = patch.max() if les["kind"] == "cmb" else patch.min()
        print(f"  {les['kind']:14s} truth {les['chi_ppm']:+.3f} recon peak {val:+.3f} ppm")


if __name__ == "__main__":
    main()
