"""Training data: finding annotated subjects and loading prepared ones into memory (preparing them
through the preprocessing graph is :mod:`workflows.train`)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deepmir_tasks.io import InputError, load_image
from deepmir_tasks.model.config import DSEG_VALUE

log = logging.getLogger(__name__)


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


HARD_EXAMPLES = "hard_examples.json"

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
