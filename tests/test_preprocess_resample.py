"""Working grid, resampling (lesion peaks kept), label resampling and intensity normalisation."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from deepmir_tasks.preprocess._ants import ras_to_ants_transform, write_affine_transform
from deepmir_tasks.preprocess.normalise import normalise_intensity, robust_zscore
from deepmir_tasks.preprocess.resample import (make_grid, resample_labels, resample_to_grid,
                                               working_grid)

from helpers.preprocess import grid_affine, rotation, save


def test_working_grid_keeps_t2_axes_and_covers_the_brain():
    aff = rotation((10, 0, -15), (3, 4, 5)) @ grid_affine((40, 40, 20), (1.0, 1.0, 3.0))
    img = nib.Nifti1Image(np.zeros((40, 40, 20), np.float32), aff)
    mask = np.zeros((40, 40, 20), bool)
    mask[10:30, 5:35, 4:15] = True
    shape, new = working_grid(img, mask, voxel_size=1.0, margin_mm=5.0)
    np.testing.assert_allclose(np.linalg.norm(new[:3, :3], axis=0), 1.0)
    np.testing.assert_allclose(new[:3, :3], aff[:3, :3] / np.linalg.norm(aff[:3, :3], axis=0), atol=1e-9)
    # every brain voxel centre, and 5 mm beyond it along each axis, falls inside the new grid
    pts = np.argwhere(mask).T.astype(float)
    world = aff[:3, :3] @ pts + aff[:3, 3:4]
    ijk = np.linalg.solve(new[:3, :3], world - new[:3, 3:4])
    assert ijk.min() >= 4.4 and np.all(ijk.max(axis=1) <= np.asarray(shape) - 1 - 4.4)
    # cropped along k: slices 4..14 of 3 mm (33 mm) + 2 × 5 mm margin, at 1 mm
    assert shape[2] == 43
    assert working_grid(img, None, 1.0)[0] == (40, 40, 60)


def _ball_image(shape, zooms, centre_mm, radius_mm, value, rot=np.eye(4), supersample=5):
    """A ball's partial-volume image on a grid (value × fraction of each voxel inside the ball)."""
    aff = rot @ grid_affine(shape, zooms)
    sub = (np.arange(supersample) + 0.5) / supersample - 0.5
    offs = np.stack(np.meshgrid(sub, sub, sub, indexing="ij"), -1).reshape(-1, 3)
    c_vox = np.linalg.solve(aff[:3, :3], np.asarray(centre_mm) - aff[:3, 3])
    data = np.zeros(shape, np.float32)
    half = np.ceil(radius_mm / np.asarray(zooms)).astype(int) + 2
    lo = np.maximum(np.floor(c_vox).astype(int) - half, 0)
    hi = np.minimum(np.floor(c_vox).astype(int) + half + 1, shape)
    for idx in np.ndindex(*(hi - lo)):
        v = lo + np.asarray(idx)
        pts = aff[:3, :3] @ (v + offs).T + aff[:3, 3:4]
        frac = np.mean(np.linalg.norm(pts - np.asarray(centre_mm)[:, None], axis=0) <= radius_mm)
        data[tuple(v)] = value * frac
    return data, aff


@pytest.mark.parametrize("chi", [0.6, -0.4])
def test_bspline_keeps_a_small_lesion_peak_and_sign(tmp_path, chi):
    """A 1.2 mm-radius lesion seen at 0.6×0.6×2 mm, moved 7° / 3 mm, resampled to 1 mm."""
    motion = rotation((7, -4, 5), (1.3, -2.1, 0.7))        # SWI world = motion @ T2 world
    centre_t2 = np.array([2.3, -1.6, 0.9])
    centre_swi = motion[:3, :3] @ centre_t2 + motion[:3, 3]
    data, aff = _ball_image((60, 60, 20), (0.6, 0.6, 2.0), centre_swi, 1.2, chi)
    qsm = save(data, aff, tmp_path / "qsm.nii.gz")
    tx = write_affine_transform(ras_to_ants_transform(np.linalg.inv(motion)), tmp_path / "x.mat")
    ref_data, ref_aff = _ball_image((24, 24, 24), (1.0, 1.0, 1.0), centre_t2, 1.2, chi)
    ref = save(np.zeros_like(ref_data), ref_aff, tmp_path / "grid.nii.gz")
    true_peak = float(ref_data.flat[np.argmax(np.abs(ref_data))])
    peaks = {}
    for interp in ("linear", "bspline"):
        out = nib.load(resample_to_grid(qsm, ref, tmp_path / f"{interp}.nii.gz", transform_file=tx,
                                        interpolation=interp)).get_fdata()
        c = np.rint(np.linalg.solve(ref_aff[:3, :3], centre_t2 - ref_aff[:3, 3])).astype(int)
        box = out[tuple(slice(i - 1, i + 2) for i in c)]
        peaks[interp] = float(box.flat[np.argmax(np.abs(box))])
    assert np.sign(peaks["bspline"]) == np.sign(chi)
    assert abs(peaks["bspline"]) >= 0.7 * abs(true_peak)
    assert abs(peaks["bspline"]) >= abs(peaks["linear"])


