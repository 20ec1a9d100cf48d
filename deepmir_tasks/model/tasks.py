"""Pydra task around :func:`deepmir_tasks.model.predictor.segment_subject`."""

from __future__ import annotations

from pathlib import Path

from fileformats.generic import File
from fileformats.medimage import NiftiGz
from pydra.compose import python

from deepmir_tasks import __version__

__all__ = ["SegmentLesions"]


@python.define
class SegmentLesions(python.Task["SegmentLesions.Outputs"]):
    """Segment CMBs and iron deposits with a DEEPMIR model (U-Net on T2w, SWI and QSM).

    It uses the torch CPU threads :func:`deepmir_tasks.threads.n_threads` gives (``DEEPMIR_THREADS``,
    which the cohort runner sets): a thread count is not an input, so it never changes the cache key.

    Args:
        t2: preprocessed T2w (working grid), or None
        swi: preprocessed SWI on the same grid, or None
        qsm: preprocessed QSM in ppm on the same grid, or None (at least one image; the model must
            serve the subset given, see :func:`deepmir_tasks.model.predictor.serves_subsets`)
        mask: brain mask on the same grid
        model: model weights (.safetensors with its .json record beside it); None = bundled default
        record: the model's JSON record, so that a changed record (normalisation, classes) is a new
            cache entry; the model is loaded with the record beside the weights either way
        tta: average predictions over mirrored copies (4× the time)
        version: package version, so that a new release is a new cache entry
    """

    t2: NiftiGz | None = None
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
    def function(t2, swi, qsm, mask, model, record, tta, version):
        from deepmir_tasks.io import as_path
        from deepmir_tasks.model.predictor import segment_subject
        from deepmir_tasks.threads import n_threads

        out = segment_subject(as_path(t2), as_path(swi), as_path(qsm), as_path(mask), Path.cwd(),
                              model_file=as_path(model), tta=tta, threads=n_threads())
        return out["probseg_cmb"], out["probseg_iron"], out["dseg"]
