"""Small synthetic subjects for the model tests (no simulator or preprocessing needed).

Each subject is an ellipsoidal "brain" with tissue texture and spherical lesions:
CMBs (dark on T2w and SWI, strongly paramagnetic on QSM), iron deposits (mildly dark, weakly
paramagnetic) and calcifications (dark on SWI but diamagnetic on QSM; labelled background).
"""

from __future__ import annotations

import numpy as np

from deepmir_tasks.model.normalize import DEFAULT_NORMALIZATION

TINY_RECORD = {
    "architecture": {"name": "UNet", "in_channels": 3, "n_classes": 3, "levels": 3, "base": 8,
                     "dim": 3, "norm": "batch", "max_width": 64},
    "modalities": ["t2", "swi", "qsm"],
    "normalization": DEFAULT_NORMALIZATION,
    "classes": ["background", "cmb", "iron"],
}


def tiny_model(path, levels=3, modalities=("t2", "swi", "qsm"), seed=7):
    """Save a tiny model on ``modalities`` whose weights and batch-norm statistics are unlike a
    fresh network's (so that starting from it can be told apart); return ``path``."""
    import json

    import torch

    from deepmir_tasks.model.modelfile import save_model
    from deepmir_tasks.model.unet import UNet

    rec = json.loads(json.dumps(TINY_RECORD))
    rec["architecture"].update(levels=levels, in_channels=len(modalities), max_width=32)
    rec["modalities"] = list(modalities)
    torch.manual_seed(seed)
    net = UNet(**{k: v for k, v in rec["architecture"].items() if k != "name"})
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
        net.train()
        net(torch.randn(2, len(modalities), 16, 16, 16))
    save_model(net.eval(), path, rec)
    return path


def synthetic_subject(seed: int, shape=(40, 40, 32), n_cmb=4, n_iron=4, n_calc=2):
    """Return ``(volumes dict, mask bool, dseg uint8 0/1/2, affine, lesion centres dict)``."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(float)
    centre = (np.array(shape) - 1) / 2
    mask = (((grid - centre) / (np.array(shape) / 2 - 2)) ** 2).sum(-1) <= 1
    t2 = 1.0 + 0.1 * rng.standard_normal(shape)
    swi = 1.0 + 0.1 * rng.standard_normal(shape)
    qsm = 0.02 * rng.standard_normal(shape)
    dseg = np.zeros(shape, np.uint8)
    inside = np.argwhere(mask & (((grid - centre) / (np.array(shape) / 2 - 6)) ** 2).sum(-1).__le__(1))
    centres = {"cmb": [], "iron": [], "calcification": []}
    placed = []
    for kind, n in (("cmb", n_cmb), ("iron", n_iron), ("calcification", n_calc)):
        for _ in range(n):
            for _try in range(100):
                c = inside[rng.integers(len(inside))]
                if all(np.linalg.norm(c - p) > 7 for p in placed):
                    break
            placed.append(c)
            r = rng.uniform(1.2, 2.2)
            ball = np.linalg.norm(grid - c, axis=-1) <= r
            centres[kind].append(c.astype(float))
            if kind == "cmb":
                t2[ball] -= 0.5
                swi[ball] -= 0.7
                qsm[ball] += 0.4
                dseg[ball] = 1
            elif kind == "iron":
                t2[ball] -= 0.2
                swi[ball] -= 0.35
                qsm[ball] += 0.12
                dseg[ball] = 2
            else:
                swi[ball] -= 0.7
                qsm[ball] -= 0.4
    vols = {"t2": (t2 * mask).astype(np.float32), "swi": (swi * mask).astype(np.float32),
            "qsm": (qsm * mask).astype(np.float32)}
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    return vols, mask, dseg, affine, {k: np.array(v).reshape(-1, 3) for k, v in centres.items()}


def train_subject(seed: int, classes=("cmb", "iron"), **kwargs):
    """A :class:`deepmir_tasks.model.train.TrainSubject` built from :func:`synthetic_subject`."""

    from deepmir_tasks.model.normalize import normalize_stack
    from deepmir_tasks.model.train import TrainSubject, class_labels

    vols, mask, dseg, affine, centres = synthetic_subject(seed, **kwargs)
    img = normalize_stack(vols, mask, ["t2", "swi", "qsm"], DEFAULT_NORMALIZATION).astype(np.float16)
    label, lesions = class_labels(dseg, classes)
    s = TrainSubject(f"sub-{seed:02d}", img, label, mask, affine, lesions,
                     np.argwhere(mask).astype(np.int16), dseg)
    s.extra["volumes"] = vols
    s.extra["mimics"] = {"calcification": centres["calcification"]}
    return s


def write_synthetic_bids(root, seeds, shape=(32, 32, 24)):
    """A BIDS folder of synthetic subjects already on one grid, with annotations and mask files.

    Returns ``(bids_dir, annotations_dir)``. Used with :func:`identity_prepare` (no preprocessing).
    """
    from pathlib import Path

    import pandas as pd

    from deepmir_tasks.io import save_nifti, write_tsv

    root = Path(root)
    ann = root / "derivatives" / "annotations"
    for seed in seeds:
        vols, mask, dseg, aff, centres = synthetic_subject(seed, shape=shape)
        sub = f"sub-{seed:02d}"
        anat = root / sub / "anat"
        for m, suf in (("t2", "T2w"), ("swi", "swi"), ("qsm", "Chimap")):
            save_nifti(vols[m], aff, anat / f"{sub}_{suf}.nii.gz")
        save_nifti(dseg, aff, ann / sub / "anat" / f"{sub}_space-T2w_dseg.nii.gz")
        save_nifti(mask.astype(np.uint8), aff, ann / sub / "anat" / f"{sub}_space-T2w_desc-brain_mask.nii.gz")
        rows = [{"kind": k, "x_mm": c[0], "y_mm": c[1], "z_mm": c[2], "radius_mm": 1.5, "chi_ppm": 0.0}
                for k, cs in centres.items() for c in cs]
        write_tsv(pd.DataFrame(rows), ann / sub / "anat" / f"{sub}_lesions.tsv")
    return root, ann


def identity_prepare(sub, cache_dir, voxel_size=1.0):
    """Stand-in for ``prepare_subject`` on synthetic data that is already on one grid."""
    mask = sub.dseg.with_name(sub.dseg.name.replace("_dseg", "_desc-brain_mask"))
    return {"t2": sub.t2, "swi": sub.swi, "qsm": sub.qsm, "mask": mask, "dseg": sub.dseg}


def simulated_on_t2_grid(sim):
    """A simulated subject's T2w, SWI and QSM on the T2w grid, using the known SWI→T2w transform.

    Returns ``(volumes dict, mask bool, dseg uint8, affine)`` (no registration: for model tests).
    """
    from scipy.ndimage import affine_transform

    ref = sim.t2
    vols = {"t2": np.asarray(ref.dataobj, np.float32)}
    for m, img in (("swi", sim.swi), ("qsm", sim.qsm)):
        mat = np.linalg.inv(img.affine) @ np.linalg.inv(np.asarray(sim.swi_to_t2)) @ ref.affine
        vols[m] = affine_transform(np.asarray(img.dataobj, np.float32), mat[:3, :3], mat[:3, 3],
                                   output_shape=ref.shape, order=1)
    mask = np.asarray(sim.brain_mask.dataobj) > 0
    return vols, mask, np.asarray(sim.dseg.dataobj).astype(np.uint8), ref.affine