def test_resample_labels_keeps_every_component(tmp_path):
    aff = grid_affine((40, 40, 40), (0.5, 0.5, 0.5))
    lab = np.zeros((40, 40, 40), np.uint8)
    rng = np.random.default_rng(4)
    pos = rng.choice(np.arange(2, 38), size=(12, 3))
    for n, p in enumerate(pos):
        lab[tuple(p)] = 1 + n % 2                        # single-voxel "lesions", classes 1 and 2
    lab[5:12, 5:12, 5:12] = 2                            # and one large one
    import cc3d

    n_in = cc3d.connected_components(lab, connectivity=26).max()
    src = save(lab, aff, tmp_path / "dseg.nii.gz")
    ref = save(np.zeros((10, 10, 10)), grid_affine((10, 10, 10), (2.0, 2.0, 2.0)), tmp_path / "ref.nii.gz")
    out = nib.load(resample_labels(src, ref, tmp_path / "out.nii.gz"))
    res = np.asarray(out.dataobj)
    assert res.dtype == np.uint8 and res.shape == (10, 10, 10)
    # every input component left at least one voxel of its class near its centre
    for p in pos:
        w = aff[:3, :3] @ p + aff[:3, 3]
        ijk = np.rint(np.linalg.solve(out.affine[:3, :3], w - out.affine[:3, 3])).astype(int)
        box = res[tuple(slice(max(i - 1, 0), i + 2) for i in ijk)]
        assert lab[tuple(p)] in box
    # nearest neighbour alone would have lost some of them
    plain = nib.load(resample_to_grid(src, ref, tmp_path / "nn.nii.gz", interpolation="nearest")).get_fdata()
    assert cc3d.connected_components(plain.astype(np.uint8), connectivity=26).max() < n_in
    assert set(np.unique(res)) <= {0, 1, 2}


def test_resample_refuses_an_image_that_misses_the_brain(tmp_path):
    from deepmir_tasks.io import InputError

    aff = grid_affine((20, 20, 20), (2.0, 2.0, 2.0))
    mask = save(np.ones((20, 20, 20), np.uint8), aff, tmp_path / "mask.nii.gz")
    far = aff.copy()
    far[:3, 3] += [30.0, 0, 0]                           # shifted by 30 of its 40 mm
    swi = save(np.ones((20, 20, 20)), far, tmp_path / "swi.nii.gz")
    with pytest.raises(InputError, match=r"covers only \d+% of the T2w brain") as err:
        resample_to_grid(swi, mask, tmp_path / "o.nii.gz", mask_file=mask, what="SWI")
    assert str(swi) in str(err.value)


def test_make_grid_crops_to_the_mask(tmp_path):
    aff = grid_affine((50, 50, 50), (1.0, 1.0, 1.0))
    m = np.zeros((50, 50, 50), np.uint8)
    m[20:30, 20:30, 20:30] = 1
    t2 = save(np.ones((50, 50, 50)), aff, tmp_path / "t2.nii.gz")
    mask = save(m, aff, tmp_path / "m.nii.gz")
    g = nib.load(make_grid(t2, tmp_path / "g.nii.gz", mask_file=mask, voxel_size=0.5, margin_mm=2.0))
    assert g.shape == (28, 28, 28)                       # (10 mm + 2 × 2 mm) / 0.5 mm
    np.testing.assert_allclose(g.affine[:3, 3], aff[:3, :3] @ [17.75, 17.75, 17.75] + aff[:3, 3])


def test_robust_zscore_and_qsm_clip(tmp_path):
    rng = np.random.default_rng(2)
    data = rng.normal(100, 15, (20, 20, 20)).astype(np.float32)
    mask = np.zeros(data.shape, bool)
    mask[3:17, 3:17, 3:17] = True
    data[~mask] = 1000.0
    z = robust_zscore(data, mask)
    q25, q50, q75 = np.percentile(z[mask], [25, 50, 75])
    assert abs(q50) < 1e-5 and abs((q75 - q25) - 1.349) < 1e-3
    assert np.all(z[~mask] == 0)
    aff = np.eye(4)
    qsm = save(np.linspace(-3, 3, 8000).reshape(20, 20, 20), aff, tmp_path / "q.nii.gz")
    m = save(mask.astype(np.uint8), aff, tmp_path / "m.nii.gz")
    out = nib.load(normalise_intensity(qsm, m, tmp_path / "qn.nii.gz", kind="qsm")).get_fdata()
    assert out[mask].min() == pytest.approx(-1.0) and out[mask].max() == pytest.approx(2.0)
    assert np.all(out[~mask] == 0)


def test_tasks_run_alone_in_pydra(tmp_path):
    """Each step is usable on its own: grid, resampling and normalisation as Pydra tasks."""
    from deepmir_tasks.preprocess.tasks import MakeGrid, NormaliseIntensity, ResampleToGrid

    aff = grid_affine((30, 30, 12), (1.0, 1.0, 3.0))
    rng = np.random.default_rng(5)
    t2 = save(rng.normal(50, 5, (30, 30, 12)) + 10, aff, tmp_path / "t2.nii.gz")
    m = np.zeros((30, 30, 12), np.uint8)
    m[5:25, 5:25, 2:10] = 1
    mask = save(m, aff, tmp_path / "mask.nii.gz")
    cache = tmp_path / "cache"
    grid = MakeGrid(t2_file=t2, mask_file=mask, voxel_size=1.5)(worker="debug", cache_root=cache).grid
    g = nib.load(grid.fspath)
    assert np.allclose(np.linalg.norm(g.affine[:3, :3], axis=0), 1.5)
    m_g = ResampleToGrid(in_file=mask, reference_file=grid, interpolation="mask")(worker="debug", cache_root=cache)
    t2_g = ResampleToGrid(in_file=t2, reference_file=grid)(worker="debug", cache_root=cache)
    z = NormaliseIntensity(in_file=t2_g.out_file, mask_file=m_g.out_file)(worker="debug", cache_root=cache)
    zd = nib.load(z.out_file.fspath).get_fdata()
    inside = np.asarray(nib.load(m_g.out_file.fspath).dataobj) > 0
    assert inside.sum() > 0 and abs(np.median(zd[inside])) < 1e-3 and np.all(zd[~inside] == 0)
