"""Training the DEEPMIR U-Net on a BIDS dataset with lesion annotations.

The pieces are plain functions so that each can be tested and reused:

* :func:`find_subjects` lists the BIDS subjects (and sessions) that have T2w/SWI/QSM and an
  annotation dseg (``derivatives/.../sub-XX[_ses-YY]_space-T2w_dseg.nii.gz``, 0/1/2 on the T2w grid).
* :func:`prepare_subject` runs the pipeline's own ``preprocess_subject`` and brings the annotation
  into the working grid with ``resample_labels``; the result is cached on disk per subject, so a
  rerun skips it.
* :class:`PatchSampler` draws training patches with lesions over-represented (a share of patches is
  centred on a lesion, each class equally often, each lesion equally likely whatever its size) and
  augments them (mirroring, small rotations and scalings, intensity and contrast changes, noise).
* :func:`dice_ce_loss` is cross-entropy with class weights plus a soft Dice over the lesion classes.
* :func:`lesion_metrics` scores a label map lesion by lesion (a detection counts when its centroid
  lies within 5 mm of a true lesion of the same class, matched one-to-one, greedily by distance).
* :func:`train` ties them together: k-fold split by subject, seeded, resumable checkpoints
  (weights + optimiser + step + RNG states, read back with ``torch.load(weights_only=True)``),
  periodic lesion-wise validation, and export of the best weights as a model file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deepmir_tasks.io import InputError, atomic_path, load_image, write_json

__all__ = [
    "TrainConfig",
    "SubjectFiles",
    "TrainSubject",
    "find_subjects",
    "split_folds",
    "prepare_subject",
    "load_train_subject",
    "PatchSampler",
    "dice_ce_loss",
    "lesion_components",
    "match_lesions",
    "lesion_metrics",
    "match_counts",
    "evaluate_predictor",
    "mine_hard_examples",
    "save_checkpoint",
    "load_checkpoint",
    "train",
]

log = logging.getLogger(__name__)

ALL_CLASSES = ("cmb", "iron")
DSEG_VALUE = {"cmb": 1, "iron": 2}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run (stored in checkpoints and in the model record)."""

    modalities: tuple = ("t2", "swi", "qsm")
    classes: tuple = ("cmb", "iron")  # lesion classes; background is added in front
    levels: int = 5
    base: int = 16
    max_width: int = 128
    norm: str = "batch"
    patch: int = 48
    batch: int = 2
    steps: int = 2000
    lr: float = 2e-3
    weight_decay: float = 1e-5
    lesion_fraction: float = 0.67
    mimic_fraction: float = 0.2  # patches centred on veins / calcifications (hard negatives)
    hard_fraction: float = 0.0   # patches centred on mined hard lesions (see mine_hard_examples)
    bright_fraction: float = 0.0  # patches centred on bright-QSM background: normal deep nuclei, veins
    modality_dropout: float = 0.0  # share of patches that see only a random non-empty subset of modalities
    grow_small_cmb: int = 0      # training labels of small CMBs grown by this many voxels (class_labels)
    class_weights: tuple = (1.0, 3.0, 3.0)
    dice_weight: float = 1.0
    seed: int = 0
    folds: int = 5
    fold: int = 0
    validate_every: int = 500
    checkpoint_seconds: float = 300.0
    voxel_size: float = 1.0
    augment: bool = True

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_json(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names})


# ---------------------------------------------------------------------- finding data
@dataclass(frozen=True)
class SubjectFiles:
    participant_id: str          # "sub-01"
    session_id: str | None       # "ses-01" or None
    t2: Path | None
    swi: Path | None
    qsm: Path | None
    dseg: Path
    lesions_tsv: Path | None = None

    @property
    def key(self) -> str:
        return self.participant_id + (f"_{self.session_id}" if self.session_id else "")


