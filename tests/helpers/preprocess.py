"""Small synthetic heads for the preprocessing tests that do not need the full simulator.

A head here is an ellipsoidal "brain" with a smooth random texture, a dark skull shell and a bright
scalp shell: enough structure for mutual-information registration and brain extraction checks,
fast to make (well under a second) and fully known.
"""

from __future__ import annotations

import numpy as np


def rotation(deg_xyz, shift_mm=(0.0, 0.0, 0.0)) -> np.ndarray:
    """4×4 rigid matrix: rotations about x, y, z (degrees, applied in that order) then a shift."""
    out = np.eye(4)
    for axis, deg in enumerate(deg_xyz):
        t = np.radians(deg)
        c, s = np.cos(t), np.sin(t)
        i, j = [k for k in range(3) if k != axis]
        r = np.eye(4)
        r[i, i] = r[j, j] = c
        r[i, j], r[j, i] = -s, s
        out = r @ out
    out[:3, 3] = shift_mm
    return out


def grid_affine(shape, zooms, rot=np.eye(4)) -> np.ndarray:
    """An affine centring a grid of ``shape`` × ``zooms`` on the world origin, then ``rot``."""
    aff = np.diag(list(zooms) + [1.0])
    aff[:3, 3] = -0.5 * (np.asarray(shape) - 1) * np.asarray(zooms)
    return rot @ aff


def head_world(points, seed: int = 0):
    """Intensity and brain truth of the synthetic head at world points (3, N) in mm (head frame)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    radii = np.array([34.0, 40.0, 30.0])
    r = np.sqrt(np.sum((points / radii[:, None]) ** 2, axis=0))  # 1 at the brain surface
    # smooth texture on a coarse lattice covering ±60 mm, sampled trilinearly
    tex = ndimage.gaussian_filter(rng.normal(size=(25, 25, 25)), 1.2)
    tex = (tex - tex.mean()) / tex.std()
    idx = (points + 60.0) / 5.0
    texture = ndimage.map_coordinates(tex, idx, order=1, mode="nearest")
    brain = r <= 1.0
    val = np.where(brain, 1.0 + 0.25 * texture, 0.0)
    val = np.where((r > 1.0) & (r <= 1.12), 0.05, val)        # skull
    val = np.where((r > 1.12) & (r <= 1.25), 0.8, val)        # scalp
    return val.astype(np.float32), brain


def make_head_image(shape=(48, 48, 40), zooms=(2.0, 2.0, 2.0), motion=np.eye(4), seed: int = 0,
                    noise: float = 0.01):
    """``(data, affine, brain)``: the head seen in a session whose world = ``motion`` @ head frame."""
    aff = grid_affine(shape, zooms)
    ijk = np.indices(shape).reshape(3, -1).astype(float)
    world = aff[:3, :3] @ ijk + aff[:3, 3:4]
    inv = np.linalg.inv(motion)
    head = inv[:3, :3] @ world + inv[:3, 3:4]
    val, brain = head_world(head, seed)
    rng = np.random.default_rng(seed + 1000)
    data = val.reshape(shape) + noise * rng.normal(size=shape).astype(np.float32)
    return np.abs(data).astype(np.float32), aff, brain.reshape(shape)


def save(data, affine, path):
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(data, np.float32), affine)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(path))
    return path
