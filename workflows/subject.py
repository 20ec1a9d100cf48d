"""The subject workflow: preprocessing -> segmentation -> lesion table -> QC report."""

from __future__ import annotations

from fileformats.generic import File
from fileformats.medimage import NiftiGz
from pydra.compose import workflow

from deepmir_tasks import __version__
from deepmir_tasks.bids_names import subject_key
from deepmir_tasks.io import as_path
from deepmir_tasks.lesions.rules import LesionRules
from deepmir_tasks.lesions.tasks import ExtractLesions, ReadLesionRules
from deepmir_tasks.model.modelfile import record_path
from deepmir_tasks.model.tasks import SegmentLesions
from deepmir_tasks.report.tasks import RenderSubjectReport
from deepmir_tasks.settings import RunSettings
from workflows.gre import QsmSwiFromGre
from workflows.preprocess import PreprocessSubject

__all__ = ["SubjectPipeline", "OUTPUTS"]

OUTPUTS = ["t2", "swi", "qsm", "mask", "swi_to_t2", "qsm_to_t2", "t2_to_mni", "preproc_report", "probseg_cmb",
           "probseg_iron", "dseg", "lesions", "lesions_json", "dropped", "summary", "report", "gre_qsm",
           "gre_swi"]


@workflow.define(outputs=OUTPUTS)
def SubjectPipeline(model: File, participant_id: str, t2: NiftiGz | None = None, swi: NiftiGz | None = None,
                    qsm: NiftiGz | None = None, megre_mag: list[NiftiGz] | None = None,
                    megre_phase: list[NiftiGz] | None = None, session_id: str = "",
                    settings: RunSettings = RunSettings(), mask: NiftiGz | None = None,
                    record: File | None = None, version: str = __version__):
    """Find cerebral microbleeds and iron deposits in one subject, from any non-empty subset of
    T2w, SWI and QSM (the model must serve it: one trained with modality dropout serves any).

    Without a QSM or an SWI, but with the raw multi-echo GRE (``megre_mag``, ``megre_phase``: one
    file per echo, or one 4-D file each), both are computed from it first
    (:func:`workflows.gre.QsmSwiFromGre`; ``settings.recompute_qsm`` recomputes given ones too), and
    published on the GRE grid as ``gre_qsm`` / ``gre_swi``.

    The images are processed in the space of the T2w, else the SWI, else the QSM (the reference;
    outputs ``swi_to_t2``, ``qsm_to_t2`` and ``t2_to_mni`` are to and from the reference, and the
    preprocessing report's ``space`` is its label). They are checked, bias-corrected (N4; not the
    QSM), brain-extracted, registered rigidly (SWI to a T2w by mutual information, QSM with the
    SWI's transform, or by its header without an SWI) and resampled into the reference space at
    ``settings.voxel_size`` mm isotropic; T2w and SWI become robust z-scores inside the brain and QSM
    stays in ppm. A deep 3-D U-Net (``model``) gives CMB and iron-deposit probability maps; connected
    components above the voxel threshold become lesions, tabulated with size, world position,
    probability, susceptibility, SWI contrast and MARS region; candidates that are too small, below
    the class's minimum peak probability, of negative susceptibility (calcification), CMB candidates
    over 10 mm and CMB candidates on a tube of high susceptibility (vein) are dropped with the reason.
    These rules' parameters come from the model record's ``inference.lesions`` (calibrated with the
    model); ``settings.threshold``, when given, replaces the record's voxel threshold. The ``dseg``
    output holds the kept lesions. A self-contained HTML page shows each detection for visual review.

    ``version`` changes with the package, so results of an older release are never reused; the
    model and its record (``record``, default: the JSON beside the model) are file inputs, so a new
    model or a changed record reruns segmentation and what follows, not preprocessing. Give
    ``record`` explicitly to make the record part of this workflow's own cache key too (as
    ``deepmir run`` does).
    """
    if record is None:  # a path: the record is read by the tasks that use it
        record = record_path(as_path(model))
        record = record if record.exists() else None
    given = _describe_inputs(t2=t2, swi=swi, qsm=qsm)
    gre_qsm = gre_swi = None
    if megre_mag and megre_phase and (qsm is None or swi is None or settings.recompute_qsm):
        gre = workflow.add(QsmSwiFromGre(mag_files=megre_mag, phase_files=megre_phase,
                                         key=subject_key(participant_id, session_id or None)), name="gre")
        given["megre"] = {"file": as_path(megre_mag[0]).name, "echoes": len(megre_mag)}
        if qsm is None or settings.recompute_qsm:
            qsm = gre_qsm = gre.qsm
        if swi is None or settings.recompute_qsm:
            swi = gre_swi = gre.swi
    pre = workflow.add(PreprocessSubject(t2=t2, swi=swi, qsm=qsm, mask=mask, voxel_size=settings.voxel_size,
                                         qsm_units=settings.qsm_units, allow_resolution=settings.allow_resolution))
    seg = workflow.add(SegmentLesions(t2=pre.t2, swi=pre.swi, qsm=pre.qsm, mask=pre.mask, model=model,
                                      record=record, tta=settings.tta, version=version))
    provenance = {"deepmir": __version__, "model": str(getattr(model, "name", model)),
                  **LesionRules().record_values(), "voxel_size_mm": settings.voxel_size, "tta": settings.tta}
    rules = workflow.add(ReadLesionRules(record=record, threshold=settings.threshold, provenance=provenance,
                                         version=version))
    tab = workflow.add(ExtractLesions(probseg_cmb=seg.probseg_cmb, probseg_iron=seg.probseg_iron,
                                      dseg=seg.dseg, qsm=pre.qsm, swi=pre.swi, mask=pre.mask,
                                      t2_to_mni=pre.t2_to_mni, participant_id=participant_id,
                                      session_id=session_id or None, rules=rules.rules,
                                      preproc_report=pre.report, version=version))
    html = None
    if settings.report:
        rep = workflow.add(RenderSubjectReport(
            participant_id=participant_id, session_id=session_id or None, t2=pre.t2, swi=pre.swi,
            qsm=pre.qsm, mask=pre.mask, dseg=tab.dseg, lesions_tsv=tab.lesions, dropped_tsv=tab.dropped,
            inputs=given, provenance=rules.provenance,
            preproc_report=pre.report, version=version))
        html = rep.report
    return (pre.t2, pre.swi, pre.qsm, pre.mask, pre.swi_to_t2, pre.qsm_to_t2, pre.t2_to_mni, pre.report,
            seg.probseg_cmb, seg.probseg_iron, tab.dseg, tab.lesions, tab.lesions_json, tab.dropped,
            tab.summary, html, gre_qsm, gre_swi)


def _describe_inputs(**files) -> dict:
    """File names, shapes and voxel sizes of the raw inputs (header reads only), for the report."""
    import nibabel as nib

    out = {}
    for name, f in files.items():
        if f is None:
            continue
        path = str(as_path(f))
        try:
            hdr = nib.load(path).header
            out[name] = {"file": path.rsplit("/", 1)[-1], "shape": [int(s) for s in hdr.get_data_shape()],
                         "voxel_size_mm": [round(float(z), 3) for z in hdr.get_zooms()[:3]]}
        except Exception:  # noqa: BLE001 - unreadable inputs are reported by the input checks
            out[name] = {"file": path.rsplit("/", 1)[-1]}
    return out