def find_subjects(bids_dir, annotations_dir, modalities=("t2", "swi", "qsm")) -> list[SubjectFiles]:
    """Subjects (and sessions) of a BIDS dataset that have the modalities and an annotation dseg."""
    bids_dir, annotations_dir = Path(bids_dir), Path(annotations_dir)
    if not bids_dir.is_dir():
        raise InputError(bids_dir, "BIDS folder does not exist")
    if not annotations_dir.is_dir():
        raise InputError(annotations_dir, "annotations folder does not exist")
    suffix = {"t2": "T2w", "swi": "swi", "qsm": "Chimap"}
    found = []
    for t2 in sorted(bids_dir.glob("sub-*/**/anat/*_T2w.nii*")) + sorted(bids_dir.glob("sub-*/anat/*_T2w.nii*")):
        stem = t2.name.split("_T2w")[0]
        m = re.match(r"(sub-[A-Za-z0-9]+)(?:_(ses-[A-Za-z0-9]+))?", stem)
        if not m:
            continue
        sub, ses = m.group(1), m.group(2)
        rel = Path(sub) / (ses or "") / "anat"
        key = f"{sub}_{ses}" if ses else sub
        files = {}
        for mod, suf in suffix.items():
            hits = sorted(t2.parent.glob(f"{stem}_{suf}.nii*"))
            files[mod] = hits[0] if hits else None
        dsegs = sorted((annotations_dir / rel).glob(f"{key}*_space-T2w_dseg.nii*"))
        if not dsegs:
            log.warning("%s: no annotation dseg under %s; skipped", key, annotations_dir / rel)
            continue
        tsv = sorted((annotations_dir / rel).glob(f"{key}*_lesions.tsv"))
        missing = [suffix[m] for m in modalities if files[m] is None]
        if missing:
            raise InputError(t2.parent, f"{key} lacks {', '.join(missing)} needed for training "
                                        f"with modalities {list(modalities)}")
        found.append(SubjectFiles(sub, ses, files["t2"], files["swi"], files["qsm"], dsegs[0],
                                  tsv[0] if tsv else None))
    uniq = {s.key: s for s in found}
    if not uniq:
        raise InputError(bids_dir, f"no subject with a T2w image and an annotation dseg in {annotations_dir}")
    return [uniq[k] for k in sorted(uniq)]


def split_folds(keys, folds: int, fold: int, seed: int = 0) -> tuple[list, list]:
    """Split subjects (by participant, so sessions stay together) into train / validation."""
    if folds <= 1:
        return list(keys), []
    if not 0 <= fold < folds:
        raise ValueError(f"fold must be in 0..{folds - 1}, got {fold}")
    parts = sorted({k.split("_")[0] for k in keys})
    if len(parts) < folds:
        raise ValueError(f"{folds} folds need at least {folds} participants, have {len(parts)}")
    order = np.random.default_rng(seed).permutation(len(parts))
    val_parts = {parts[i] for n, i in enumerate(order) if n % folds == fold}
    train = [k for k in keys if k.split("_")[0] not in val_parts]
    val = [k for k in keys if k.split("_")[0] in val_parts]
    return train, val


# ---------------------------------------------------------------------- preparation
def prepare_subject(sub: SubjectFiles, cache_dir, voxel_size: float = 1.0) -> dict:
    """Preprocess one subject (cached): working-grid t2/swi/qsm/mask and the annotation dseg.

    Returns a dict of paths with keys ``t2``, ``swi``, ``qsm``, ``mask``, ``dseg``, ``t2_to_mni``.
    The cache is ``cache_dir/<key>/prepared.json``; it is reused when all its files still exist.
    """
    out_dir = Path(cache_dir) / sub.key
    marker = out_dir / "prepared.json"
    if marker.exists():
        try:
            rec = json.loads(marker.read_text())
            paths = {k: out_dir / v for k, v in rec["files"].items()}
            if rec.get("voxel_size") == voxel_size and all(p.exists() for p in paths.values()):
                return paths
        except (json.JSONDecodeError, KeyError):
            pass
    from deepmir_tasks.preprocess import preprocess_subject, resample_labels

    t0 = time.perf_counter()
    res = preprocess_subject(sub.t2, sub.swi, sub.qsm, out_dir, voxel_size=voxel_size)
    dseg = resample_labels(sub.dseg, res["t2"], out_dir / f"{sub.key}_space-work_desc-annotation_dseg.nii.gz")
    paths = {k: Path(res[k]) for k in ("t2", "swi", "qsm", "mask") if res.get(k) is not None}
    paths["dseg"] = Path(dseg)
    if res.get("t2_to_mni") is not None:
        paths["t2_to_mni"] = Path(res["t2_to_mni"])
    write_json({"files": {k: str(p.relative_to(out_dir)) if p.is_relative_to(out_dir) else str(p)
                          for k, p in paths.items()},
                "voxel_size": voxel_size, "seconds": round(time.perf_counter() - t0, 1),
                "source": {"t2": str(sub.t2), "swi": str(sub.swi), "qsm": str(sub.qsm), "dseg": str(sub.dseg)}},
               marker)
    return paths


