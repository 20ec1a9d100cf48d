"""Segmentation of a subject without a T2w (issue 13): a stopgap beside ``SegmentLesions``.

:class:`deepmir_tasks.model.tasks.SegmentLesions` calls
:func:`~deepmir_tasks.model.predictor.segment_subject` without a ``prefix``, which that function then
takes from the T2w's file name, so a subject without a T2w cannot go through it. This task is the
same call with the prefix given. When ``segment_subject`` takes the prefix from the first image
present (a one-line change in ``deepmir_tasks/model/predictor.py``, ``_prefix_from``), the subject
workflow can use ``SegmentLesions`` for every subset and this module can go.
"""

from __future__ import annotations

from pathlib import Path

from fileformats.generic import File
from fileformats.medimage import NiftiGz
from pydra.compose import python

from deepmir_tasks import __version__

__all__ = ["SegmentWithoutT2"]


@python.define
class SegmentWithoutT2(python.Task["SegmentWithoutT2.Outputs"]):
    """Segment CMBs and iron deposits with a DEEPMIR model on SWI and/or QSM (no T2w).

    Args:
        swi: preprocessed SWI (working grid), or None
        qsm: preprocessed QSM in ppm on the same grid, or None (not both None)
        mask: brain mask on the same grid
        model: model weights (.safetensors with its .json record beside it)
        record: the model's JSON record (part of the cache key)
        tta: average predictions over mirrored copies
        version: package version, so that a new release is a new cache entry
    """

    swi: NiftiGz | None = None
    qsm: NiftiGz | None = None
    mask: NiftiGz | None = None
    model: File | None = None
    record: File | None = None
    tta: bool = False
    version: str = __version__

    class Outputs(python.Outputs):
        probseg_cmb: NiftiGz
        probseg_iron: NiftiGz
        dseg: NiftiGz

    @staticmethod
    def function(swi, qsm, mask, model, record, tta, version):
        from deepmir_tasks.io import as_path
        from deepmir_tasks.model.predictor import segment_subject
        from deepmir_tasks.threads import n_threads

        out = segment_subject(None, as_path(swi), as_path(qsm), as_path(mask), Path.cwd(),
                              model_file=as_path(model), tta=tta, threads=n_threads(), prefix="deepmir")
        return out["probseg_cmb"], out["probseg_iron"], out["dseg"]
