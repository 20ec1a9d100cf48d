"""One full-size simulated subject: the physics checks at acquisition resolution (slow)."""

from __future__ import annotations

import numpy as np
import pytest

from helpers.simulate import data, neighbourhood, ring_median, sample, swi_point, t2_point

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def full_subject():
    from deepmir_tasks.simulate import simulate_subject

    return simulate_subject(21, size="full", lesion_counts={"cmb": (8, 8), "iron": (2, 2),
                                                            "calcification": (2, 2), "vein": (4, 4)})


def test_full_size_grids_follow_the_protocol_ranges(full_subject):
    p = full_subject.params
    t2v, swiv = np.array(p["t2_voxel_mm"]), np.array(p["swi_voxel_mm"])
    assert np.all((t2v[:2] >= 0.8) & (t2v[:2] <= 1.0)) and 2.5 <= t2v[2] <= 4.0
    assert np.all((swiv[:2] >= 0.5) & (swiv[:2] <= 0.9)) and 1.0 <= swiv[2] <= 2.0
    # the T2w field of view holds the whole head (the brain does not touch the border)
    mask = data(full_subject.brain_mask)
    assert mask.sum() * np.prod(t2v) > 0.9e6  # > 0.9 litre of brain
    for ax in range(3):
        assert not np.take(mask, [0, -1], axis=ax).any()
    # the skull and scalp surround the brain: bright scalp outside a dark bone ring
    t2 = data(full_subject.t2_clean)
    head = t2 > 0.2 * np.percentile(t2[mask > 0], 50)
    assert head.sum() > 1.3 * mask.sum()


def test_full_size_lesions_in_all_three_images(full_subject):
    s = full_subject
    voxel = float(np.prod(s.swi.header.get_zooms()[:3]))
    ratios, checked = [], 0
    for _, row in s.lesions.iterrows():
        p_swi, p_t2, r = swi_point(s, row), t2_point(row), row.radius_mm
        q = sample(s.qsm, p_swi)
        inside_qsm = sample(s.qsm, p_swi, order=0) != 0
        if row.kind in ("cmb", "iron"):
            assert sample(s.dseg, p_t2, order=0) == {"cmb": 1, "iron": 2}[row.kind]
            assert sample(s.t2_clean, p_t2) < ring_median(s.t2_clean, p_t2, r + 2, r + 7, within=s.brain_mask)
            assert not inside_qsm or q > 0.05, row.to_dict()
        if row.kind == "calcification":
            assert not inside_qsm or q < -0.05, row.to_dict()
        if row.kind != "vein":  # iron is a modest excess; a calcification may sit in bright CSF
            limit = {"cmb": 0.8, "iron": 0.95, "calcification": 0.9}[row.kind]
            assert sample(s.swi, p_swi) < limit * ring_median(s.swi, p_swi, 2 * r + 3, 2 * r + 8), row.to_dict()
        if row.kind == "cmb":
            vals, dist, _ = neighbourhood(s.swi, p_swi, 3 * r + 6)
            bg = np.median(vals[dist > 2 * r + 3])
            dark = np.count_nonzero((vals < 0.5 * bg) & (dist < 2 * r + 3)) * voxel
            qv, qd, _ = neighbourhood(s.qsm, p_swi, 3 * r + 6)
            q_bg = np.median(qv[qd > 2 * r + 3])
            half = q_bg + 0.5 * (qv[qd < r + 1].max() - q_bg)  # half maximum above the surroundings
            bright = np.count_nonzero((qv > half) & (qd < 2 * r + 3)) * voxel
            ratios.append(dark / max(bright, voxel))
            noise = np.std(qv[qd > 2 * r + 3])
            if qv[qd < r + 1].max() - q_bg > 5 * noise:  # visible on QSM (not lost in its noise)
                checked += 1
                assert dark >= bright, row.to_dict()
                if row.chi_ppm * r ** 3 > 0.5:  # all but the faintest, smallest microbleeds
                    assert dark > bright, row.to_dict()
    assert np.median(ratios) > 2.0, ratios
    assert checked >= len(ratios) / 2


def test_full_size_head_has_csf_bone_and_scalp_around_the_brain(full_subject):
    """Brain extraction has real work: a dark bone ring between the brain and a bright scalp."""
    from scipy import ndimage as ndi

    s = full_subject
    shell = s.params["shell_mm"]
    mask = data(s.brain_mask) > 0
    t2 = data(s.t2_clean)
    dist = ndi.distance_transform_edt(~mask, sampling=s.t2.header.get_zooms()[:3])
    brain = np.median(t2[mask])
    c, b, sc = shell["csf_mm"], shell["bone_mm"], shell["scalp_mm"]
    bone = np.median(t2[(dist > c + 1.5) & (dist < c + b - 1.5)])
    scalp = np.median(t2[(dist > c + b + 1.0) & (dist < c + b + sc - 1.0)])
    air = np.median(t2[dist > c + b + sc + 4.0])
    assert bone < 0.4 * brain
    assert scalp > 2 * bone and scalp > 0.5 * brain
    assert air < 0.1 * brain
    # the T2w is the clean image times the bias field plus Rician noise
    ratio = data(s.t2)[mask] / (t2[mask] * data(s.bias_t2)[mask])
    assert 0.95 < np.median(ratio) < 1.1