@dataclass
class TrainSubject:
    """One prepared subject in memory: normalised image, class-index labels, lesion list."""

    key: str
    image: np.ndarray          # (C, X, Y, Z) float16, normalised
    label: np.ndarray          # (X, Y, Z) uint8, indices into ("background",) + classes
    mask: np.ndarray           # (X, Y, Z) bool
    affine: np.ndarray
    lesions: dict = field(default_factory=dict)   # class index -> list of (n, 3) voxel index arrays
    brain_voxels: np.ndarray | None = None        # (n, 3) int16, for random patches
    dseg: np.ndarray | None = None                # original 0/1/2 labels (for validation)
    extra: dict = field(default_factory=dict)


#: CMB components with fewer voxels than this count as small for ``grow_small_cmb``
SMALL_CMB_VOXELS = 8


def class_labels(dseg: np.ndarray, classes, grow_small_cmb: int = 0) -> tuple[np.ndarray, dict]:
    """Training labels (0 background, then 1.. in the order of ``classes``) from an annotation dseg,
    and the voxel coordinates of each lesion (26-connected component) per class.

    ``grow_small_cmb`` > 0 grows the label of every CMB smaller than :data:`SMALL_CMB_VOXELS` by that
    many voxels (26-neighbourhood, into background only). An annotation drawn on thick slices
    places a one-voxel microbleed up to a voxel or two off its dark dot in the working grid; the
    grown label covers the dot, so the network is not taught that the dot itself is background.
    The lesion voxel lists stay those of the annotation.
    """
    import cc3d
    from scipy import ndimage

    label = np.zeros(dseg.shape, np.uint8)
    lesions = {}
    for ci, name in enumerate(classes, start=1):
        sel = dseg == DSEG_VALUE[name]
        label[sel] = ci
        cc = cc3d.connected_components(sel.astype(np.uint8), connectivity=26)
        lesions[ci] = [np.argwhere(cc == i).astype(np.int16) for i in range(1, int(cc.max()) + 1)]
    if grow_small_cmb > 0 and "cmb" in classes:
        ci = list(classes).index("cmb") + 1
        small = np.zeros(dseg.shape, bool)
        for vox in lesions[ci]:
            if len(vox) < SMALL_CMB_VOXELS:
                small[tuple(vox.T)] = True
        grown = ndimage.binary_dilation(small, np.ones((3, 3, 3), bool), iterations=int(grow_small_cmb))
        label[grown & (label == 0)] = ci
    return label, lesions


#: QSM level (ppm) above which unlabelled brain counts as bright background (normal deep grey
#: nuclei reach 0.1-0.25 ppm with age: globus pallidus, putamen, substantia nigra, dentate)
BRIGHT_QSM_PPM = 0.08


def bright_background(qsm: np.ndarray, label: np.ndarray, mask: np.ndarray, *, min_ppm: float = BRIGHT_QSM_PPM,
                      margin: int = 3, max_points: int = 4000, seed: int = 0) -> np.ndarray:
    """Voxel indices (n, 3) of paramagnetic brain that is not a lesion, at least ``margin`` voxels
    from any labelled lesion: hard negatives for the iron class (normal nuclei at every age).
    At most ``max_points``, drawn evenly at random."""
    from scipy import ndimage

    near = ndimage.binary_dilation(label > 0, np.ones((3, 3, 3), bool), iterations=margin) if label.any() \
        else np.zeros(label.shape, bool)
    idx = np.argwhere((qsm > min_ppm) & mask & ~near)
    if len(idx) > max_points:
        idx = idx[np.random.default_rng(seed).choice(len(idx), max_points, replace=False)]
    return idx.astype(np.int16)


