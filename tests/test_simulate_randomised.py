"""The simulator's ``randomised`` profile: each factor's draws stay in their documented range
(sampling functions, many seeds) and each factor shows in the images or the truth (pairs of small
subjects that differ in one pinned factor only). The default profile is unchanged."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from deepmir_tasks.simulate import simulate_subject, variability
from deepmir_tasks.simulate.variability import FACTORS, NUCLEUS_LIFESPAN, draw_factors, nucleus_chi_at_age
from helpers.simulate import data, neighbourhood, sample, swi_point, to_swi

SEEDS = range(300)

#: everything but the factor under test held still; no lesions, so that only anatomy shows
BASE = {"age_years": 25.0, "b0_tesla": 1.5, "swi_echo_time_s": 0.02, "t2_variant": "TSE",
        "swi_minip_mm": 0.0, "qsm_residual_background": 0.0, "qsm_method": "TKD", "qsm_regularisation": 0.2,
        "swi_snr_wm": 60.0, "t2_snr_wm": 50.0, "swi_bias_strength": 0.1, "t2_bias_strength": 0.1,
        "t2_slice_mm": 2.0, "swi_slice_mm": 1.5}
NO_LESIONS = {"cmb": 0, "iron": 0, "calcification": 0, "vein": 0}


@pytest.fixture(scope="module")
def draws():
    return [draw_factors(np.random.default_rng(s)) for s in SEEDS]


_CACHE: dict = {}


def subject(tag, counts=None, **pins):
    """A small randomised subject (seed 3) with ``BASE`` and ``pins``; cached per test module."""
    key = (tag, repr(sorted(pins.items())), repr(counts))
    if key not in _CACHE:
        _CACHE[key] = simulate_subject(3, size="small", profile="randomised", factors=dict(BASE, **pins),
                                       lesion_counts=NO_LESIONS if counts is None else counts)
    return _CACHE[key]


# ---- the default profile is the original simulator -------------------------------------------

#: sha256 (first 16 hex) of seed 3, size small, default profile, of the images whose values are
#: integers and of the lesion table: computed with the code before the randomised profile was
#: added (commit d4b883d)
DEFAULT_SEED3 = {"dseg": "d1077ca50153ebfb", "brain_mask": "d4e4ce20aa745c4e", "lesions": "94bc9bc7f303d2b4"}

#: the float images (T2w, SWI, QSM) as means of 4-voxel blocks, saved with the code whose images were
#: byte-identical to d4b883d's on the CI machine (their sha256: t2 5ff15671f9473aae, swi
#: eb1e4c4e3892a0b3, qsm 51870b6b50f847a9). Floats are compared within 1e-4 of each image's
#: maximum, not bit for bit: FFTs and sums round differently on CPUs with other vector units
#: (AVX-512 or AVX2), though the draws and the physics are the same.
DEFAULT_SEED3_BLOCKS = Path(__file__).parent / "data" / "default_seed3_blocks.npz"


def block_means(a, n: int = 4):
    """Means of ``n``-voxel cubes of ``a`` (cropped to whole blocks; the simulator's ``block_mean``)."""
    from deepmir_tasks.simulate.physics import block_mean

    x, y, z = (d // n * n for d in a.shape)
    return block_mean(np.asarray(a, np.float64)[:x, :y, :z], (n, n, n))


def test_default_profile_same_as_before():
    s = simulate_subject(3, size="small")
    got = {}
    for k in ("dseg", "brain_mask"):
        img = getattr(s, k)
        a = np.ascontiguousarray(np.asarray(img.dataobj))
        got[k] = hashlib.sha256(a.tobytes() + np.asarray(img.affine).tobytes()).hexdigest()[:16]
    got["lesions"] = hashlib.sha256(s.lesions.to_csv().encode()).hexdigest()[:16]
    assert got == DEFAULT_SEED3
    ref = np.load(DEFAULT_SEED3_BLOCKS)
    for k in ("t2", "swi", "qsm"):
        img = getattr(s, k)
        a = np.asarray(img.dataobj)
        np.testing.assert_array_equal(img.affine, ref[f"{k}_affine"], err_msg=k)
        assert a.shape == tuple(ref[f"{k}_shape"]), k
        np.testing.assert_allclose(block_means(a), ref[k], rtol=0, atol=1e-4 * float(np.abs(ref[k]).max()),
                                   err_msg=k)
    assert "profile" not in s.params and "factors" not in s.params


def test_bad_profile_and_pins_are_refused():
    with pytest.raises(ValueError, match="profile"):
        simulate_subject(1, size="small", profile="wild")
    with pytest.raises(ValueError, match="randomised"):
        simulate_subject(1, size="small", factors={"age_years": 50})
    with pytest.raises(ValueError, match="unknown factor"):
        draw_factors(np.random.default_rng(0), {"age": 50})


# ---- sampling: every draw in its documented range --------------------------------------------

def test_scalar_factors_stay_in_documented_ranges(draws):
    for f in draws:
        for name, fac in FACTORS.items():
            if name in f and not (name == "swi_minip_mm" and f[name] == 0.0):
                assert fac.low <= f[name] <= fac.high, (name, f[name])
        assert f["swi_phase_mask_power"] in (2, 3, 4, 5)
        lo, hi = variability.SWI_TE_S[f["b0_tesla"]]
        assert lo <= f["swi_echo_time_s"] <= hi and f["swi_repetition_time_s"] > f["swi_echo_time_s"]
        reg = FACTORS["tkd_threshold" if f["qsm_method"] == "TKD" else "tikhonov_lambda"]
        assert reg.low <= f["qsm_regularisation"] <= reg.high
        if f["b0_tesla"] < 5:
            assert f["swi_bias_strength"] <= 0.6
        for mod in ("t2", "swi"):
            frac, shift = f[f"{mod}_motion_line_fraction"], f[f"{mod}_motion_shift_mm"]
            assert (frac, shift) == (0.0, 0.0) or (FACTORS["motion_line_fraction"].low <= frac
                                                   <= FACTORS["motion_line_fraction"].high
                                                   and FACTORS["motion_shift_mm"].low <= shift
                                                   <= FACTORS["motion_shift_mm"].high)
    # every discrete choice is taken, each range is covered (not one value)
    assert {f["b0_tesla"] for f in draws} == {1.5, 3.0, 7.0}
    assert {f["t2_variant"] for f in draws} == {"TSE", "FLAIR-like"}
    assert {f["qsm_method"] for f in draws} == {"TKD", "Tikhonov"}
    assert {f["swi_phase_mask_power"] for f in draws} == {2, 3, 4, 5}
    assert 0.2 < np.mean([f["swi_minip_mm"] > 0 for f in draws]) < 0.6
    assert 0.15 < np.mean([f["t2_motion_line_fraction"] > 0 for f in draws]) < 0.45
    for name in ("age_years", "t2_slice_mm", "swi_inplane_mm", "swi_slice_mm", "swi_snr_wm"):
        v = np.array([f[name] for f in draws])
        span = FACTORS[name].high - FACTORS[name].low
        assert v.max() - v.min() > 0.9 * span, name


def test_nuclear_susceptibility_follows_age_with_spread(draws):
    assert nucleus_chi_at_age("globus-pallidus", 20) == pytest.approx(0.08)
    assert 0.20 <= nucleus_chi_at_age("globus-pallidus", 85) <= 0.25
    assert nucleus_chi_at_age("putamen", 20) == pytest.approx(0.03)
    assert nucleus_chi_at_age("putamen", 90) == pytest.approx(0.10)
    for nuc in NUCLEUS_LIFESPAN:  # never falls with age
        assert np.all(np.diff([nucleus_chi_at_age(nuc, a) for a in range(20, 91, 5)]) >= 0)
    sd = max(variability.NUCLEUS_SPREAD_SD)
    bound = np.exp(2 * 2.5 * sd) * 1.03
    age = np.array([f["age_years"] for f in draws])
    gp = np.array([f["nucleus_chi_ppm"]["globus-pallidus-R"] for f in draws])
    for f in draws:
        for name, chi in f["nucleus_chi_ppm"].items():
            mean = nucleus_chi_at_age(name.rsplit("-", 1)[0], f["age_years"])
            assert 1 / bound <= chi / mean <= bound
    assert np.corrcoef(age, gp)[0, 1] > 0.7
    spread = gp / [nucleus_chi_at_age("globus-pallidus", a) for a in age]
    assert 0.08 < np.std(spread) < 0.25     # between-subject spread, as documented
    old = [draw_factors(np.random.default_rng(s), {"age_years": 85.0}) for s in range(20)]
    young = [draw_factors(np.random.default_rng(s), {"age_years": 25.0}) for s in range(20)]
    assert all(o["nucleus_chi_ppm"]["globus-pallidus-L"] > y["nucleus_chi_ppm"]["globus-pallidus-L"]
               for o, y in zip(old, young))


def test_atrophy_and_calcification_grow_with_age(draws):
    old = [f for f in draws if f["age_years"] > 70]
    young = [f for f in draws if f["age_years"] < 40]
    for key in ("ventricle_expansion", "csf_shell_mm"):
        assert np.mean([f[key] for f in old]) > np.mean([f[key] for f in young]) + 0.05
    assert np.mean([len(f["calcification_sites"]) for f in old]) > np.mean([len(f["calcification_sites"])
                                                                           for f in young])
    sites = {s for f in draws for s in f["calcification_sites"]}
    assert sites == set(variability.CALCIFICATION_PREVALENCE)


def test_vein_susceptibility_follows_oxygenation(draws):
    for f in draws:
        assert f["vein_chi_ppm"] == pytest.approx(f["haematocrit"] * 3.39 * (1 - f["vein_oxygenation"]))
        lo = FACTORS["haematocrit"].low * 3.39 * (1 - FACTORS["vein_oxygenation"].high)
        hi = FACTORS["haematocrit"].high * 3.39 * (1 - FACTORS["vein_oxygenation"].low)
        assert lo <= f["vein_chi_ppm"] <= hi
        ranges = variability.lesion_ranges(f)
        assert ranges["vein_chi_ppm"][0] <= f["vein_chi_ppm"] <= ranges["vein_chi_ppm"][1]
        for key in ("cmb_radius_mm", "cmb_chi_ppm", "iron_excess_ppm", "calcification_chi_ppm"):
            assert ranges[key] == (FACTORS[key].low, FACTORS[key].high)
    assert FACTORS["calcification_chi_ppm"].high < 0


def test_voxel_sizes_native_and_test_preset(draws):
    from deepmir_tasks.simulate.subject import SIZES

    for f in draws[:50]:
        t2, swi = variability.voxel_sizes(f, SIZES["full"], native=True)
        assert t2.tolist() == [f["t2_inplane_mm"]] * 2 + [f["t2_slice_mm"]]
        assert swi.tolist() == [f["swi_inplane_mm"]] * 2 + [f["swi_slice_mm"]]
        t2s, swis = variability.voxel_sizes(f, SIZES["small"], native=False)
        assert SIZES["small"]["t2_slice"][0] <= t2s[2] <= SIZES["small"]["t2_slice"][1]


# ---- placement: every CMB site puts microbleeds where it says ---------------------------------

def _anatomy(heterogeneity=None, texture=None, vox=2.0):
    from deepmir_tasks.simulate.head import build_anatomy, draw_head, draw_tissue

    rng = np.random.default_rng(4)
    head, tissue = draw_head(rng), draw_tissue(rng, 3.0)
    if heterogeneity is not None:
        tissue["nucleus_heterogeneity"] = heterogeneity
    if texture is not None:
        tissue["nucleus_texture"] = texture
    return build_anatomy(rng, head, tissue, vox, 0.02)


@pytest.fixture(scope="module")
def anat():
    return _anatomy()


def test_nuclei_vary_within_when_heterogeneous(anat):
    from deepmir_tasks.simulate.anatomy import NUCLEI_LABELS

    varied = _anatomy(0.3)
    for name in ("globus-pallidus-R", "putamen-L"):
        core = (anat["nucleus"] == NUCLEI_LABELS.index(name) + 1) & (anat["nucleus_w"] > 0.95)
        flat, het = anat["chi"][core], varied["chi"][core]
        assert np.std(flat) < 0.002 < np.std(het)                  # uniform before, graded after
        assert abs(np.mean(het) - np.mean(flat)) < 0.3 * np.mean(flat)   # same level on average
        assert np.all(het > 0.6 * np.mean(flat))


# ---- randomised2: fine iron texture within normal nuclei (hard negatives for iron deposits) -----

def test_randomised2_draws_the_randomised_factors_then_the_texture():
    for seed in range(50):
        v1 = draw_factors(np.random.default_rng(seed))
        v2 = draw_factors(np.random.default_rng(seed), version=2)
        assert {k: v2[k] for k in v1} == v1                      # the same subject ...
        for name in variability.V2_FACTORS:                       # ... plus the texture, in range
            assert FACTORS[name].low <= v2[name] <= FACTORS[name].high, name
    tex = np.array([draw_factors(np.random.default_rng(seed), version=2)["nucleus_texture"] for seed in SEEDS])
    assert np.ptp(tex) > 0.9 * (FACTORS["nucleus_texture"].high - FACTORS["nucleus_texture"].low)
    with pytest.raises(ValueError, match="unknown factor"):      # not a factor of version 1
        draw_factors(np.random.default_rng(0), {"nucleus_texture": 0.1})


def test_nucleus_texture_makes_fine_iron_patches_that_darken_t2w():
    from deepmir_tasks.simulate.anatomy import NUCLEI_LABELS

    flat, tex = _anatomy(vox=1.0), _anatomy(texture=(0.2, 1.5, 7), vox=1.0)
    for name in ("globus-pallidus-R", "putamen-L"):
        core = (flat["nucleus"] == NUCLEI_LABELS.index(name) + 1) & (flat["nucleus_w"] > 0.95)
        level = float(np.mean(flat["chi"][core]))
        assert np.std(flat["chi"][core]) < 0.02 * level
        assert 0.12 * level < np.std(tex["chi"][core]) < 0.3 * level          # patchy
        assert abs(np.mean(tex["chi"][core]) - level) < 0.2 * level            # about the same level
    gp = (flat["nucleus"] == NUCLEI_LABELS.index("globus-pallidus-R") + 1) & (flat["nucleus_w"] > 0.95)
    assert np.corrcoef(tex["chi"][gp], tex["t2"][gp])[0, 1] < -0.5             # its iron darkens T2w
    away = flat["nucleus"] == 0
    assert np.array_equal(flat["chi"][away], tex["chi"][away])


def test_randomised2_subject_is_the_randomised_one_with_textured_nuclei():
    pins = dict(BASE, age_years=80.0)
    base = simulate_subject(3, size="small", profile="randomised", factors=pins, lesion_counts=NO_LESIONS)
    same = simulate_subject(3, size="small", profile="randomised2", factors=dict(pins, nucleus_texture=0.0),
                            lesion_counts=NO_LESIONS)
    tex = simulate_subject(3, size="small", profile="randomised2", factors=dict(pins, nucleus_texture=0.2),
                           lesion_counts=NO_LESIONS)
    assert np.array_equal(data(base.qsm), data(same.qsm)) and np.array_equal(data(base.t2), data(same.t2))
    assert tex.params["profile"] == "randomised2" and tex.params["factors"]["nucleus_texture"] == 0.2
    changed = np.abs(data(tex.qsm) - data(base.qsm)) > 0.01
    assert changed.any()
    # only in and around the deep nuclei (their centroids, in the T2w world)
    where = np.argwhere(changed) @ tex.qsm.affine[:3, :3].T + tex.qsm.affine[:3, 3]
    centres = to_swi(tex, list(tex.params["nucleus_centroids_t2_mm"].values()))
    near = np.linalg.norm(where[:, None] - centres[None], axis=2).min(1) < 25.0
    assert near.mean() > 0.95


@pytest.mark.parametrize("site", variability.CMB_SITES)
def test_each_cmb_site_places_microbleeds_there(anat, site):
    from deepmir_tasks.simulate.lesions import Placement, place_lesions

    pl = Placement(order=("vein", "cmb"), cmb_sites=(site,), cmb_site_alpha=(1.0,))
    les = place_lesions(np.random.default_rng(1), anat, {"cmb": 6, "vein": 6}, t2_affine=np.diag([3.0, 3.0, 3.0, 1.0]),
                        t2_shape=(100, 100, 100), ranges={"cmb_radius_mm": (1.0, 2.0)}, placement=pl)
    cmbs = [x for x in les if x.kind == "cmb"]
    veins = [x for x in les if x.kind == "vein"]
    assert len(cmbs) >= 4 and all(x.site == site for x in cmbs)
    inv = np.linalg.inv(anat["affine"])
    for c in cmbs:
        ijk = tuple(np.rint(inv[:3, :3] @ c.centre + inv[:3, 3]).astype(int))
        assert anat["sdist"][ijk] < 0                              # inside the brain
        if site == "juxtacortical":
            assert anat["sdist"][ijk] > -11 and 1 <= anat["region"][ijk] <= 5
        if site == "infratentorial":
            assert anat["region"][ijk] == 7
        if site == "intranuclear":
            assert anat["nucleus"][ijk] > 0
        if site == "perivenous":   # next to a vein: within a few mm of its wall
            gap = min(v.shape.distance(c.centre[None])[0] - v.shape.radius for v in veins)
            assert gap < c.shape.bound_radius + 2.0 + 2.5


# ---- effects in the images and the truth (pairs differing in one pinned factor) ---------------

def _mean_near(img, xyz, r_mm):
    vals, _, _ = neighbourhood(img, xyz, r_mm)
    return float(vals.mean())


def _gp_qsm(s):
    t2_to_swi = np.linalg.inv(s.swi_to_t2)
    out = []
    for side in ("R", "L"):
        c = np.r_[s.params["nucleus_centroids_t2_mm"][f"globus-pallidus-{side}"], 1.0]
        out.append(_mean_near(s.qsm, (t2_to_swi @ c)[:3], 4.0))
    return float(np.mean(out))


def test_older_brain_has_higher_pallidal_qsm_and_larger_ventricles():
    young, old = subject("base"), subject("old", age_years=85.0)
    gp_young = young.params["nucleus_chi_ppm"]["globus-pallidus-R"]
    assert old.params["nucleus_chi_ppm"]["globus-pallidus-R"] > 2 * gp_young
    assert _gp_qsm(old) > _gp_qsm(young) + 0.03
    assert old.params["ventricle_expansion"] > young.params["ventricle_expansion"] + 0.05

    def csf_share(s):  # bright (CSF) voxels inside the brain mask of the clean T2w
        t2, mask = data(s.t2_clean) / s.params["t2_gain"], data(s.brain_mask) > 0
        return float((t2[mask] > 0.8).mean())
    assert csf_share(old) > csf_share(young)


def test_field_strength_changes_swi_contrast():
    low, high = subject("base"), subject("7T", b0_tesla=7.0)
    assert high.params["phase_rad_per_ppm"] == pytest.approx(low.params["phase_rad_per_ppm"] * 7.0 / 1.5)

    def dark_share(s):  # SWI voxels darker than half the median inside the QSM mask
        swi, mask = data(s.swi), data(s.qsm) != 0
        return float((swi[mask] < 0.5 * np.median(swi[mask])).mean())
    assert dark_share(high) > 1.5 * dark_share(low)


def test_header_slice_thickness_is_the_drawn_one():
    thin, thick = subject("base"), subject("thick", t2_slice_mm=6.0, swi_slice_mm=3.0)
    for s in (thin, thick):
        assert np.allclose(s.t2.header.get_zooms(), s.params["t2_voxel_mm"], atol=1e-4)
        assert np.allclose(s.swi.header.get_zooms(), s.params["swi_voxel_mm"], atol=1e-4)
        assert np.allclose(s.qsm.header.get_zooms(), s.params["swi_voxel_mm"], atol=1e-4)
    assert thick.t2.header.get_zooms()[2] > thin.t2.header.get_zooms()[2] + 1.0
    assert thick.swi.header.get_zooms()[2] > thin.swi.header.get_zooms()[2] + 0.5


def test_minip_darkens_swi_and_flair_darkens_csf():
    base, minip = subject("base"), subject("minip", swi_minip_mm=12.0)
    assert minip.params["swi_minip_slices"] >= 2 and base.params["swi_minip_slices"] == 1
    a, b = data(base.swi), data(minip.swi)
    assert np.all(b <= a + 1e-3) and (b < 0.9 * a).mean() > 0.05
    flair = subject("flair", t2_variant="FLAIR-like")
    ventricles = (data(base.t2_clean) / base.params["t2_gain"] > 0.8) & (data(base.brain_mask) > 0)
    wm_like = (data(base.t2_clean) / base.params["t2_gain"] < 0.45) & (data(base.brain_mask) > 0)
    f = data(flair.t2_clean)
    assert f[ventricles].mean() < f[wm_like].mean()     # CSF dark on FLAIR-like, bright on TSE
    assert data(base.t2_clean)[ventricles].mean() > 1.5 * data(base.t2_clean)[wm_like].mean()


def test_motion_rings_into_the_background():
    still, moved = subject("base"), subject("motion", t2_motion_line_fraction=0.2, t2_motion_shift_mm=3.0,
                                              swi_motion_line_fraction=0.2, swi_motion_shift_mm=3.0)
    air = data(still.t2_clean) < 1e-3 * data(still.t2_clean).max()     # outside the head
    assert air.mean() > 0.05
    assert data(moved.t2)[air].mean() > 1.5 * data(still.t2)[air].mean()
    assert np.abs(data(moved.swi) - data(still.swi)).mean() > 0.01 * data(still.swi).mean()


def test_residual_background_field_shows_in_qsm():
    clean, residual = subject("base"), subject("residual", qsm_residual_background=0.08)
    mask = data(clean.qsm) != 0
    diff = (data(residual.qsm) - data(clean.qsm))[mask]
    assert np.abs(diff).mean() > 0.005
    assert residual.params["factors"]["qsm_residual_background"] == 0.08


LESIONS = {"cmb": 6, "iron": 4, "calcification": 4, "vein": 6}


def test_iron_deposits_are_focal_excess_over_the_local_nuclear_level():
    with_iron = subject("lesions", LESIONS, age_years=80.0, swi_snr_wm=60.0)
    without = subject("no-iron", dict(LESIONS, iron=0), age_years=80.0, swi_snr_wm=60.0)
    les = with_iron.lesions
    iron = les[les["kind"] == "iron"]
    assert len(iron) >= 3
    sites = with_iron.params["lesion_sites"]
    for row in iron.itertuples():
        nucleus = sites[row.lesion_id - 1]
        level = with_iron.params["nucleus_chi_ppm"][nucleus]
        assert row.chi_excess_ppm > 0
        assert row.chi_ppm == pytest.approx(level + row.chi_excess_ppm, abs=2e-4)
    # in the image: QSM at the deposit exceeds the same point's QSM without the deposit
    gain = [sample(with_iron.qsm, swi_point(with_iron, r)) - sample(without.qsm, swi_point(with_iron, r))
            for r in iron.itertuples()]
    assert np.median(gain) > 0.02 and np.mean(np.array(gain) > 0) >= 0.75
    assert {sites[i - 1] for i in iron["lesion_id"]} <= set(with_iron.params["nucleus_chi_ppm"])


def test_calcifications_are_negative_in_truth_and_qsm():
    s = subject("lesions", LESIONS, age_years=80.0, swi_snr_wm=60.0)
    calc = s.lesions[s.lesions["kind"] == "calcification"]
    assert len(calc) >= 3 and (calc["chi_ppm"] < 0).all()
    vals = [sample(s.qsm, swi_point(s, r)) for r in calc.itertuples()]
    assert np.median(vals) < 0
    cmb = s.lesions[s.lesions["kind"] == "cmb"]
    assert cmb["chi_ppm"].between(*(FACTORS["cmb_chi_ppm"].low, FACTORS["cmb_chi_ppm"].high)).all()
    assert np.median([sample(s.qsm, swi_point(s, r)) for r in cmb.itertuples()]) > 0.05


@pytest.mark.slow
def test_bids_cohort_and_pydra_task_take_the_profile(tmp_path):
    import json

    import pandas as pd

    from deepmir_tasks.simulate import write_bids_cohort
    from deepmir_tasks.simulate.tasks import SimulateSubject

    labels = write_bids_cohort(tmp_path / "bids", 1, seed=7, size="small", profile="randomised",
                               factors={"b0_tesla": 7.0, "t2_variant": "FLAIR-like"})
    anat = tmp_path / "bids" / f"sub-{labels[0]}" / "anat"
    assert sorted(p.name for p in anat.iterdir()) == sorted(
        f"sub-{labels[0]}_{s}" for s in ("T2w.nii.gz", "T2w.json", "swi.nii.gz", "swi.json", "Chimap.nii.gz",
                                          "Chimap.json"))
    t2 = json.loads((anat / f"sub-{labels[0]}_T2w.json").read_text())
    assert t2["MagneticFieldStrength"] == 7.0 and "FLAIR" in t2["SequenceName"] and t2["InversionTime"] > 2
    part = pd.read_csv(tmp_path / "bids" / "participants.tsv", sep="\t")
    assert part["profile"].tolist() == ["randomised"] and 20 <= part["age"].iloc[0] <= 90
    out = SimulateSubject(seed=7, size="small", label="02", profile="randomised")(worker="debug",
                                                                             cache_root=tmp_path / "cache")
    params = json.loads(Path(out.xfm).with_name("sub-02_desc-simulation_params.json").read_text())
    assert params["profile"] == "randomised" and "age_years" in params["factors"]


# ---- randomised3: how dark a nucleus's iron makes it on SWI and T2w is drawn, weak to strong ----

def test_randomised3_draws_the_randomised2_factors_then_the_nuclear_darkening():
    for seed in range(50):
        v2 = draw_factors(np.random.default_rng(seed), version=2)
        v3 = draw_factors(np.random.default_rng(seed), version=3)
        assert {k: v3[k] for k in v2} == v2                      # the randomised2 subject ...
        for name in variability.V3_FACTORS:                       # ... plus its nuclei's darkening
            assert FACTORS[name].low <= v3[name] <= FACTORS[name].high, name
    for name in variability.V3_FACTORS:
        vals = np.array([draw_factors(np.random.default_rng(s), version=3)[name] for s in SEEDS])
        assert np.ptp(vals) > 0.9 * (FACTORS[name].high - FACTORS[name].low), name
    with pytest.raises(ValueError, match="unknown factor"):      # not a factor of version 2
        draw_factors(np.random.default_rng(0), {"nucleus_r2s_per_ppm": 100.0}, version=2)


def test_nuclear_darkening_sets_how_dark_iron_rich_nuclei_are_on_swi_and_t2w_not_their_qsm():
    pins = dict(BASE, age_years=85.0, b0_tesla=3.0, nucleus_texture=0.0)

    def head(r2s, k):
        return simulate_subject(3, size="small", profile="randomised3", lesion_counts=NO_LESIONS,
                                factors=dict(pins, nucleus_r2s_per_ppm=r2s, nucleus_t2_per_ppm=k))

    weak, strong = head(25.0, 0.5), head(250.0, 4.0)
    assert strong.params["factors"]["nucleus_r2s_per_ppm"] == 250.0
    # the same susceptibility: QSM differs by noise only (its noise follows the magnitude)
    assert np.corrcoef(data(weak.qsm).ravel(), data(strong.qsm).ravel())[0, 1] > 0.97
    for name in ("globus-pallidus-R", "globus-pallidus-L"):
        c_t2 = np.asarray(strong.params["nucleus_centroids_t2_mm"][name])
        c_swi = to_swi(strong, c_t2)
        med = lambda img, c: float(np.median(neighbourhood(img, c, 3.0)[0]))  # noqa: E731
        assert med(strong.swi, c_swi) < 0.8 * med(weak.swi, c_swi), name     # darker on SWI ...
        assert med(strong.t2, c_t2) < 0.9 * med(weak.t2, c_t2), name         # ... and on T2w
        assert abs(med(strong.qsm, c_swi) - med(weak.qsm, c_swi)) < 0.03, name  # same iron on QSM
