"""The QSM/SWI chain against known susceptibility: a small analytic phantom (fast) and the
simulator's raw multi-echo GRE run through the Pydra tasks (slow)."""

from __future__ import annotations

import numpy as np
import pytest

from deepmir_tasks.qsm.bids import MegreData
from deepmir_tasks.qsm.inversion import b0_direction_voxel
from deepmir_tasks.qsm.pipeline import QsmOptions, reconstruct
from deepmir_tasks.simulate.physics import dipole_field, phase_rad_per_ppm
from deepmir_tasks.simulate.shapes import euler_matrix


def _phantom(tilt_deg=(15.0, 0.0, 0.0), seed=0):
    """Ellipsoidal 'brain' (2 mm voxels) with a positive and a negative sphere, oblique slab, air
    outside, wrapped noisy 3-echo phase with a phase offset."""
    rng = np.random.default_rng(seed)
    shape, vox = (56, 60, 48), 2.0
    idx = np.indices(shape).astype(np.float32)
    c = (np.array(shape) - 1)[:, None, None, None] / 2
    r = np.sqrt((((idx - c) / np.array([22, 25, 19])[:, None, None, None]) ** 2).sum(0))
    brain = r < 1.0
    chi = np.where(brain, 0.0, 0.0).astype(np.float32)
    chi[brain & (idx[2] > c[2, 0, 0, 0])] = 0.02
    spheres = []
    for (i, j, k), val in (((20, 26, 22), 0.8), ((36, 34, 26), -0.5)):
        s = ((idx[0] - i) ** 2 + (idx[1] - j) ** 2 + (idx[2] - k) ** 2) <= 2.2 ** 2
        chi[s] = val
        spheres.append(((i, j, k), val))
    aff = np.eye(4)
    aff[:3, :3] = euler_matrix(*np.deg2rad(tilt_deg)) * vox
    field = dipole_field(chi, (vox,) * 3, b0_direction_voxel(aff))
    x = (idx[0] - c[0]) / 30
    field += np.float32(0.5) * x + np.float32(0.2) * (x * x - ((idx[1] - c[1]) / 30) ** 2)   # harmonic background
    tes = [0.004, 0.009, 0.014]
    mag0 = np.where(brain, 1.0, 0.0).astype(np.float32)
    offset = np.float32(1.3) + np.float32(0.8) * (idx[1] - c[1]) / 30
    mags, phs = [], []
    for te in tes:
        s = mag0 * np.exp(-te * 20) * np.exp(1j * (offset + phase_rad_per_ppm(3.0, te) * field))
        s = s + 0.01 * (rng.standard_normal(shape) + 1j * rng.standard_normal(shape))
        mags.append(np.abs(s).astype(np.float32))
        phs.append(np.angle(s).astype(np.float32))
    data = MegreData(np.stack(mags, -1), np.stack(phs, -1), tes, 3.0, aff, "rad")
    return data, chi, brain, spheres


def test_chain_on_an_oblique_phantom_recovers_the_susceptibility():
    data, chi, brain, spheres = _phantom()
    out = reconstruct(data)
    assert abs(out["mask"].sum() / brain.sum() - 1) < 0.05          # mask from the magnitude
    q = out["qsm_mask"]
    truth = chi - chi[q].mean()
    assert np.corrcoef(out["chi"][q], truth[q])[0, 1] > 0.8
    (ip, pos), (ineg, neg) = spheres
    assert out["chi"][ip] > 0.3 and out["chi"][ineg] < -0.15
    # ignoring the oblique slab (B0 along the voxel z) gives a worse map
    data.affine = np.diag([2.0, 2.0, 2.0, 1.0])
    wrong = reconstruct(data)
    assert np.corrcoef(wrong["chi"][q], truth[q])[0, 1] < np.corrcoef(out["chi"][q], truth[q])[0, 1] - 0.02


def test_user_mask_is_used_and_tkd_fallback_runs():
    data, chi, brain, spheres = _phantom(tilt_deg=(0.0, 0.0, 0.0))
    user = brain.copy()
    user[:, :, :10] = False
    out = reconstruct(data, user_mask=user, options=QsmOptions(method="tkd"))
    assert np.array_equal(out["mask"], user)
    assert not out["qsm_mask"][~user].any()
    (ip, _), (ineg, _) = spheres
    assert out["chi"][ip] > 0.2 and out["chi"][ineg] < -0.1
    assert np.all(np.isfinite(out["swi"]))
    # the field of a paramagnetic sphere is positive at its poles along B0: dark there in SWI
    i, j, k = ip
    ratio = out["swi"] / np.maximum(out["magnitude"], 1e-6)
    assert ratio[i, j, k - 5:k + 6].min() < 0.7
    assert np.median(ratio[out["mask"]]) > 0.95                      # the rest is barely touched


