"""How each subject is processed: the settings ``deepmir run`` carries from its command line to the tasks.

:class:`RunSettings` is built once at the edge (the CLI, or :func:`pipelines.run.run_cohort`'s
keywords) and passed whole to :func:`workflows.subject.SubjectPipeline`, which hands each task the
part it uses: ``voxel_size``, ``qsm_units`` and ``allow_resolution`` to preprocessing, ``tta`` to segmentation, ``threshold`` to the
lesion rules (:class:`~deepmir_tasks.lesions.rules.LesionRules`, calibrated by the model's
record), ``report`` to the graph. Every field is part of the subject's cache entry. Where and how
things run (worker, processes, threads, cache folder) is not a setting of the results, and is not
here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from deepmir_tasks.io import InputError

__all__ = ["RunSettings"]


@dataclass(frozen=True)
class RunSettings:
    """Settings of one run, shared by every subject.

    Attributes:
        threshold: voxel probability threshold for a lesion candidate; ``None``: the model's
            calibrated value (its record), 0.5 if it gives none
        voxel_size: working grid voxel size (mm, isotropic)
        tta: average the predictions over mirrored copies (test-time augmentation; 4x the time);
            a model whose record says it was calibrated with it (``inference.tta``) uses it anyway
        report: write the HTML reports
        qsm_units: how the QSM's values are taken: ``"auto"`` (they must look like ppm, else the
            subject fails), ``"ppm"`` (trusted), ``"ppb"`` (divided by 1000)
        allow_resolution: run subjects whose voxel sizes are outside the supported range
            (:data:`deepmir_tasks.preprocess.checks.SUPPORTED_RESOLUTION`), flagged, instead of
            failing them
        recompute_qsm: compute QSM and SWI from the raw multi-echo GRE even when a subject has
            them (subjects without GRE keep theirs)
    """

    threshold: float | None = None
    voxel_size: float = 1.0
    tta: bool = False
    report: bool = True
    qsm_units: str = "auto"
    allow_resolution: bool = False
    recompute_qsm: bool = False

    def __post_init__(self):
        if self.threshold is not None and not 0.0 < self.threshold <= 1.0:
            raise InputError("--threshold", f"must be in (0, 1], got {self.threshold}")
        if not self.voxel_size > 0:
            raise InputError("--voxel-size", f"must be positive, got {self.voxel_size}")
        if self.qsm_units not in ("auto", "ppm", "ppb"):
            raise InputError("--qsm-units", f"must be auto, ppm or ppb, got {self.qsm_units!r}")

    def replace(self, **changes) -> "RunSettings":
        """A copy with some settings changed."""
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict:
        """The settings by name (recorded in ``dataset_description.json``)."""
        return dataclasses.asdict(self)