def load_train_subject(key: str, paths: dict, modalities, classes, normalization,
                       grow_small_cmb: int = 0) -> TrainSubject:
    """Load a prepared subject: normalise its modalities and map the dseg to class indices."""
    from deepmir_tasks.model.normalize import normalize_volume

    mimg = load_image(paths["mask"], what="brain mask")
    mask = np.asarray(mimg.dataobj) > 0
    chans = []
    for m in modalities:
        data = np.asarray(load_image(paths[m], what=m).dataobj, dtype=np.float32)
        chans.append(normalize_volume(data, mask, normalization[m]).astype(np.float16))
    dseg = np.asarray(load_image(paths["dseg"], what="annotation dseg", allow_empty=True).dataobj).astype(np.uint8)
    label, lesions = class_labels(dseg, classes, grow_small_cmb)
    ts = TrainSubject(key, np.stack(chans), label, mask, mimg.affine, lesions,
                      np.argwhere(mask).astype(np.int16), dseg)
    if "qsm" in paths:
        qsm = np.asarray(load_image(paths["qsm"], what="qsm").dataobj, dtype=np.float32)
        ts.extra["bright"] = bright_background(qsm, label, mask)
    return ts


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


# ---------------------------------------------------------------------- loss
def dice_ce_loss(logits, target, class_weights=None, dice_weight: float = 1.0):
    """Weighted cross-entropy + (1 - soft Dice) averaged over the foreground classes (batch Dice)."""
    import torch
    import torch.nn.functional as F

    n = logits.shape[1]
    w = None if class_weights is None else torch.as_tensor(class_weights, dtype=logits.dtype,
                                                           device=logits.device)
    ce = F.cross_entropy(logits, target, weight=w)
    if dice_weight == 0 or n < 2:
        return ce
    prob = torch.softmax(logits, dim=1)[:, 1:]
    onehot = F.one_hot(target, n).permute(0, 4, 1, 2, 3)[:, 1:].to(prob.dtype)
    dims = (0, 2, 3, 4)
    inter = (prob * onehot).sum(dims)
    denom = prob.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + 1.0) / (denom + 1.0)
    return ce + dice_weight * (1 - dice).mean()


# ---------------------------------------------------------------------- lesion-wise metrics
def lesion_components(labels: np.ndarray, value: int, affine) -> np.ndarray:
    """World-mm centroids (n, 3) of the 26-connected components of ``labels == value``."""
    import cc3d

    cc = cc3d.connected_components((labels == value).astype(np.uint8), connectivity=26)
    n = int(cc.max())
    if n == 0:
        return np.zeros((0, 3))
    stats = cc3d.statistics(cc)
    cent = np.asarray(stats["centroids"])[1:n + 1]
    return cent @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]


def match_lesions(pred_xyz, true_xyz, max_dist: float = 5.0) -> list[tuple[int, int, float]]:
    """One-to-one greedy matching by distance (``deepmir_tasks.lesions.metrics``); pairs
    ``(pred_index, true_index, distance_mm)``."""
    from deepmir_tasks.lesions.metrics import match_lesions as _match

    return list(_match(pred_xyz, true_xyz, tolerance_mm=max_dist).pairs)


def lesion_metrics(pred_dseg, true_dseg, affine, classes=ALL_CLASSES, max_dist: float = 5.0,
                   other_xyz: dict | None = None) -> dict:
    """Lesion-wise counts and figures per class for one subject.

    ``pred_dseg``/``true_dseg`` hold 0/1/2 (background/CMB/iron). ``other_xyz`` may map a name
    (e.g. ``"calcification"``) to world-mm centres of mimics; the result then counts, per class,
    how many predicted lesions lie within ``max_dist`` of one (``<class>_on_<name>``).
    """
    return {name: match_counts(lesion_components(pred_dseg, DSEG_VALUE[name], affine),
                               lesion_components(true_dseg, DSEG_VALUE[name], affine), max_dist, other_xyz)
            for name in classes}


