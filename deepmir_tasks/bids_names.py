"""BIDS vocabulary shared by every layer: modalities and their suffixes, labels, file names.

- the modalities DEEPMIR reads, in the model's channel order, with their BIDS suffixes
  (``_T2w``, ``_swi``, ``_Chimap``) and the names messages use (``T2w``, ``SWI``, ``QSM``);
- participant and session labels: :func:`check_label` (the one check), :func:`subject_key`
  (``sub-01_ses-A``), :func:`bids_prefix` and :func:`entities` (read them back from a file name);
- the reference space of a subject (:func:`reference_modality`: the T2w if present, else the SWI,
  else the QSM) and its BIDS ``space-`` label (:func:`space_label`: ``T2w``, ``swi``, ``Chimap``);
- the derivative names: :func:`derivative_name` (what ``deepmir run`` publishes,
  :data:`DERIVATIVE_NAMES`) and :func:`job_file_name` (what the steps write inside their job
  folders; the same names except where :data:`JOB_NAMES` says otherwise), both with the space a
  parameter.
"""

from __future__ import annotations

import re

from deepmir_tasks.io import InputError

__all__ = ["MODALITIES", "MODALITY_SUFFIX", "MODALITY_NAMES", "MNI_SPACE", "LABEL_RE", "check_label",
           "strip_prefix", "subject_key", "bids_prefix", "entities", "reference_modality", "space_label",
           "space_of", "DERIVATIVE_NAMES", "JOB_NAMES", "derivative_name", "job_file_name"]

#: the modalities DEEPMIR reads, in the model's channel order
MODALITIES = ("t2", "swi", "qsm")
#: BIDS suffix of each modality
MODALITY_SUFFIX = {"t2": "T2w", "swi": "swi", "qsm": "Chimap"}
#: how messages and reports name each modality
MODALITY_NAMES = {"t2": "T2w", "swi": "SWI", "qsm": "QSM"}

#: the order in which a subject's images are taken as its reference space (the first one present):
#: the T2w (anatomy, the finest brain outline), else the SWI (a magnitude image), else the QSM
REFERENCE_ORDER = MODALITIES

#: the template space of the T2w -> MNI affine: nilearn ships the asymmetric ICBM152 2009a maps
MNI_SPACE = "MNI152NLin2009aAsym"

#: a BIDS label: letters and digits only
LABEL_RE = re.compile(r"^[A-Za-z0-9]+$")
_ENTITIES = re.compile(r"^sub-(?P<sub>[A-Za-z0-9]+)(?:_ses-(?P<ses>[A-Za-z0-9]+))?")


def strip_prefix(label) -> str:
    """``label`` without a leading ``sub-`` or ``ses-``."""
    label = str(label)
    for prefix in ("sub-", "ses-"):
        if label.startswith(prefix):
            return label[len(prefix):]
    return label


def check_label(label, what: str = "participant label", source=None) -> str:
    """Strip an optional ``sub-``/``ses-`` prefix and check BIDS label characters.

    Raises :class:`~deepmir_tasks.io.InputError` naming ``source`` (default: the label itself):
    labels end up in file names and on command lines.
    """
    stripped = strip_prefix(label)
    if not LABEL_RE.match(stripped):
        raise InputError(label if source is None else source,
                         f"invalid {what} {str(label)!r}: BIDS labels are letters and digits only")
    return stripped


def subject_key(participant_id, session_id=None) -> str:
    """``sub-01`` or ``sub-01_ses-A`` (labels with or without their prefix)."""
    key = f"sub-{strip_prefix(participant_id)}"
    return key + (f"_ses-{strip_prefix(session_id)}" if session_id not in (None, "") else "")


def bids_prefix(participant_id, session_id=None) -> tuple[str, str | None, str]:
    """Normalise labels (with or without ``sub-``/``ses-``); return (sub, ses, filename prefix)."""
    sub = str(participant_id).strip()
    if not sub or sub in ("sub-",):
        raise ValueError("participant_id is empty")
    sub = sub if sub.startswith("sub-") else f"sub-{sub}"
    ses = None
    if session_id not in (None, ""):
        ses = str(session_id).strip()
        ses = ses if ses.startswith("ses-") else f"ses-{ses}"
    return sub, ses, sub + (f"_{ses}" if ses else "")


