"""Time a full per-lesion table on an MNI-sized volume (197x233x189, 1 mm).

Lesions are scattered inside the MNI152 brain (nilearn's bundled template): CMB-like balls
(radius 1-3 mm), iron deposits (3-6 mm), some diamagnetic and some oversized candidates, with
noisy probability, QSM and SWI maps, so that every measure and rule runs. Prints the figures.

    .venv/bin/python benchmarks/bench_lesions.py [--n-lesions 370] [--repeat 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def make_case(n_lesions: int, seed: int = 0):
    from nilearn import datasets

    tmpl = datasets.load_mni152_template(resolution=1)
    brain = np.asarray(tmpl.dataobj) > 0.2
    affine = tmpl.affine
    shape = brain.shape
    rng = np.random.default_rng(seed)
    prob_cmb = np.zeros(shape, np.float32)
    prob_iron = np.zeros(shape, np.float32)
    qsm = rng.normal(0.0, 0.01, shape).astype(np.float32)
    swi = rng.normal(0.0, 1.0, shape).astype(np.float32)
    inside = np.argwhere(brain)
    centres = inside[rng.choice(len(inside), n_lesions, replace=False)]
    for n, c in enumerate(centres):
        iron = n % 3 == 2
        r = rng.uniform(3, 6) if iron else (rng.uniform(6, 7) if n % 25 == 0 else rng.uniform(1, 3))
        lo = np.maximum(c - int(np.ceil(r)), 0)
        hi = np.minimum(c + int(np.ceil(r)) + 1, shape)
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        g = np.ogrid[sl]
        ball = sum((gi - ci) ** 2 for gi, ci in zip(g, c)) <= r * r
        target = prob_iron if iron else prob_cmb
        target[sl][ball] = rng.uniform(0.55, 1.0)
        qsm[sl][ball] = -0.1 if n % 20 == 1 else rng.uniform(0.05, 0.4)
        swi[sl][ball] -= rng.uniform(1, 5)
    return prob_cmb, prob_iron, qsm, swi, brain.astype(np.uint8), affine


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-lesions", type=int, default=370)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)

    from deepmir_tasks.io import save_nifti
    from deepmir_tasks.lesions import extract_lesions, extract_lesions_files
    from deepmir_tasks.lesions.regions import _atlas

    t0 = time.perf_counter()
    prob_cmb, prob_iron, qsm, swi, mask, affine = make_case(args.n_lesions)
    print(f"volume {prob_cmb.shape}, {args.n_lesions} lesions placed ({time.perf_counter() - t0:.1f} s to build)")

    t0 = time.perf_counter()
    _atlas()
    print(f"MARS atlas, first use (read + 2 mm distance maps): {time.perf_counter() - t0:.2f} s")

    xfm = np.eye(4)
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        kept, dropped = extract_lesions(prob_cmb, prob_iron, None, affine, qsm, swi, mask,
                                        participant_id="01", t2_to_mni=xfm)
        times.append(time.perf_counter() - t0)
    print(f"extract_lesions (arrays -> tables): best {min(times):.3f} s, median {np.median(times):.3f} s "
          f"over {args.repeat}; {len(kept)} kept, {len(dropped)} dropped "
          f"({dropped['reason'].value_counts().to_dict()})")
    print(f"  per class: {kept['label'].value_counts().to_dict()}; regions: "
          f"{kept['region'].value_counts().to_dict()}")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = {name: save_nifti(data, affine, tmp / f"{name}.nii.gz")
                 for name, data in (("pc", prob_cmb), ("pi", prob_iron), ("q", qsm), ("s", swi), ("m", mask))}
        np.savetxt(tmp / "xfm.txt", xfm)
        t0 = time.perf_counter()
        extract_lesions_files(files["pc"], files["pi"], None, files["q"], files["s"], files["m"], tmp / "out",
                              "01", t2_to_mni=tmp / "xfm.txt")
        print(f"extract_lesions_files (read 5 NIfTI + tables + write): {time.perf_counter() - t0:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