def test_swi_phase_is_taken_at_the_standard_swi_echo_time_of_the_field():
    from deepmir_tasks.qsm.swi import clear_swi, swi_echo_time

    assert swi_echo_time(1.5, [0.01, 0.03, 0.05]) == pytest.approx(0.040)   # Haacke 2009: 40 ms at 1.5 T
    assert swi_echo_time(3.0, [0.005, 0.012, 0.025, 0.04]) == pytest.approx(0.020)
    assert swi_echo_time(3.0, [0.004, 0.009, 0.014]) == pytest.approx(0.014)  # within the echoes acquired
    assert swi_echo_time(7.0, [0.002, 0.012]) == pytest.approx(0.060 / 7)
    data, _, _, spheres = _phantom(tilt_deg=(0.0, 0.0, 0.0))
    out = reconstruct(data)
    args = (data.magnitude, out["field_hz"], out["mask"], data.voxel_mm, data.echo_times_s)
    at_7t = clear_swi(*args, b0_tesla=7.0)["swi"]                   # 8.6 ms, between the echoes
    assert np.array_equal(at_7t, clear_swi(*args, te_eff_s=0.060 / 7)["swi"])
    last = clear_swi(*args)["swi"]                                  # no field given: the last echo
    assert np.array_equal(last, clear_swi(*args, b0_tesla=1.5)["swi"])   # 40 ms, clipped to the last echo
    # a shorter echo time gives less phase: the paramagnetic sphere's pole darkens less
    i, j, k = spheres[0][0]
    mag = np.maximum(out["magnitude"], 1e-6)
    assert (at_7t / mag)[i, j, k - 5:k + 6].mean() > (last / mag)[i, j, k - 5:k + 6].mean() + 0.05


@pytest.fixture(scope="module")
def megre_bids(tmp_path_factory):
    from deepmir_tasks.simulate.megre import simulate_megre, write_megre_bids

    sim = simulate_megre(3, voxel_mm=3.0)
    paths = write_megre_bids(sim, tmp_path_factory.mktemp("megre"), phase_units="scanner")
    return sim, paths


@pytest.mark.slow
def test_pydra_chain_on_simulated_megre(megre_bids, tmp_path):
    import nibabel as nib

    from deepmir_tasks.qsm.tasks import ComputeSwi, EstimateField, InvertDipole, ReadMegre, RemoveBackground

    sim, paths = megre_bids
    run = dict(cache_root=tmp_path / "cache", worker="debug")
    rd = ReadMegre(mag_files=paths["mag"], phase_files=paths["phase"], key="sub-01")(**run)
    assert rd.b0_tesla == 3.0 and rd.echo_times_s == pytest.approx(sim.echo_times_s)
    # the brain mask given, as the T2w mask would be (the magnitude mask keeps the CSF rim: see below)
    fe = EstimateField(magnitude=rd.magnitude, phase=rd.phase, echo_times_s=rd.echo_times_s,
                       b0_tesla=rd.b0_tesla, mask_file=paths["mask"], key="sub-01")(**run)
    bg = RemoveBackground(fieldmap=fe.fieldmap, mask_file=fe.mask, key="sub-01")(**run)
    qsm = InvertDipole(local_field=bg.local_field, mask_file=bg.qsm_mask, key="sub-01")(**run)
    swi = ComputeSwi(magnitude=rd.magnitude, fieldmap=fe.fieldmap, mask_file=fe.mask,
                     echo_times_s=rd.echo_times_s, b0_tesla=rd.b0_tesla, key="sub-01", minip_mm=9.0)(**run)
    assert qsm.qsm.fspath.name == "sub-01_Chimap.nii.gz" and swi.swi.fspath.name == "sub-01_swi.nii.gz"
    chi = np.asarray(nib.load(str(qsm.qsm.fspath)).dataobj)
    q = (np.asarray(nib.load(str(bg.qsm_mask.fspath)).dataobj) > 0) & sim.brain_mask
    truth = sim.chi_ppm - sim.chi_ppm[q].mean()
    corr = np.corrcoef(chi[q], truth[q])[0, 1]
    rmse = float(np.sqrt(np.mean((chi[q] - truth[q]) ** 2)))
    print(f"simulated MEGRE (3 mm): correlation {corr:.3f}, RMSE {rmse:.4f} ppm in {q.sum()} voxels")
    assert corr > 0.8 and rmse < 0.02
    for les in sim.lesions:
        i, j, k = les["centre_vox"]
        peak = chi[i - 1:i + 2, j - 1:j + 2, k - 1:k + 2]
        if les["kind"] == "cmb":
            assert peak.max() > 0.1, les
        else:
            assert peak.min() < -0.05, les
    s = np.asarray(nib.load(str(swi.swi.fspath)).dataobj)
    mp = np.asarray(nib.load(str(swi.minip.fspath)).dataobj)
    assert np.all(np.isfinite(s)) and np.all(mp <= s + 1e-6)
    mag = np.sqrt((sim.magnitude ** 2).sum(-1))
    for les in sim.lesions:                                          # CMBs are dark in SWI
        if les["kind"] == "cmb":
            i, j, k = les["centre_vox"]
            assert s[i, j, k] < 0.5 * np.median(mag[sim.brain_mask]), les


