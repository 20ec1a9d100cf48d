"""``simulate_subject`` on small subjects: truth lands on the lesions, QSM signs, blooming, seeding."""

from __future__ import annotations

import numpy as np
import pytest

from deepmir_tasks.simulate import SimulatedSubject, simulate_subject
from helpers.simulate import ALL_KINDS, SEED_ALL_KINDS, data, neighbourhood, ring_median, sample, swi_point, t2_point


def _by_kind(subject, kind):
    return subject.lesions[subject.lesions["kind"] == kind]


def test_contract_images_grids_and_types(sim_all_kinds):
    s = sim_all_kinds
    assert isinstance(s, SimulatedSubject)
    t2, swi, qsm = s.t2, s.swi, s.qsm
    for img in (t2, swi, qsm, s.dseg, s.brain_mask, s.t2_clean, s.bias_t2):
        assert img.ndim == 3 and np.all(np.isfinite(data(img)))
    for img in (s.dseg, s.brain_mask, s.t2_clean, s.bias_t2):  # all on the T2w grid
        assert img.shape == t2.shape and np.allclose(img.affine, t2.affine)
    assert s.dseg.get_data_dtype() == np.uint8 and s.brain_mask.get_data_dtype() == np.uint8
    assert set(np.unique(data(s.dseg))) <= {0, 1, 2}
    assert set(np.unique(data(s.brain_mask))) == {0, 1}
    # SWI and QSM share a grid, different from the T2w grid (resolution and orientation)
    assert swi.shape == qsm.shape and np.allclose(swi.affine, qsm.affine)
    assert swi.shape != t2.shape
    z_t2, z_swi = np.array(t2.header.get_zooms()), np.array(swi.header.get_zooms())
    assert z_t2[2] > 1.5 * z_t2[0]  # thick T2w slices
    assert not np.allclose(z_t2, z_swi)
    # swi_to_t2 is a rigid motion of a few degrees / mm, not the identity
    x = s.swi_to_t2
    assert x.shape == (4, 4) and np.allclose(x[:3, :3] @ x[:3, :3].T, np.eye(3), atol=1e-9)
    angle = np.rad2deg(np.arccos(np.clip((np.trace(x[:3, :3]) - 1) / 2, -1, 1)))
    assert 0.2 < angle < 10 and 0 < np.linalg.norm(x[:3, 3]) < 12
    # the bias field is smooth, multiplicative and not flat
    bias = data(s.bias_t2)
    assert 0.4 < bias.min() < 1.0 < bias.max() < 2.5
    assert np.abs(np.diff(bias, axis=0)).max() < 0.05


def test_lesions_table_schema_counts_and_no_overlap(sim_all_kinds):
    les = sim_all_kinds.lesions
    for col in ("kind", "x_mm", "y_mm", "z_mm", "radius_mm", "chi_ppm"):
        assert col in les.columns
    assert les["kind"].value_counts().to_dict() == {k: v[0] for k, v in ALL_KINDS.items()}
    assert les["region"].isin(["lobar-frontal", "lobar-parietal", "lobar-temporal", "lobar-occipital",
                               "lobar-insula", "deep", "infratentorial"]).all()
    assert (_by_kind(sim_all_kinds, "iron")["region"] == "deep").all()  # iron sits in the basal ganglia
    cmb = _by_kind(sim_all_kinds, "cmb")
    assert cmb["radius_mm"].between(0.5 * 2, 2.5 * 2 * 1.3).all()   # small preset scales lesions x2
    assert cmb["chi_ppm"].between(0.3, 1.5).all()
    assert _by_kind(sim_all_kinds, "calcification")["chi_ppm"].between(-0.6, -0.1).all()
    assert _by_kind(sim_all_kinds, "vein")["chi_ppm"].between(0.2, 0.45).all()
    assert _by_kind(sim_all_kinds, "iron")["chi_excess_ppm"].between(0.05, 0.25).all()
    # centres of any two lesions are further apart than their radii
    xyz = les[["x_mm", "y_mm", "z_mm"]].to_numpy()
    r = les["radius_mm"].to_numpy()
    d = np.linalg.norm(xyz[:, None] - xyz[None], axis=-1)
    iu = np.triu_indices(len(les), 1)
    assert np.all(d[iu] > (r[:, None] + r[None])[iu])


