"""``simulate_subject(megre=True)``: the raw multi-echo GRE of the subject's own head."""

from __future__ import annotations

import numpy as np
import pytest

from deepmir_tasks.simulate import simulate_subject
from deepmir_tasks.simulate.multiecho import echo_times
from helpers.simulate import ALL_KINDS, SEED_ALL_KINDS, data, sample, swi_point


@pytest.fixture(scope="module")
def with_echoes():
    return simulate_subject(SEED_ALL_KINDS, size="small", lesion_counts=ALL_KINDS, megre=True)


def test_echoes_leave_every_other_image_unchanged(sim_all_kinds, with_echoes):
    assert sim_all_kinds.megre is None
    for key in ("t2", "swi", "qsm", "dseg", "brain_mask"):
        assert np.array_equal(data(getattr(sim_all_kinds, key)), data(getattr(with_echoes, key))), key
    assert sim_all_kinds.lesions.equals(with_echoes.lesions)


def test_echoes_are_on_the_swi_grid_wrapped_and_decay_with_echo_time(with_echoes):
    m = with_echoes.megre
    assert m["magnitude"].shape == with_echoes.swi.shape + (4,) == m["phase"].shape
    assert m["echo_times_s"] == echo_times(with_echoes.params["swi_echo_time_s"])
    assert np.all(np.diff(m["echo_times_s"]) > 0)
    assert m["phase"].min() >= -np.pi - 1e-5 and m["phase"].max() <= np.pi + 1e-5
    brain = data(with_echoes.qsm) != 0
    medians = np.median(m["magnitude"][brain], axis=0)
    assert np.all(np.diff(medians) < 0), medians
    # the phase wraps somewhere at the last echo (a background field of tenths of a ppm does that)
    assert np.abs(np.diff(m["phase"][..., -1], axis=0)).max() > np.pi


def test_the_qsm_chain_on_the_echoes_sees_the_subjects_lesions(with_echoes, tmp_path):
    """QSM computed from the written echoes: CMBs and iron positive, calcifications negative, and
    the map agrees with the simulator's own QSM of the same head."""
    from deepmir_tasks.qsm.bids import find_megre, load_megre
    from deepmir_tasks.qsm.pipeline import reconstruct
    from deepmir_tasks.simulate.bids import write_subject

    s = with_echoes
    paths = write_subject(s, tmp_path, "01")
    assert len(paths["megre"]["mag"]) == 4
    mag_files, phase_files = find_megre(tmp_path / "sub-01" / "anat", "sub-01")
    out = reconstruct(load_megre(mag_files, phase_files))
    chi = out["chi"]
    own = data(s.qsm)
    both = (own != 0) & out["qsm_mask"]
    # 0.31 measured on this 2.8 mm subject: the simulator's own QSM inverts the true local field,
    # the chain must first remove the background field (V-SHARP), which a coarse grid leaves in part
    assert np.corrcoef(chi[both], own[both])[0, 1] > 0.25
    import nibabel as nib

    img = nib.Nifti1Image(chi, s.swi.affine)
    checked = 0
    for _, row in s.lesions[s.lesions.kind != "vein"].iterrows():
        p = swi_point(s, row)
        if sample(s.qsm, p, order=0) == 0 or sample(nib.Nifti1Image(out["qsm_mask"].astype(np.uint8),
                                                                    s.swi.affine), p, order=0) == 0:
            continue
        checked += 1
        value = sample(img, p)
        assert (value > 0) if row.kind in ("cmb", "iron") else (value < 0), (row.kind, value)
    assert checked >= 6


def test_gre_parity_views_and_table(with_echoes, tmp_path):
    """bench_gre_parity's two views of one cohort: T2w + SWI + QSM, and T2w + the echoes only; and
    its table's difference row."""
    import pandas as pd

    from benchmarks.bench_gre_parity import VIEWS, make_view, parity_table
    from deepmir_tasks.simulate.bids import write_subject

    bids = tmp_path / "bids"
    write_subject(with_echoes, bids, "01")
    for name in ("dataset_description.json", "participants.tsv"):
        (bids / name).write_text("{}" if name.endswith("json") else "participant_id\nsub-01\n")
    names = {v: sorted(p.name for p in make_view(bids, tmp_path / v, VIEWS[v]).glob("sub-01/anat/*.nii.gz"))
             for v in VIEWS}
    assert names["given"] == ["sub-01_Chimap.nii.gz", "sub-01_T2w.nii.gz", "sub-01_swi.nii.gz"]
    assert names["gre"] == ["sub-01_T2w.nii.gz"] + sorted(f"sub-01_echo-{n}_part-{p}_MEGRE.nii.gz"
                                                         for n in range(1, 5) for p in ("mag", "phase"))
    pc = {v: pd.DataFrame({"label": ["cmb", "iron"], "sensitivity": [s, 0.5], "precision": [1.0, p],
                           "tp": [8, 1], "n_true": [10, 2], "fp": [0, 1]}).set_index("label")
          for v, s, p in (("given", 0.8, 0.5), ("gre", 0.7, 1.0))}
    table = parity_table(pc).set_index("input")
    assert table.loc["gre - given", "cmb_sens"] == pytest.approx(-0.1)
    assert table.loc["gre - given", "iron_prec"] == pytest.approx(0.5)