@pytest.mark.slow
def test_simulated_megre_with_the_magnitude_mask(megre_bids):
    sim, _ = megre_bids
    data = MegreData(sim.magnitude, sim.phase, sim.echo_times_s, sim.b0_tesla, sim.affine, "rad")
    out = reconstruct(data)
    assert out["mask"][sim.brain_mask].all()                         # the whole brain is kept
    q = out["qsm_mask"] & sim.brain_mask
    truth = sim.chi_ppm - sim.chi_ppm[q].mean()
    corr = np.corrcoef(out["chi"][q], truth[q])[0, 1]
    print(f"simulated MEGRE (3 mm), magnitude mask: correlation {corr:.3f}")
    assert corr > 0.8


def test_pydra_tasks_on_the_phantom_written_as_bids(tmp_path):
    import json

    import nibabel as nib

    from deepmir_tasks.qsm.tasks import ComputeSwi, EstimateField, InvertDipole, ReadMegre, RemoveBackground

    data, chi, brain, spheres = _phantom()
    files = {"mag": [], "phase": []}
    for n, te in enumerate(data.echo_times_s, start=1):
        for part, arr in (("mag", data.magnitude[..., n - 1]), ("phase", data.phase[..., n - 1])):
            if part == "phase":
                arr = np.round(arr / np.pi * 2048).clip(0 - 2048, 2047).astype(np.int16) + 2048   # 0..4095
            path = tmp_path / f"sub-01_ses-A_echo-{n}_part-{part}_MEGRE.nii.gz"
            nib.save(nib.Nifti1Image(arr, data.affine), str(path))
            path.with_name(path.name[:-7] + ".json").write_text(json.dumps({"EchoTime": te, "MagneticFieldStrength": 3.0}))
            files[part].append(path)
    run = dict(cache_root=tmp_path / "cache", worker="debug")
    key = "sub-01_ses-A"
    rd = ReadMegre(mag_files=files["mag"], phase_files=files["phase"], key=key)(**run)
    fe = EstimateField(magnitude=rd.magnitude, phase=rd.phase, echo_times_s=rd.echo_times_s,
                       b0_tesla=rd.b0_tesla, key=key)(**run)
    bg = RemoveBackground(fieldmap=fe.fieldmap, mask_file=fe.mask, key=key)(**run)
    task = InvertDipole(local_field=bg.local_field, mask_file=bg.qsm_mask, key=key)
    qsm = task(**run)
    swi = ComputeSwi(magnitude=rd.magnitude, fieldmap=fe.fieldmap, mask_file=fe.mask,
                     echo_times_s=rd.echo_times_s, b0_tesla=rd.b0_tesla, key=key)(**run)
    assert qsm.qsm.fspath.name == "sub-01_ses-A_Chimap.nii.gz"
    assert swi.swi.fspath.name == "sub-01_ses-A_swi.nii.gz"
    assert bg.local_field.fspath.name == "sub-01_ses-A_desc-local_fieldmap.nii.gz"
    assert nib.load(str(rd.magnitude_rss.fspath)).shape == brain.shape
    out = np.asarray(nib.load(str(qsm.qsm.fspath)).dataobj)
    (ip, _), (ineg, _) = spheres
    assert out[ip] > 0.3 and out[ineg] < -0.15
    assert task(**run).qsm.fspath == qsm.qsm.fspath                 # served from the cache


def test_torch_tv_admm_matches_numpy():
    from deepmir_tasks.qsm.inversion import tv_admm, tv_admm_torch

    rng = np.random.default_rng(2)
    shape, vox = (24, 26, 20), (1.0, 1.2, 2.0)
    mask = np.zeros(shape, bool)
    mask[4:-4, 4:-4, 3:-3] = True
    chi = np.where(mask, rng.normal(0, 0.05, shape), 0).astype(np.float32)
    b0 = np.array([0.1, 0.2, 0.97])
    field = dipole_field(chi, vox, b0)
    a = tv_admm(field, mask, vox, b0, n_iter=10)
    b = tv_admm_torch(field, mask, vox, b0, n_iter=10, device="cpu")
    assert np.abs(a - b).max() < 1e-4 * max(1.0, float(np.abs(a).max())) + 1e-6
