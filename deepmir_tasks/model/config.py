"""The configuration of a training run (stored in checkpoints and in the model record)."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from deepmir_tasks.labels import DSEG_LABELS, LESION_CLASSES

log = logging.getLogger(__name__)

#: the lesion classes a model can learn, and their values in an annotation dseg (deepmir_tasks.labels)
ALL_CLASSES = LESION_CLASSES
DSEG_VALUE = {name: DSEG_LABELS[name] for name in LESION_CLASSES}


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
