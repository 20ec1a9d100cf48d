"""Pydra tasks around :func:`~deepmir_tasks.lesions.extract.extract_lesions_files` and
:func:`~deepmir_tasks.lesions.tables.combine_tables`."""

from __future__ import annotations

from pathlib import Path

from fileformats.generic import File
from fileformats.medimage import NiftiGz
from pydra.compose import python

from deepmir_tasks import __version__

__all__ = ["ExtractLesions", "CombineTables"]


from deepmir_tasks.io import as_path as _fspath


@python.define
class ExtractLesions(python.Task["ExtractLesions.Outputs"]):
    """Per-lesion table (size, location, probability, QSM, SWI contrast, MARS region) of one subject.

    Args:
        probseg_cmb: CMB probability map (working grid)
        probseg_iron: iron probability map (same grid)
        dseg: DEEPMIR label map (same grid); used for a class whose probability map is missing
        qsm: QSM in ppm (same grid)
        swi: SWI (same grid)
        mask: brain mask (same grid)
        t2_to_mni: text file with the 4x4 T2w world -> MNI world affine, for the region column
        participant_id: BIDS participant label, with or without 'sub-'
        session_id: BIDS session label, or None
        threshold: probability at or above which a voxel is a candidate
        min_voxels: smallest component kept
        max_cmb_diameter_mm: largest CMB extent kept (clinical 10 mm rule)
        qsm_min_ppm: candidates with a lower mean susceptibility are dropped (diamagnetic mimics)
        min_prob_cmb: CMB lesions whose largest probability is lower are dropped
        min_prob_iron: iron lesions whose largest probability is lower are dropped
        max_cmb_qsm_extent_mm: CMB candidates whose QSM-bright region reaches further are dropped as vein-like
        max_cmb_qsm_elongation: CMB candidates whose QSM-bright region is more elongated are dropped as vein-like
        version: package version, so that a new release is a new cache entry
    """

    probseg_cmb: NiftiGz | None = None
    probseg_iron: NiftiGz | None = None
    dseg: NiftiGz | None = None
    qsm: NiftiGz | None = None
    swi: NiftiGz | None = None
    mask: NiftiGz | None = None
    t2_to_mni: File | None = None
    participant_id: str
    session_id: str | None = None
    threshold: float = 0.5
    min_voxels: int = 3
    max_cmb_diameter_mm: float = 10.0
    qsm_min_ppm: float = 0.0
    min_prob_cmb: float = 0.0
    min_prob_iron: float = 0.0
    max_cmb_qsm_extent_mm: float = 6.0
    max_cmb_qsm_elongation: float = 3.0
    version: str = __version__

    class Outputs(python.Outputs):
        lesions: File
        lesions_json: File
        dropped: File
        summary: File
        dseg: NiftiGz

    @staticmethod
    def function(probseg_cmb, probseg_iron, dseg, qsm, swi, mask, t2_to_mni, participant_id, session_id,
                 threshold, min_voxels, max_cmb_diameter_mm, qsm_min_ppm, min_prob_cmb, min_prob_iron,
                 max_cmb_qsm_extent_mm, max_cmb_qsm_elongation, version):
        from deepmir_tasks.lesions.extract import extract_lesions_files

        out = extract_lesions_files(
            _fspath(probseg_cmb), _fspath(probseg_iron), _fspath(dseg), _fspath(qsm), _fspath(swi),
            _fspath(mask), Path.cwd(), participant_id, session_id=session_id,
            t2_to_mni=_fspath(t2_to_mni), threshold=threshold, min_voxels=min_voxels,
            max_cmb_diameter_mm=max_cmb_diameter_mm, qsm_min_ppm=qsm_min_ppm,
            min_prob_max={"cmb": min_prob_cmb, "iron": min_prob_iron},
            max_cmb_qsm_extent_mm=max_cmb_qsm_extent_mm, max_cmb_qsm_elongation=max_cmb_qsm_elongation)
        return out["lesions"], out["lesions_json"], out["dropped"], out["summary"], out["dseg"]


@python.define
class CombineTables(python.Task["CombineTables.Outputs"]):
    """Cohort tables ``group/lesions.tsv`` and ``group/summary.tsv`` from the subjects' tables.

    Args:
        lesions: the subjects' per-lesion TSVs
        summaries: the subjects' summary TSVs (subjects without lesions still have a row)
        version: package version, so that a new release is a new cache entry
    """

    lesions: list[File]
    summaries: list[File]
    version: str = __version__

    class Outputs(python.Outputs):
        group_lesions: File
        group_summary: File

    @staticmethod
    def function(lesions, summaries, version):
        from deepmir_tasks.lesions.tables import write_group_tables

        out = write_group_tables([_fspath(f) for f in lesions], [_fspath(f) for f in summaries], Path.cwd())
        return out["lesions"], out["summary"]
