"""End to end at the supported resolution: a full-size simulated subject (the demo's) through
``run_cohort`` with the bundled model finds its lesions where the truth has them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from deepmir_tasks.bids_names import derivative_name
from pipelines.run import run_cohort

pytestmark = pytest.mark.slow


def test_full_size_subject_lesions_found_with_their_class(tmp_path):
    """The demo subject (seed 20211, T2w ~0.9 x 0.9 x 3 mm, SWI/QSM ~0.7 x 0.7 x 1.5 mm: 2 CMBs,
    3 iron deposits). Measured with the bundled model of this commit: all 5 found with the right
    class, no false positive, no calcification called a lesion; the bounds leave one miss and one
    false positive of margin."""
    from deepmir_tasks.simulate import write_bids_cohort

    bids = tmp_path / "bids"
    write_bids_cohort(bids, 1, 20211, size="full")
    result = run_cohort(bids, tmp_path / "out", worker="debug", cache_dir=tmp_path / "cache", group=False)
    assert result.ok, result.failed
    truth = pd.read_csv(bids / "derivatives" / "annotations" / "sub-01" / "anat" / "sub-01_lesions.tsv", sep="\t")
    table = pd.read_csv(tmp_path / "out" / "sub-01" / "anat" / derivative_name("lesions", "sub-01"),
                        sep="\t", na_values="n/a")
    found = table[["x_mm", "y_mm", "z_mm"]].to_numpy(float)
    hits = false = 0
    for kind in ("cmb", "iron"):
        true = truth.loc[truth["kind"] == kind, ["x_mm", "y_mm", "z_mm"]].to_numpy(float)
        mine = table.loc[table["label"] == kind, ["x_mm", "y_mm", "z_mm"]].to_numpy(float)
        near = [bool(len(mine)) and np.linalg.norm(mine - t, axis=1).min() <= 5.0 for t in true]
        hits += sum(near)
    n_true = int(truth["kind"].isin(["cmb", "iron"]).sum())
    lesion_xyz = truth.loc[truth["kind"].isin(["cmb", "iron"]), ["x_mm", "y_mm", "z_mm"]].to_numpy(float)
    false = sum(np.linalg.norm(lesion_xyz - f, axis=1).min() > 5.0 for f in found) if len(found) else 0
    calc = truth.loc[truth["kind"] == "calcification", ["x_mm", "y_mm", "z_mm"]].to_numpy(float)
    assert n_true == 5 and hits >= n_true - 1, (hits, n_true, table)
    assert false <= 1, table
    assert not len(calc) or not len(found) or all(np.linalg.norm(found - c, axis=1).min() > 5.0 for c in calc)