def test_truth_dseg_labels_every_cmb_and_iron_and_nothing_else(sim_all_kinds):
    s = sim_all_kinds
    dseg = data(s.dseg)
    for _, row in s.lesions.iterrows():
        label = sample(s.dseg, t2_point(row), order=0)
        expected = {"cmb": 1, "iron": 2}.get(row.kind, 0)
        if expected:
            assert label == expected, row.to_dict()
            assert row.n_voxels_t2 >= 1
        elif row.kind == "calcification":
            assert label == 0
    import cc3d

    n_comp = {lab: cc3d.connected_components((dseg == lab).astype(np.uint8), connectivity=26).max()
              for lab in (1, 2)}
    assert n_comp[1] == ALL_KINDS["cmb"][0] and n_comp[2] == ALL_KINDS["iron"][0]


def test_truth_centres_are_dark_on_swi_and_hypointense_on_t2w(sim_all_kinds):
    s = sim_all_kinds
    swi_ratio, t2_ratio = [], []
    # (calcifications are left out: one in the bright CSF of a ventricle can stay brighter than the
    # white matter around it on these coarse voxels; their sign on QSM is tested below)
    for _, row in s.lesions[s.lesions.kind.isin(["cmb", "iron"])].iterrows():
        p_swi, p_t2, r = swi_point(s, row), t2_point(row), row.radius_mm
        swi_ratio.append(sample(s.swi, p_swi) / ring_median(s.swi, p_swi, 2 * r + 4, 2 * r + 10))
        t2_ratio.append(sample(s.t2_clean, p_t2)
                        / ring_median(s.t2_clean, p_t2, r + 3, r + 9, within=s.brain_mask))
    swi_ratio, t2_ratio = np.array(swi_ratio), np.array(t2_ratio)
    assert np.all(swi_ratio < 0.95), swi_ratio
    assert np.median(swi_ratio) < 0.6
    assert np.all(t2_ratio < 1.0), t2_ratio
    assert np.median(t2_ratio) < 0.85
    # the noisy, biased T2w still shows the microbleeds darker than their surroundings on average
    cmb = _by_kind(s, "cmb")
    noisy = [sample(s.t2, t2_point(r)) / ring_median(s.t2, t2_point(r), r.radius_mm + 3, r.radius_mm + 9,
                                                    within=s.brain_mask) for _, r in cmb.iterrows()]
    assert np.median(noisy) < 0.9


def test_qsm_is_positive_at_microbleeds_and_iron_and_negative_at_calcifications(sim_all_kinds):
    s = sim_all_kinds
    qsm = data(s.qsm)
    wm_like = np.median(qsm[qsm != 0])
    inside = 0
    for _, row in s.lesions[s.lesions.kind != "vein"].iterrows():
        p = swi_point(s, row)
        if sample(s.qsm, p, order=0) == 0:  # peripheral lesion eroded from the QSM mask
            continue
        inside += 1
        value = sample(s.qsm, p)
        if row.kind in ("cmb", "iron"):
            assert value > max(wm_like, 0) + 0.03, row.to_dict()
        else:
            assert value < min(wm_like, 0) - 0.02, row.to_dict()
    assert inside >= 0.8 * (len(s.lesions) - ALL_KINDS["vein"][0])
    # the inversion underestimates: no lesion reaches its true susceptibility
    for _, row in _by_kind(s, "cmb").iterrows():
        assert sample(s.qsm, swi_point(s, row)) < row.chi_ppm


def test_microbleeds_bloom_on_swi_beyond_their_qsm_extent(sim_all_kinds):
    s = sim_all_kinds
    voxel = float(np.prod(s.swi.header.get_zooms()[:3]))
    ratios = []
    for _, row in _by_kind(s, "cmb").iterrows():
        p, r = swi_point(s, row), row.radius_mm
        vals, dist, _ = neighbourhood(s.swi, p, 3 * r + 6)
        background = np.median(vals[dist > 2 * r + 3])
        dark = np.count_nonzero((vals < 0.5 * background) & (dist < 2 * r + 3)) * voxel
        q, qd, _ = neighbourhood(s.qsm, p, 3 * r + 6)
        q_bg = np.median(q[qd > 2 * r + 3])
        half = q_bg + 0.5 * (q[qd < r + 2].max() - q_bg)  # half maximum above the surroundings
        bright = np.count_nonzero((q > half) & (qd < 2 * r + 3)) * voxel
        ratios.append(dark / max(bright, voxel))
        if row.chi_ppm * r ** 3 > 8:  # strong microbleeds bloom beyond their true volume too
            assert dark > 4 / 3 * np.pi * r ** 3
    assert np.median(ratios) > 2.0, ratios