def match_counts(pred_xyz, true_xyz, max_dist: float = 5.0, other_xyz: dict | None = None) -> dict:
    """Counts of one class in one subject from world-mm centroids: ``tp``/``fp``/``fn`` (one-to-one
    matching within ``max_dist``), ``n_pred``/``n_true``, and ``on_<name>`` for each entry of
    ``other_xyz``: predicted lesions within ``max_dist`` of one of those centres."""
    pred_xyz = np.asarray(pred_xyz, float).reshape(-1, 3)
    tp = len(match_lesions(pred_xyz, true_xyz, max_dist))
    out = {"tp": tp, "fp": len(pred_xyz) - tp, "fn": len(true_xyz) - tp, "n_pred": len(pred_xyz),
           "n_true": len(true_xyz)}
    for oname, oxyz in (other_xyz or {}).items():
        oxyz = np.asarray(oxyz, float).reshape(-1, 3)
        hits = 0
        if len(pred_xyz) and len(oxyz):
            hits = int((np.linalg.norm(pred_xyz[:, None] - oxyz[None], axis=-1).min(1) <= max_dist).sum())
        out[f"on_{oname}"] = hits
    return out


def summarise_metrics(per_subject: list[dict], classes=ALL_CLASSES) -> dict:
    """Pool lesion counts over subjects; sensitivity, precision and F1 per class."""
    out = {}
    for name in classes:
        agg = {}
        for m in per_subject:
            for k, v in m.get(name, {}).items():
                agg[k] = agg.get(k, 0) + v
        tp, fp, fn = agg.get("tp", 0), agg.get("fp", 0), agg.get("fn", 0)
        sens = tp / (tp + fn) if tp + fn else float("nan")
        prec = tp / (tp + fp) if tp + fp else float("nan")
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
        out[name] = dict(agg, sensitivity=round(sens, 4), precision=round(prec, 4), f1=round(f1, 4))
    return out


def _truth_mimics(sub_extra: dict, affine=None) -> dict:
    return sub_extra.get("mimics", {})


def read_mimics(lesions_tsv) -> dict:
    """World-mm centres of non-target lesions (calcifications, veins) from a truth lesions.tsv."""
    import pandas as pd

    if lesions_tsv is None or not Path(lesions_tsv).exists():
        return {}
    df = pd.read_csv(lesions_tsv, sep="\t")
    if "kind" not in df or not {"x_mm", "y_mm", "z_mm"} <= set(df.columns):
        return {}
    return {kind: df.loc[df["kind"] == kind, ["x_mm", "y_mm", "z_mm"]].to_numpy(float)
            for kind in ("calcification", "vein") if (df["kind"] == kind).any()}


def evaluate_predictor(predictor, subjects: list[TrainSubject], tta: bool = False) -> dict:
    """Lesion-wise figures of ``predictor`` on prepared subjects (``extra["volumes"]`` raw data)."""
    from deepmir_tasks.model.predictor import DSEG_LABELS

    per = []
    for s in subjects:
        vols = s.extra["volumes"]
        probs = predictor.predict(vols, s.mask, tta=tta)
        lab = predictor.labels(probs, s.mask)
        dseg = np.zeros(lab.shape, np.uint8)
        for i, name in enumerate(predictor.classes):
            if name in DSEG_LABELS:
                dseg[lab == i] = DSEG_LABELS[name]
        classes = [c for c in predictor.classes if c in DSEG_VALUE]
        per.append(lesion_metrics(dseg, s.dseg, s.affine, classes, other_xyz=s.extra.get("mimics")))
    classes = [c for c in predictor.classes if c in DSEG_VALUE]
    return {"n_subjects": len(subjects), **summarise_metrics(per, classes)}


def _score(summary: dict, classes) -> float:
    vals = [summary[c]["f1"] for c in classes if c in summary and not math.isnan(summary[c]["f1"])]
    return float(np.mean(vals)) if vals else 0.0


#: per-subject file of mined hard examples in the preprocessing cache
HARD_EXAMPLES = "hard_examples.json"


