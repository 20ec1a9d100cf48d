"""RAS/LPS conversions, rigid registration (identity, known motion) and the same-session shortcut."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from deepmir_tasks.preprocess._ants import (ants_affine, ants_transform_to_ras, ras_to_ants_transform,
                                            read_affine_transform, to_ants, write_affine_transform)
from deepmir_tasks.preprocess.register import register_rigid, register_to_t2, transform_to_ras

from helpers.preprocess import make_head_image, rotation, save


def _mean_error_mm(estimated, truth, points):
    """Mean distance between where two moving→fixed matrices send the same moving-world points."""
    p = np.vstack([points, np.ones(points.shape[1])])
    return float(np.linalg.norm((estimated @ p - truth @ p)[:3], axis=0).mean())


def test_ants_image_keeps_an_oblique_ras_affine():
    aff = rotation((10, -20, 35), (5, -7, 12)) @ np.diag([0.5, 0.7, 2.0, 1.0])
    img = to_ants(np.zeros((5, 6, 7), np.float32), aff)
    np.testing.assert_allclose(ants_affine(img), aff, atol=1e-5)
    # ANTs/ITK physical space is LPS: the origin's x and y flip sign
    np.testing.assert_allclose(img.origin, [-aff[0, 3], -aff[1, 3], aff[2, 3]], atol=1e-5)


def test_transform_file_round_trip_and_direction(tmp_path):
    """A written RAS moving→fixed matrix reads back; ANTs resampling moves a blob where RAS says."""
    import ants

    m2f = rotation((0, 0, 0), (6.0, -4.0, 2.0))  # moving world + (6, -4, 2) mm = fixed world
    path = write_affine_transform(ras_to_ants_transform(m2f), tmp_path / "t.mat")
    np.testing.assert_allclose(ants_transform_to_ras(path), m2f, atol=1e-6)
    # blob at RAS (0, 0, 0) in the moving image must land at RAS (6, -4, 2) in the fixed grid
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    aff[:3, 3] = -16
    d = np.zeros((33, 33, 33), np.float32)
    d[16, 16, 16] = 1.0
    out = ants.apply_transforms(fixed=to_ants(np.zeros_like(d), aff), moving=to_ants(d, aff),
                                transformlist=[str(path)], interpolator="nearestNeighbor").numpy()
    ijk = np.argwhere(out > 0.5)[0]
    np.testing.assert_allclose(aff[:3, :3] @ ijk + aff[:3, 3], [6.0, -4.0, 2.0])
    # ITK convention y = A (x - c) + c + t is honoured for a rotation about a centre
    tx = ants.create_ants_transform(transform_type="AffineTransform", dimension=3,
                                    matrix=rotation((0, 0, 30))[:3, :3], center=(10.0, 5.0, 0.0),
                                    translation=(1.0, 2.0, 3.0))
    ants.write_transform(tx, str(tmp_path / "c.mat"))
    m = read_affine_transform(tmp_path / "c.mat")
    np.testing.assert_allclose(m[:3, :3] @ [3.0, 4.0, 5.0] + m[:3, 3],
                               tx.apply_to_point((3.0, 4.0, 5.0)), atol=1e-6)


@pytest.fixture
def fixed_head(tmp_path):
    data, aff, brain = make_head_image((56, 60, 48), (1.6, 1.6, 1.6), seed=3)
    t2 = save(data, aff, tmp_path / "t2.nii.gz")
    mask = save(brain.astype(np.uint8), aff, tmp_path / "mask.nii.gz")
    return t2, mask, aff, brain


def test_registering_an_image_to_itself_gives_identity(fixed_head, tmp_path):
    t2, mask, aff, brain = fixed_head
    out = register_rigid(t2, t2, tmp_path / "self.mat", fixed_mask_file=mask)
    pts = (aff[:3, :3] @ np.argwhere(brain)[::20].T + aff[:3, 3:4])
    assert _mean_error_mm(transform_to_ras(out), np.eye(4), pts) < 0.1


@pytest.mark.parametrize("angles, shift", [((8, -5, 6), (6.0, -5.0, 4.0)), ((15, 0, -10), (0.0, 15.0, -8.0))])
def test_known_motion_is_recovered_across_grids_and_contrast(fixed_head, tmp_path, angles, shift):
    """SWI-like session: other voxel size, anisotropic, inverted contrast, moved up to 15° / 17 mm."""
    t2, mask, aff, brain = fixed_head
    motion = rotation(angles, shift)                      # SWI world = motion @ T2 world
    data, swi_aff, _ = make_head_image((90, 100, 36), (1.0, 1.0, 2.5), motion=motion, seed=3)
    swi = save(np.where(data > 0, 1.5 - data, 0), swi_aff, tmp_path / "swi.nii.gz")
    out = register_rigid(swi, t2, tmp_path / "swi.mat", fixed_mask_file=mask, what="SWI")
    pts = (aff[:3, :3] @ np.argwhere(brain)[::20].T + aff[:3, 3:4])
    truth = np.linalg.inv(motion)                          # SWI world → T2 world
    swi_pts = motion[:3, :3] @ pts + motion[:3, 3:4]
    assert _mean_error_mm(np.eye(4), truth, swi_pts) > 5.0   # the motion is not small
    assert _mean_error_mm(transform_to_ras(out), truth, swi_pts) < 0.5


def test_same_session_transform_is_reused_in_the_same_scanner_space(fixed_head, tmp_path):
    t2, mask, aff, _ = fixed_head
    tx = write_affine_transform(ras_to_ants_transform(rotation((1, 2, 3), (1, 1, 1))), tmp_path / "swi.mat")
    qsm = shutil.copy(t2, tmp_path / "qsm.nii.gz")
    out, qc = register_to_t2(qsm, t2, tmp_path / "qsm.mat", same_session_file=t2, same_session_transform=tx)
    assert out.read_bytes() == tx.read_bytes() and qc == {"shared_with": Path(t2).name}
    # a QSM on a grid of its own over the same place (cropped by 2 voxels, as other toolboxes do)
    # shares the SWI's transform too
    img = nib.load(t2)
    cropped = save(img.get_fdata()[2:-2, 2:-2, :], img.affine @ np.array(
        [[1, 0, 0, 2], [0, 1, 0, 2], [0, 0, 1, 0], [0, 0, 0, 1.0]]), tmp_path / "qsm2.nii.gz")
    out2, _ = register_to_t2(cropped, t2, tmp_path / "qsm2.mat", mask_file=mask, same_session_file=t2,
                             same_session_transform=tx)
    assert out2.read_bytes() == tx.read_bytes()
    # an image elsewhere in the scanner (another session) is registered on its own: here to itself
    # moved 200 mm, so the transform found is that shift, not the SWI's
    shift = np.array([[1, 0, 0, 200], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    moved = save(img.get_fdata(), shift @ img.affine, tmp_path / "qsm3.nii.gz")
    out3, _ = register_to_t2(moved, t2, tmp_path / "qsm3.mat", same_session_file=t2, same_session_transform=tx)
    assert np.abs(transform_to_ras(out3)[:3, 3] - [-200, 0, 0]).max() < 0.5