@pytest.mark.slow  # two more simulations
def test_same_seed_same_images_and_different_seed_different_images(sim_all_kinds):
    again = simulate_subject(SEED_ALL_KINDS, size="small", lesion_counts=ALL_KINDS)
    for key in ("t2", "swi", "qsm", "dseg", "brain_mask"):
        a, b = getattr(sim_all_kinds, key), getattr(again, key)
        assert np.array_equal(data(a), data(b)) and np.array_equal(a.affine, b.affine), key
    assert sim_all_kinds.lesions.equals(again.lesions)
    assert np.array_equal(sim_all_kinds.swi_to_t2, again.swi_to_t2)
    other = simulate_subject(SEED_ALL_KINDS + 1, size="small", lesion_counts=ALL_KINDS)
    assert not np.allclose(other.swi_to_t2, again.swi_to_t2)
    assert other.params["swi_echo_time_s"] != again.params["swi_echo_time_s"]
    assert not other.lesions[["x_mm", "y_mm", "z_mm"]].equals(again.lesions[["x_mm", "y_mm", "z_mm"]])
    assert other.t2.shape != again.t2.shape or not np.allclose(data(other.t2), data(again.t2))


def test_params_record_the_randomised_acquisition(sim_all_kinds):
    p = sim_all_kinds.params
    for key in ("b0_tesla", "swi_echo_time_s", "t2_echo_time_s", "t2_voxel_mm", "swi_voxel_mm",
                "b0_direction_voxel", "motion_rotation_deg", "motion_translation_mm", "t2_snr_wm",
                "swi_snr_wm", "qsm_method", "qsm_regularisation", "lesion_counts", "tissue_chi_ppm", "nucleus_chi_ppm"):
        assert key in p, key
    assert p["b0_tesla"] in (1.5, 3.0)
    assert np.linalg.norm(p["b0_direction_voxel"]) == pytest.approx(1.0)
    assert 0 < p["b0_tilt_deg"] < 12
    assert np.allclose(np.array(sim_all_kinds.t2.header.get_zooms()), p["t2_voxel_mm"], atol=1e-4)
    assert 0.09 < p["nucleus_chi_ppm"]["globus-pallidus-R"] < 0.2
    import json
    json.dumps(p)  # serialisable for sidecars


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="size"):
        simulate_subject(1, size="huge")
    with pytest.raises(ValueError, match="lesion kind"):
        simulate_subject(1, size="small", lesion_counts={"tumour": 3})
    with pytest.raises(ValueError, match="range"):
        simulate_subject(1, size="small", lesion_counts={"cmb": (5, 2)})
    with pytest.raises(ValueError, match="lesion range"):
        simulate_subject(1, size="small", lesion_ranges={"cmb_size": (1, 2)})
    with pytest.raises(ValueError, match="bad range"):
        simulate_subject(1, size="small", lesion_ranges={"cmb_chi_ppm": (1.5, 0.3)})


def test_many_lesions_for_training_are_all_placed_apart_and_labelled():
    import cc3d

    asked = {"cmb": 30, "iron": 4, "calcification": 3, "vein": 2}
    s = simulate_subject(12, size="small", lesion_counts=asked, lesion_ranges={"cmb_chi_ppm": (1.0, 1.2)})
    assert s.params["lesion_counts"] == asked
    les = s.lesions
    assert les.loc[les.kind == "cmb", "chi_ppm"].between(1.0, 1.2).all()  # physical ranges can be overridden
    groups = les.loc[les.kind == "cmb", "region"].map(lambda r: "lobar" if r.startswith("lobar") else r)
    assert groups.nunique() >= 2  # microbleeds are spread over lobar / deep / infratentorial sites
    dseg = data(s.dseg)
    n = {lab: cc3d.connected_components((dseg == lab).astype(np.uint8), connectivity=6).max() for lab in (1, 2)}
    assert n[1] == 30 and n[2] == 4  # every labelled lesion is its own component
    assert (les.loc[les.kind.isin(["cmb", "iron"]), "n_voxels_t2"] >= 1).all()
