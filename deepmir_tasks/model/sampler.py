"""Training patches: lesion-, mimic-, hard-example- and nucleus-centred, augmented, modalities dropped."""

from __future__ import annotations

import logging
import math

import numpy as np

from deepmir_tasks.model.data import TrainSubject

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------- patches
def drop_modalities(x, rng, fraction: float):
    """Zero the channels of a random proper non-empty subset of modalities in ``fraction`` of the
    patches of ``x`` (B, C, ...): a missing modality is a zero channel, the value every
    normalisation gives to typical tissue (robust z-score median, 0 ppm). One model then serves
    every subset of T2w, SWI and QSM."""
    import itertools

    c = x.shape[1]
    keeps = [k for n in range(1, c) for k in itertools.combinations(range(c), n)]
    if not keeps:
        return x
    x = x.clone()
    for b in range(x.shape[0]):
        if rng.random() < fraction:
            keep = keeps[rng.integers(len(keeps))]
            for ch in range(c):
                if ch not in keep:
                    x[b, ch] = 0
    return x


class PatchSampler:
    """Draw (augmented) training patches from in-memory subjects with a numpy ``Generator``."""

    def __init__(self, subjects: list[TrainSubject], patch: int, lesion_fraction: float = 0.67,
                 augment: bool = True, mimic_fraction: float = 0.0, hard_fraction: float = 0.0,
                 bright_fraction: float = 0.0, modality_dropout: float = 0.0):
        self.subjects = subjects
        self.patch = int(patch)
        self.lesion_fraction = lesion_fraction
        self.mimic_fraction = mimic_fraction
        self.hard_fraction = hard_fraction
        self.bright_fraction = bright_fraction
        self.modality_dropout = modality_dropout
        # bright-QSM background (normal nuclei, veins): (subject index, voxel array)
        self.bright = [(si, s.extra["bright"]) for si, s in enumerate(subjects) if len(s.extra.get("bright", ()))]
        # voxel centres of mimics (veins, calcifications, mined false positives: labelled
        # background) and of mined hard lesions (missed or weak), per subject
        self.mimics, self.hard = [], []
        for si, s in enumerate(subjects):
            inv = np.linalg.inv(np.asarray(s.affine, float))
            hard = s.extra.get("hard_examples") or {}
            groups = [(self.mimics, xyz) for xyz in (s.extra.get("mimics") or {}).values()]
            groups += [(self.mimics, hard.get("false_positives", [])), (self.hard, hard.get("weak_lesions", []))]
            for dest, xyz in groups:
                for c in np.asarray(xyz, float).reshape(-1, 3):
                    ijk = np.rint(inv[:3, :3] @ c + inv[:3, 3]).astype(int)
                    if np.all(ijk >= 0) and np.all(ijk < np.array(s.label.shape)):
                        dest.append((si, ijk))
        self.augment = augment
        self.margin = int(math.ceil(self.patch * 0.15)) if augment else 0
        n_classes = max((max(s.lesions, default=0) for s in subjects), default=0)
        # (subject index, lesion index) lists per class, so each lesion is equally likely
        self.by_class = {c: [(si, li) for si, s in enumerate(subjects) for li in range(len(s.lesions.get(c, [])))]
                         for c in range(1, n_classes + 1)}
        self.by_class = {c: v for c, v in self.by_class.items() if v}

    def centre(self, rng):
        r = rng.random()
        start = self.lesion_fraction + self.mimic_fraction + self.hard_fraction
        if self.bright and start <= r < start + self.bright_fraction:
            si, vox = self.bright[rng.integers(len(self.bright))]
            return si, vox[rng.integers(len(vox))].astype(int) + rng.integers(-4, 5, size=3)
        if self.mimics and self.lesion_fraction <= r < self.lesion_fraction + self.mimic_fraction:
            si, centre = self.mimics[rng.integers(len(self.mimics))]
            return si, centre + rng.integers(-self.patch // 4, self.patch // 4 + 1, size=3)
        if self.hard and self.lesion_fraction + self.mimic_fraction <= r < (
                self.lesion_fraction + self.mimic_fraction + self.hard_fraction):
            si, centre = self.hard[rng.integers(len(self.hard))]
            return si, centre + rng.integers(-self.patch // 3, self.patch // 3 + 1, size=3)
        if self.by_class and r < self.lesion_fraction:
            c = list(self.by_class)[rng.integers(len(self.by_class))]
            si, li = self.by_class[c][rng.integers(len(self.by_class[c]))]
            vox = self.subjects[si].lesions[c][li]
            centre = vox[rng.integers(len(vox))].astype(int)
            jitter = rng.integers(-self.patch // 3, self.patch // 3 + 1, size=3)
            return si, centre + jitter
        si = int(rng.integers(len(self.subjects)))
        bv = self.subjects[si].brain_voxels
        return si, bv[rng.integers(len(bv))].astype(int)

    def crop(self, s: TrainSubject, centre, size: int):
        lo = np.asarray(centre) - size // 2
        shape = np.array(s.label.shape)
        src_lo, src_hi = np.maximum(lo, 0), np.minimum(lo + size, shape)
        dst_lo = src_lo - lo
        img = np.zeros((s.image.shape[0], size, size, size), np.float32)
        lab = np.zeros((size, size, size), np.uint8)
        if np.all(src_hi > src_lo):
            ss = tuple(slice(a, b) for a, b in zip(src_lo, src_hi))
            ds = tuple(slice(a, a + (b - c)) for a, b, c in zip(dst_lo, src_hi, src_lo))
            img[(slice(None),) + ds] = s.image[(slice(None),) + ss]
            lab[ds] = s.label[ss]
        return img, lab

    def sample(self, rng, batch: int):
        """Return ``(x float32 (B, C, p, p, p), y int64 (B, p, p, p))`` as torch tensors."""
        import torch

        size = self.patch + 2 * self.margin
        imgs, labs = [], []
        for _ in range(batch):
            si, c = self.centre(rng)
            img, lab = self.crop(self.subjects[si], c, size)
            imgs.append(img)
            labs.append(lab)
        x = torch.from_numpy(np.stack(imgs))
        y = torch.from_numpy(np.stack(labs).astype(np.int64))
        if self.augment:
            x, y = self._spatial(x, y, rng)
            x = self._intensity(x, rng)
        else:
            m = self.margin
            if m:
                sl = (slice(None),) * 2 + (slice(m, m + self.patch),) * 3
                x, y = x[sl], y[sl[1:]]
        if self.modality_dropout > 0:
            x = drop_modalities(x, rng, self.modality_dropout)
        return x.contiguous(), y.contiguous()

    def _spatial(self, x, y, rng):
        import torch
        import torch.nn.functional as F

        b, size, p = x.shape[0], x.shape[-1], self.patch
        thetas = []
        for _ in range(b):
            ang = np.deg2rad(rng.uniform(-12, 12, size=3)) if rng.random() < 0.5 else np.zeros(3)
            scale = rng.uniform(0.9, 1.1) if rng.random() < 0.5 else 1.0
            cx, sx = np.cos(ang), np.sin(ang)
            rx = np.array([[1, 0, 0], [0, cx[0], -sx[0]], [0, sx[0], cx[0]]])
            ry = np.array([[cx[1], 0, sx[1]], [0, 1, 0], [-sx[1], 0, cx[1]]])
            rz = np.array([[cx[2], -sx[2], 0], [sx[2], cx[2], 0], [0, 0, 1]])
            a = rz @ ry @ rx * (p / size) / scale
            flips = np.where(rng.random(3) < 0.5, -1.0, 1.0)
            a = a @ np.diag(flips)
            thetas.append(np.concatenate([a, np.zeros((3, 1))], axis=1))
        theta = torch.tensor(np.stack(thetas), dtype=torch.float32)
        grid = F.affine_grid(theta, (b, 1, p, p, p), align_corners=False)
        xo = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        yo = F.grid_sample(y[:, None].float(), grid, mode="nearest", padding_mode="zeros",
                           align_corners=False)[:, 0].round().long()
        return xo, yo

    def _intensity(self, x, rng):
        import torch

        b, c = x.shape[:2]
        scale = torch.tensor(rng.uniform(0.85, 1.15, size=(b, c, 1, 1, 1)), dtype=torch.float32)
        shift = torch.tensor(rng.uniform(-0.15, 0.15, size=(b, c, 1, 1, 1)), dtype=torch.float32)
        contrast = torch.tensor(rng.uniform(0.8, 1.25, size=(b, c, 1, 1, 1)), dtype=torch.float32)
        mean = x.mean(dim=(2, 3, 4), keepdim=True)
        x = (x - mean) * contrast + mean
        x = x * scale + shift
        sigma = torch.tensor(rng.uniform(0, 0.15, size=(b, 1, 1, 1, 1)), dtype=torch.float32)
        noise = torch.from_numpy(rng.standard_normal(x.shape, dtype=np.float32))
        return x + noise * sigma
