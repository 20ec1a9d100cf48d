"""Time and size of the QC reports.

Renders the subject page of a 1 mm phantom head in a full-size working grid (default
160x192x160) with ten lesions (six CMBs, four iron deposits) and two dropped candidates, and a
cohort page of many subjects; prints the rendering times and the page sizes.

    .venv/bin/python benchmarks/bench_report.py [--shape 160 192 160] [--subjects 200]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from conftest_report import make_phantom  # noqa: E402

from deepmir_tasks.report import render_cohort_report, render_subject_report  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=(160, 192, 160))
    ap.add_argument("--subjects", type=int, default=200)
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        p = make_phantom(tmp / "in", n_cmb=6, n_iron=4, n_dropped=2, shape=tuple(args.shape))
        t_make = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = render_subject_report(tmp / "sub-01.html", participant_id="sub-01", t2=p["t2"], swi=p["swi"],
                                    qsm=p["qsm"], mask=p["mask"], dseg=p["dseg"],
                                    lesions_tsv=p["lesions_tsv"], dropped_tsv=p["dropped_tsv"],
                                    provenance={"model": "benchmark"})
        t_subject = time.perf_counter() - t0
        size = out.stat().st_size
        n_tiles = len(p["lesions"])
        print(f"subject page, grid {tuple(args.shape)} at 1 mm, {n_tiles} lesion tiles + "
              f"{len(p['dropped'])} dropped: {t_subject:.2f} s, {size / 1024:.0f} KiB "
              f"(phantom made in {t_make:.1f} s)")

        rows, subjects = [], []
        for n in range(1, args.subjects + 1):
            lab = f"{n:03d}"
            status = "failed" if n % 25 == 0 else ("cached" if n % 3 == 0 else "done")
            k = n % 7
            for m in range(k):
                rows.append({"participant_id": f"sub-{lab}", "lesion_id": m + 1,
                             "label": "cmb" if m % 2 else "iron", "volume_mm3": 3.0 + m * 4.0,
                             "qsm_mean_ppm": 0.1 + 0.05 * m, "region": "deep"})
            subjects.append({"participant_id": f"sub-{lab}", "status": status,
                             "reason": "T2w unreadable" if status == "failed" else None,
                             "n_cmb": k // 2, "n_iron": k - k // 2, "iron_volume_mm3": 10.0 * k,
                             "report": f"sub-{lab}/sub-{lab}.html"})
        group = tmp / "group.tsv"
        pd.DataFrame(rows).to_csv(group, sep="\t", index=False)
        t0 = time.perf_counter()
        cohort = render_cohort_report(tmp / "report.html", subjects, group)
        t_cohort = time.perf_counter() - t0
        print(f"cohort page, {args.subjects} subjects, {len(rows)} lesions: {t_cohort:.2f} s, "
              f"{cohort.stat().st_size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