def mine_hard_examples(predictor, subjects: list[TrainSubject], cache_dir, *, min_prob: float = 0.3,
                       weak_below: float = 0.98, max_dist: float = 5.0) -> dict:
    """Run ``predictor`` on training subjects and write what it gets wrong, for the sampler.

    Per subject, ``<cache_dir>/<key>/hard_examples.json`` holds world-mm centres of
    ``false_positives`` (components of a lesion class's probability above ``min_prob`` with no
    true lesion of that class within ``max_dist``) and ``weak_lesions`` (true lesions whose peak
    probability of their class stays below ``weak_below``). Training with ``hard_fraction`` > 0
    then centres that share of patches on weak lesions and adds the false positives to the
    background look-alikes of ``mimic_fraction``. Returns the counts per subject.
    """
    import cc3d
    from scipy import ndimage

    out = {}
    for s in subjects:
        probs = predictor.predict(s.extra["volumes"], s.mask)
        fps, weak = [], []
        for ci, name in enumerate(predictor.classes):
            if name not in DSEG_VALUE:
                continue
            xyz = lesion_components((probs[ci] > min_prob) & s.mask, True, s.affine)
            true = lesion_components(s.dseg, DSEG_VALUE[name], s.affine)
            if len(xyz):
                near = (np.linalg.norm(xyz[:, None] - true[None], axis=-1).min(1) <= max_dist) if len(true) \
                    else np.zeros(len(xyz), bool)
                fps += xyz[~near].round(2).tolist()
            tcc = cc3d.connected_components((s.dseg == DSEG_VALUE[name]).astype(np.uint8), connectivity=26)
            m = int(tcc.max())
            if m:
                grown = ndimage.grey_dilation(tcc, size=(3, 3, 3))
                peak = ndimage.maximum(probs[ci], grown, np.arange(1, m + 1))
                cent = np.asarray(cc3d.statistics(tcc)["centroids"])[1:m + 1]
                xyz = cent @ s.affine[:3, :3].T + s.affine[:3, 3]
                weak += xyz[np.asarray(peak) < weak_below].round(2).tolist()
        rec = {"false_positives": fps, "weak_lesions": weak, "model": predictor.source,
               "min_prob": min_prob, "weak_below": weak_below}
        write_json(rec, Path(cache_dir) / s.key / HARD_EXAMPLES)
        out[s.key] = {"false_positives": len(fps), "weak_lesions": len(weak)}
        log.info("%s: %d false positives, %d weak lesions", s.key, len(fps), len(weak))
    return out


# ---------------------------------------------------------------------- checkpoints
def save_checkpoint(path, net, optimizer, step: int, rng, config: TrainConfig, state: dict) -> Path:
    """Weights, optimiser, step and RNG states in one file readable with ``weights_only=True``."""
    import torch

    ckpt = {
        "model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "step": int(step),
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": json.dumps(rng.bit_generator.state),
        "config": json.dumps(config.to_json()),
        "state": json.dumps(state),
    }
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)
    return Path(path)


def load_checkpoint(path) -> dict:
    import pickle

    import torch

    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as err:
        raise InputError(path, f"checkpoint could not be read ({str(err).splitlines()[0][:200]})") from None
    for key in ("model", "optimizer", "step", "numpy_rng", "config"):
        if key not in ckpt:
            raise InputError(path, f"not a DEEPMIR training checkpoint (no {key!r})")
    return ckpt


def checkpoint_path(out) -> Path:
    out = Path(out)
    return out.with_name(out.name.removesuffix(".safetensors") + ".ckpt.pt")


# ---------------------------------------------------------------------- training
def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device", "CUDA was asked for but no GPU is available")
    return torch.device(name)


def build_record(config: TrainConfig, normalization: dict, training: dict, validation: dict) -> dict:
    from deepmir_tasks import __version__

    return {
        "architecture": {"name": "UNet", "in_channels": len(config.modalities),
                         "n_classes": len(config.classes) + 1, "levels": config.levels,
                         "base": config.base, "dim": 3, "norm": config.norm, "max_width": config.max_width},
        "modalities": list(config.modalities),
        "normalization": {m: normalization[m] for m in config.modalities},
        "classes": ["background", *config.classes],
        "inference": {"thresholds": None, "max_voxels": 7_000_000},
        "training": training,
        "validation": validation,
        "package_version": __version__,
    }


def load_subjects(bids_dir, annotations_dir, cache_dir, config: TrainConfig, normalization: dict,
                  keys=None, with_volumes=False, progress=True) -> list[TrainSubject]:
    """Find, prepare (cached) and load subjects; ``with_volumes`` keeps raw volumes for validation."""
    from tqdm import tqdm

    subs = find_subjects(bids_dir, annotations_dir, config.modalities)
    if keys is not None:
        subs = [s for s in subs if s.key in set(keys)]
    out = []
    for sub in tqdm(subs, desc="prepare", unit="subject", disable=not progress):
        paths = prepare_subject(sub, cache_dir, config.voxel_size)
        ts = load_train_subject(sub.key, paths, config.modalities, config.classes, normalization,
                                config.grow_small_cmb)
        ts.extra["mimics"] = read_mimics(sub.lesions_tsv)
        hard = Path(cache_dir) / sub.key / HARD_EXAMPLES
        if config.hard_fraction > 0 and hard.exists():
            ts.extra["hard_examples"] = json.loads(hard.read_text())
        ts.extra["paths"] = {k: str(v) for k, v in paths.items()}
        if with_volumes:
            ts.extra["volumes"] = {m: np.asarray(load_image(paths[m]).dataobj, np.float32)
                                   for m in config.modalities}
        out.append(ts)
    return out


