"""Pydra tasks around :func:`~deepmir_tasks.lesions.extract.extract_lesions_files` and
:func:`~deepmir_tasks.lesions.tables.combine_tables`, and the one that reads a model's lesion rules."""

from __future__ import annotations

from pathlib import Path

from fileformats.generic import File
from fileformats.medimage import NiftiGz
from pydra.compose import python

from deepmir_tasks import __version__

from deepmir_tasks.io import as_path as _fspath
from deepmir_tasks.lesions.rules import LesionRules

__all__ = ["ReadLesionRules", "ExtractLesions", "CombineTables"]


@python.define
class ReadLesionRules(python.Task["ReadLesionRules.Outputs"]):
    """The lesion rules a model's record calibrated, with the voxel threshold replaced if given.

    The record is a file input, so a recalibrated model is a new cache entry for the lesion table
    (and not for preprocessing or segmentation).

    Args:
        record: the model's JSON record (``inference.lesions``); None or unreadable: the defaults
        threshold: voxel probability threshold replacing the record's (None: keep it)
        provenance: a description of the run; the rules are filled in (keys already present keep
            their place), and ``tta`` is set when the record requires it
        version: package version, so that a new release is a new cache entry
    """

    record: File | None = None
    threshold: float | None = None
    provenance: dict | None = None
    version: str = __version__

    class Outputs(python.Outputs):
        rules: LesionRules
        provenance: dict

    @staticmethod
    def function(record, threshold, provenance, version):
        from deepmir_tasks.model.modelfile import calibrated_with_tta, model_lesion_rules

        rules = model_lesion_rules(_fspath(record)).with_threshold(threshold)
        provenance = {**(provenance or {}), **rules.record_values()}
        if "tta" in provenance:   # a model calibrated with TTA always uses it
            provenance["tta"] = bool(provenance["tta"]) or calibrated_with_tta(_fspath(record))
        return rules, provenance


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
        rules: the lesion rules (threshold, sizes, minimum probabilities, mimics); see LesionRules
        preproc_report: the preprocessing report, whose ``flags`` (input checks, registration)
            become a flags column
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
    rules: LesionRules = LesionRules()
    preproc_report: File | None = None
    version: str = __version__

    class Outputs(python.Outputs):
        lesions: File
        lesions_json: File
        dropped: File
        summary: File
        dseg: NiftiGz

    @staticmethod
    def function(probseg_cmb, probseg_iron, dseg, qsm, swi, mask, t2_to_mni, participant_id, session_id,
                 rules, preproc_report, version):
        import json

        from deepmir_tasks.lesions.extract import extract_lesions_files

        # the flags the preprocessing report gives (deepmir_tasks.preprocess.checks.input_flags)
        flags = json.loads(Path(_fspath(preproc_report)).read_text()).get("flags", "") if preproc_report else ""
        out = extract_lesions_files(
            _fspath(probseg_cmb), _fspath(probseg_iron), _fspath(dseg), _fspath(qsm), _fspath(swi),
            _fspath(mask), Path.cwd(), participant_id, session_id=session_id,
            t2_to_mni=_fspath(t2_to_mni), rules=rules, flags=flags)
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