def entities(file_name) -> tuple[str, str | None] | None:
    """``(sub, ses)`` labels (without prefixes) at the start of a BIDS file name, else ``None``."""
    m = _ENTITIES.match(str(file_name).rsplit("/", 1)[-1])
    return (m.group("sub"), m.group("ses")) if m else None


def reference_modality(present) -> str:
    """The modality whose space a subject is processed in: the first of :data:`REFERENCE_ORDER`
    among ``present`` (modality keys, e.g. ``{"swi", "qsm"}``). Raises ``ValueError`` when none is."""
    for m in REFERENCE_ORDER:
        if m in present:
            return m
    raise ValueError("no T2w, SWI or QSM image: nothing to process")


def space_label(modality: str) -> str:
    """The BIDS ``space-<label>`` of a subject processed in ``modality``'s space (its suffix:
    ``T2w``, ``swi``, ``Chimap``)."""
    return MODALITY_SUFFIX[modality]


def space_of(file_name, default: str = "T2w") -> str:
    """The ``space-<label>`` of a derivative file name (``default`` when it has none)."""
    m = re.search(r"_space-([A-Za-z0-9]+)_", str(file_name).rsplit("/", 1)[-1])
    return m.group(1) if m else default


#: published output name -> BIDS-derivatives file name template ({key} = sub-XX[_ses-YY], {space} =
#: the reference space's label, see :func:`space_label`)
DERIVATIVE_NAMES = {
    "t2": "{key}_space-{space}_desc-preproc_T2w.nii.gz",
    "swi": "{key}_space-{space}_desc-preproc_swi.nii.gz",
    "qsm": "{key}_space-{space}_desc-preproc_Chimap.nii.gz",
    "mask": "{key}_space-{space}_desc-brain_mask.nii.gz",
    "dseg": "{key}_space-{space}_desc-deepmir_dseg.nii.gz",
    "probseg_cmb": "{key}_space-{space}_label-CMB_probseg.nii.gz",
    "probseg_iron": "{key}_space-{space}_label-iron_probseg.nii.gz",
    "lesions": "{key}_space-{space}_desc-deepmir_lesions.tsv",
    "lesions_json": "{key}_space-{space}_desc-deepmir_lesions.json",
    "dropped": "{key}_space-{space}_desc-dropped_lesions.tsv",
    "summary": "{key}_desc-deepmir_summary.tsv",
    "swi_to_t2": "{key}_from-swi_to-{space}_mode-image_xfm.mat",
    "qsm_to_t2": "{key}_from-Chimap_to-{space}_mode-image_xfm.mat",
    "t2_to_mni": "{key}_from-{space}_to-" + MNI_SPACE + "_mode-image_xfm.txt",
    "preproc_report": "{key}_desc-preproc_qc.json",
    "gre_qsm": "{key}_desc-deepmir_Chimap.nii.gz",
    "gre_swi": "{key}_desc-deepmir_swi.nii.gz",
}

#: file names the steps write that are not published under the name above
JOB_NAMES = {
    **DERIVATIVE_NAMES,
    "summary": "{key}_space-{space}_desc-deepmir_summary.tsv",
    "summary_json": "{key}_space-{space}_desc-deepmir_summary.json",
    "dseg_json": "{key}_space-{space}_desc-deepmir_dseg.json",
    "preproc_report": "{key}_desc-preproc_report.json",
}


def derivative_name(name: str, key: str, space: str = "T2w", *, job: bool = False) -> str:
    """The file name of output ``name`` for the subject prefix ``key`` in the reference space
    ``space`` (a :func:`space_label`): published (:data:`DERIVATIVE_NAMES`), or, with ``job``, as a
    step writes it in its job folder (:data:`JOB_NAMES`). The one place names are made."""
    return (JOB_NAMES if job else DERIVATIVE_NAMES)[name].format(key=key, space=space)


def job_file_name(name: str, key: str, space: str = "T2w") -> str:
    """The file name a step writes output ``name`` under, for the subject prefix ``key``."""
    return derivative_name(name, key, space, job=True)