def train(bids_dir, annotations_dir, out, config: TrainConfig = TrainConfig(), *, cache_dir=None,
          resume=None, threads: int | None = None, device: str = "auto", progress: bool = True,
          normalization: dict | None = None, training_info: dict | None = None,
          stop_at: int | None = None, max_seconds: float | None = None, overrides: dict | None = None) -> dict:
    """Train a model and write it to ``out`` (``.safetensors`` + ``.json``) with a checkpoint beside.

    ``resume``: a checkpoint path, or ``True`` for the default one beside ``out``
    (``<out>.ckpt.pt``); training then continues from its step with its optimiser and RNG states
    (the configuration stored in the checkpoint is used, except ``steps``: the cosine schedule is
    recomputed for the new total, which may be larger or smaller than before but not below the
    checkpoint's step). ``overrides`` replaces fields of the stored configuration on resume
    (e.g. ``{"hard_fraction": 0.2}`` to fine-tune with mined hard examples).
    ``stop_at`` / ``max_seconds`` end this run early (after that step / that much time) with a
    checkpoint, without changing the schedule, so a later ``resume`` continues exactly.
    Returns a dict with ``model``, ``record``, ``checkpoint``, ``step`` and ``validation``.
    """
    import torch
    from tqdm import tqdm

    from deepmir_tasks.model.modelfile import build_network, save_model
    from deepmir_tasks.model.normalize import DEFAULT_NORMALIZATION
    from deepmir_tasks.model.predictor import Predictor

    out = Path(out)
    if not out.name.endswith(".safetensors"):
        raise InputError(out, "--out must name a .safetensors file")
    ckpt_file = checkpoint_path(out)
    ckpt = None
    if resume:
        rpath = ckpt_file if resume is True else Path(resume)
        if rpath.exists():
            ckpt = load_checkpoint(rpath)
            stored = TrainConfig.from_json(json.loads(ckpt["config"]))
            if config.steps < int(ckpt["step"]):
                raise InputError(rpath, f"checkpoint is at step {int(ckpt['step'])}, past the {config.steps} steps asked for")
            # the stored configuration wins, except the number of steps (the schedule is stretched
            # or shortened from the current step on)
            config = dataclasses.replace(stored, steps=config.steps, **(overrides or {}))
            log.info("resuming from %s at step %d", rpath, ckpt["step"])
        elif resume is not True:
            raise InputError(rpath, "checkpoint to resume from does not exist")
    unknown = [c for c in config.classes if c not in DSEG_VALUE]
    if unknown or not config.classes:
        raise InputError("--classes", f"classes must be a non-empty subset of {list(DSEG_VALUE)}, got {list(config.classes)}")
    normalization = normalization or DEFAULT_NORMALIZATION
    if threads:
        torch.set_num_threads(int(threads))
    dev = _device(device)
    cache_dir = Path(cache_dir) if cache_dir else out.parent / (out.name.removesuffix(".safetensors") + "_cache")

    keys = [s.key for s in find_subjects(bids_dir, annotations_dir, config.modalities)]
    try:
        train_keys, val_keys = split_folds(keys, config.folds, config.fold, config.seed)
    except ValueError as err:
        raise InputError(bids_dir, str(err)) from None
    train_subs = load_subjects(bids_dir, annotations_dir, cache_dir, config, normalization, train_keys,
                               progress=progress)
    val_subs = load_subjects(bids_dir, annotations_dir, cache_dir, config, normalization, val_keys,
                             with_volumes=True, progress=progress) if val_keys else []

    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    arch = build_record(config, normalization, {}, {})["architecture"]
    net = build_network(arch).to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    state = {"best_score": -1.0, "best_step": None, "best_validation": None, "history": []}
    step = 0
    if ckpt is not None:
        net.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        step = int(ckpt["step"])
        rng.bit_generator.state = json.loads(ckpt["numpy_rng"])
        if "torch_rng" in ckpt:
            torch.set_rng_state(ckpt["torch_rng"])
        state = json.loads(ckpt.get("state", "{}")) or state
    sampler = PatchSampler(train_subs, config.patch, config.lesion_fraction, config.augment,
                           config.mimic_fraction, config.hard_fraction, config.bright_fraction,
                           config.modality_dropout)
    weights = list(config.class_weights)[: len(config.classes) + 1]
    weights += [weights[-1]] * (len(config.classes) + 1 - len(weights))

    def lr_at(s):  # linear warm-up, then cosine decay to 5 %
        warm = max(1, min(100, config.steps // 10))
        if s < warm:
            return config.lr * (s + 1) / warm
        frac = (s - warm) / max(config.steps - warm, 1)
        return config.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))

    training = {
        "config": config.to_json(),
        "bids_dir": str(bids_dir),
        "subjects_train": train_keys,
        "subjects_validation": val_keys,
        "device": str(dev),
        **(training_info or {}),
    }
    def export(validation, step_now):
        record = build_record(config, normalization, dict(training, steps_done=step_now), validation)
        return save_model(net, out, record)

    def validate(step_now):
        net.eval()
        pred = Predictor(net, build_record(config, normalization, {}, {}), device=str(dev))
        t0 = time.perf_counter()
        summary = evaluate_predictor(pred, val_subs)
        summary["step"] = step_now
        summary["seconds"] = round(time.perf_counter() - t0, 1)
        net.train()
        return summary

    last_ckpt = time.monotonic()
    losses = []
    net.train()
    bar = tqdm(total=config.steps, initial=step, desc="train", unit="step", disable=not progress)
    t_start = time.perf_counter()
    t_run = time.monotonic()
    while step < config.steps:
        if (stop_at is not None and step >= stop_at) or (max_seconds and time.monotonic() - t_run > max_seconds):
            save_checkpoint(ckpt_file, net, opt, step, rng, config, state)
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        x, y = sampler.sample(rng, config.batch)
        x, y = x.to(dev), y.to(dev)
        loss = dice_ce_loss(net(x), y, weights, config.dice_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        losses.append(float(loss.detach()))
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if step % 100 == 0:
            log.info("step %d/%d loss %.4f lr %.2e (%.2f s/step)", step, config.steps, np.mean(losses[-100:]),
                     lr_at(step - 1), (time.perf_counter() - t_start) / max(len(losses), 1))
        validated = False
        if val_subs and (step % config.validate_every == 0 or step == config.steps):
            summary = validate(step)
            summary["train_loss"] = round(float(np.mean(losses[-config.validate_every:])), 5)
            state["history"].append(summary)
            score = _score(summary, config.classes)
            log.info("step %d validation %s", step, json.dumps(summary))
            bar.write(f"step {step}: validation " + ", ".join(
                f"{c} sens {summary[c]['sensitivity']:.3f} prec {summary[c]['precision']:.3f}"
                for c in config.classes))
            if score > state["best_score"]:
                state.update(best_score=score, best_step=step, best_validation=summary)
                export({"fold": config.fold, "folds": config.folds, **summary}, step)
            validated = True
        if not val_subs and (step % config.validate_every == 0 or step == config.steps):
            state["history"].append({"step": step, "train_loss": round(float(np.mean(losses[-config.validate_every:])), 5)})
            export({"note": "no validation fold (folds <= 1)", "train_loss": state["history"][-1]["train_loss"]}, step)
            validated = True
        if validated or time.monotonic() - last_ckpt > config.checkpoint_seconds or step == config.steps:
            save_checkpoint(ckpt_file, net, opt, step, rng, config, state)
            last_ckpt = time.monotonic()
    bar.close()
    if not out.exists():
        export({"note": "not validated", "train_loss": float(np.mean(losses[-50:])) if losses else None}, step)
    from deepmir_tasks.model.modelfile import record_path

    return {"model": out, "record": record_path(out), "checkpoint": ckpt_file, "step": step,
            "validation": state.get("best_validation"), "history": state.get("history"),
            "seconds": round(time.perf_counter() - t_start, 1)}
