"""The lesion rules: which candidates become lesions, and why the others are dropped.

:class:`LesionRules` is the one place their defaults are written. A model's record calibrates
some of them (``inference.lesions``, see :meth:`LesionRules.from_record`); the command line may
replace the voxel threshold; the whole object then travels to :func:`extract_lesions` unchanged.

The rules, checked in this order (the first that applies is the ``reason``):

``outside_mask``
    fewer than half of the candidate's voxels lie inside the brain mask;
``too_small``
    fewer than ``min_voxels`` voxels;
``low_probability``
    its largest class probability is below the class's ``min_prob_cmb`` / ``min_prob_iron``;
``negative_qsm``
    mean susceptibility below ``qsm_min_ppm``: a diamagnetic mimic such as a calcification;
``weak_qsm``
    its QSM peak is below ``min_qsm_peak_ppm``: CMBs and iron deposits are paramagnetic, so a
    candidate with no positive susceptibility above the map's noise has no QSM evidence (typically
    one where the QSM is void, outside its toolbox's eroded mask); like ``negative_qsm`` it applies
    only when the subject has a QSM, and a model's record calibrates its value;
``too_large_for_cmb``
    a CMB candidate whose largest extent exceeds ``max_cmb_diameter_mm`` (the clinical 10 mm);
``vein_like``
    a CMB candidate whose QSM-bright region reaches further than ``max_cmb_qsm_extent_mm`` or is
    more elongated than ``max_cmb_qsm_elongation`` (``None`` turns that half off), or an iron
    candidate whose QSM-bright region is more elongated than ``max_iron_qsm_elongation``: iron
    deposits are focal, a vein is a tube (the extent half is not applied to iron, whose deposits
    may spread along a nucleus);
``beside_cmb``
    an iron candidate, left by the rules above, whose centroid lies within ``iron_beside_cmb_mm``
    of a kept CMB's (``None``: off). The network often calls a microbleed in or near a nucleus
    both CMB and iron, as two touching components; one lesion is one class, and a bleed anywhere,
    nuclei included, is a CMB. The distance is the lesion-matching radius, not a tuned value.
    This rule compares candidates with each other: :func:`drop_iron_beside_cmb` applies it to
    the whole candidate list after :func:`drop_reason`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from deepmir_tasks.labels import LESION_CLASSES

__all__ = ["LesionRules", "RECORD_FIELDS", "drop_iron_beside_cmb", "drop_reason"]

#: the rules a model record may calibrate (``inference.lesions``)
RECORD_FIELDS = ("threshold", "min_voxels", "min_prob_cmb", "min_prob_iron", "min_qsm_peak_ppm",
                 "max_cmb_qsm_extent_mm", "max_cmb_qsm_elongation", "max_iron_qsm_elongation", "iron_beside_cmb_mm")


@dataclass(frozen=True)
class LesionRules:
    """The rules of lesion extraction (module docstring).

    Attributes:
        threshold: a voxel is a candidate when its class probability is at least this
        min_voxels: smallest component kept
        max_cmb_diameter_mm: largest CMB extent kept (clinical 10 mm rule)
        qsm_min_ppm: candidates with a lower mean susceptibility are dropped
        min_qsm_peak_ppm: candidates with a lower largest susceptibility are dropped (``weak_qsm``;
            0: off, so that relaxing ``qsm_min_ppm`` keeps diamagnetic candidates)
        min_prob_cmb, min_prob_iron: lesions whose largest probability is lower are dropped
        max_cmb_qsm_extent_mm, max_cmb_qsm_elongation: the ``vein_like`` rule (``None``: off)
        max_iron_qsm_elongation: the ``vein_like`` rule for iron (``None``: off)
        iron_beside_cmb_mm: the ``beside_cmb`` rule (``None``: off)
    """

    threshold: float = 0.5
    min_voxels: int = 3
    max_cmb_diameter_mm: float = 10.0
    qsm_min_ppm: float = 0.0
    min_prob_cmb: float = 0.0
    min_prob_iron: float = 0.0
    min_qsm_peak_ppm: float = 0.0
    max_cmb_qsm_extent_mm: float | None = 6.0
    max_cmb_qsm_elongation: float | None = 3.0
    max_iron_qsm_elongation: float | None = 3.0
    iron_beside_cmb_mm: float | None = 5.0

    def __post_init__(self):
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")

    @classmethod
    def from_record(cls, record: dict | None) -> "LesionRules":
        """The rules a model record calibrated (``inference.lesions``; unknown keys ignored),
        the defaults for the rest."""
        inference = (record or {}).get("inference") or {} if isinstance(record, dict) else {}
        given = inference.get("lesions") or {} if isinstance(inference, dict) else {}
        defaults = cls()
        return cls(**{k: None if v is None else type(getattr(defaults, k))(v)
                      for k, v in given.items() if k in RECORD_FIELDS})

    def replace(self, **changes) -> "LesionRules":
        """A copy with some rules changed; ``min_prob_max={"cmb": p, "iron": q}`` sets the class
        minima (a class it leaves out, or ``None``, keeps every candidate of that class)."""
        if "min_prob_max" in changes:
            by_class = changes.pop("min_prob_max") or {}
            changes = {**{f"min_prob_{c}": float(by_class.get(c, 0.0)) for c in LESION_CLASSES}, **changes}
        return dataclasses.replace(self, **changes)

    def with_threshold(self, threshold: float | None) -> "LesionRules":
        """These rules with the voxel threshold replaced, unless ``threshold`` is ``None``."""
        return self if threshold is None else self.replace(threshold=float(threshold))

    def min_prob(self, label: str) -> float:
        """The smallest largest-probability kept for class ``label``."""
        return float(getattr(self, f"min_prob_{label}"))

    def as_dict(self) -> dict:
        """Every rule by name (for sidecars and reports)."""
        return dataclasses.asdict(self)

    def record_values(self) -> dict:
        """The rules a model record calibrates, by name (:data:`RECORD_FIELDS`)."""
        return {k: getattr(self, k) for k in RECORD_FIELDS}


def drop_reason(rules: LesionRules, row: dict, *, inside_fraction: float, extent_mm: float,
                has_qsm: bool) -> str | None:
    """Why a measured candidate ``row`` is dropped (the first rule that applies), or ``None``.

    ``inside_fraction`` is the fraction of its voxels inside the brain mask, ``extent_mm`` its
    largest extent along its principal axes.
    """
    label = row["label"]
    if inside_fraction < 0.5:
        return "outside_mask"
    if row["n_voxels"] < rules.min_voxels:
        return "too_small"
    if row["prob_max"] < rules.min_prob(label):
        return "low_probability"
    if has_qsm and row["qsm_mean_ppm"] < rules.qsm_min_ppm:
        return "negative_qsm"
    if has_qsm and rules.min_qsm_peak_ppm > 0 and row["qsm_max_ppm"] < rules.min_qsm_peak_ppm:
        return "weak_qsm"
    if label == "cmb" and extent_mm > rules.max_cmb_diameter_mm:
        return "too_large_for_cmb"
    if label == "cmb" and _vein_like(row, rules.max_cmb_qsm_extent_mm, rules.max_cmb_qsm_elongation):
        return "vein_like"
    if label == "iron" and _vein_like(row, None, rules.max_iron_qsm_elongation):
        return "vein_like"
    return None


def _vein_like(row: dict, max_extent, max_elongation) -> bool:
    ext, elong = row["qsm_extent_mm"], row["qsm_elongation"]
    return bool((max_extent is not None and ext == ext and ext > max_extent)
                or (max_elongation is not None and elong == elong and elong > max_elongation))


def drop_iron_beside_cmb(rows: list[dict], rules: LesionRules) -> None:
    """Give ``reason`` ``beside_cmb`` to every iron row still kept whose centroid (``x_mm``,
    ``y_mm``, ``z_mm``) lies within ``rules.iron_beside_cmb_mm`` of a kept CMB row's (in place)."""
    import numpy as np

    if rules.iron_beside_cmb_mm is None:
        return
    cmb = np.array([[r["x_mm"], r["y_mm"], r["z_mm"]] for r in rows
                    if r["label"] == "cmb" and r["reason"] is None], float).reshape(-1, 3)
    if not len(cmb):
        return
    for r in rows:
        if r["label"] == "iron" and r["reason"] is None:
            d = np.linalg.norm(cmb - np.array([r["x_mm"], r["y_mm"], r["z_mm"]], float), axis=1).min()
            if d <= rules.iron_beside_cmb_mm:
                r["reason"] = "beside_cmb"
