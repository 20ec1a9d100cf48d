"""Finding files in a BIDS dataset: each subject's T2w / SWI / QSM, and label maps with their probability maps.

The reader is deliberately small (no pybids dependency): DEEPMIR needs three files per subject and
session, found under ``sub-<label>[/ses-<label>]/anat/`` by their suffix (``_T2w``, ``_swi``,
``_Chimap``); evaluation needs the ``sub-*_dseg`` label maps of a derivatives folder. When several
files match (e.g. two runs) the choice is refused with a message naming them, rather than guessed.
A subject may also have raw multi-echo GRE (``*_echo-N_part-{mag,phase}_MEGRE.nii.gz`` or 4-D
files), from which a missing SWI and QSM are computed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from deepmir_tasks.bids_names import LABEL_RE, MODALITIES, MODALITY_SUFFIX, check_label, entities, subject_key
from deepmir_tasks.io import InputError

__all__ = ["SubjectInputs", "find_subjects", "dataset_name", "find_dsegs", "find_probsegs"]


@dataclass(frozen=True)
class SubjectInputs:
    """The input files of one subject (and session, when the dataset has sessions)."""

    participant_id: str  # without "sub-"
    session_id: str | None  # without "ses-"
    files: dict[str, Path | None] = field(default_factory=dict)
    #: what is wrong with this subject's folder (e.g. two T2w runs): the subject cannot run, the
    #: others can
    problems: tuple[str, ...] = ()
    #: raw multi-echo GRE, ``(magnitude files, phase files)`` in echo order, or ``()``
    megre: tuple = ()
    #: modalities with several candidate files (their problem is in ``problems``, not "missing")
    ambiguous: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """``sub-01`` or ``sub-01_ses-A``: the prefix of every derivative of this subject."""
        return subject_key(self.participant_id, self.session_id)

    @property
    def missing(self) -> list[str]:
        """Suffixes of the modalities without an image (an ambiguous one is a problem instead; SWI
        and QSM are not missing when the raw GRE they are computed from is there)."""
        computable = {"swi", "qsm"} if self.megre else set()
        return [MODALITY_SUFFIX[m] for m, f in self.files.items()
                if f is None and m not in self.ambiguous and m not in computable]

    @property
    def modalities(self) -> frozenset:
        """The modalities (``t2``, ``swi``, ``qsm``) the subject has, given or computable from its GRE."""
        computable = {"swi", "qsm"} if self.megre else set()
        return frozenset(m for m, f in self.files.items() if f is not None or m in computable)

    @property
    def invalid_label(self) -> str | None:
        """``"participant"`` or ``"session"`` when that label is not a valid BIDS label (letters and
        digits only: it would end up in file names and command lines), else ``None``."""
        for what, value in (("participant", self.participant_id), ("session", self.session_id)):
            if value is not None and not LABEL_RE.match(value):
                return what
        return None

    @property
    def anat_dir_rel(self) -> Path:
        """Folder of this subject's files relative to a dataset root."""
        rel = Path(f"sub-{self.participant_id}")
        if self.session_id:
            rel = rel / f"ses-{self.session_id}"
        return rel / "anat"


def find_subjects(
    bids_dir,
    participant_labels=None,
    session_labels=None,
    modalities=MODALITIES,
) -> list[SubjectInputs]:
    """List the subjects (and sessions) of ``bids_dir`` with their input files.

    Subjects asked for by label but absent raise :class:`InputError`. Subjects present but lacking a
    modality are returned with ``None`` for it (see :attr:`SubjectInputs.missing`), so that a cohort
    run can report them by name and go on with the others.
    """
    bids_dir = Path(bids_dir)
    if not bids_dir.is_dir():
        raise InputError(bids_dir, "BIDS folder does not exist")
    if not (bids_dir / "dataset_description.json").exists():
        raise InputError(bids_dir, "not a BIDS dataset (no dataset_description.json)")
    present = sorted(p.name[4:] for p in bids_dir.glob("sub-*") if p.is_dir())
    if participant_labels:
        wanted = list(dict.fromkeys(check_label(p) for p in participant_labels))  # each once, in order
        absent = [p for p in wanted if p not in present]
        if absent:
            raise InputError(bids_dir, "no such participant(s): " + ", ".join(f"sub-{p}" for p in absent))
    else:
        wanted = present
    if not wanted:
        raise InputError(bids_dir, "no sub-* folders found")
    sessions_wanted = [check_label(s, "session label") for s in session_labels] if session_labels else None

    subjects = []
    for label in wanted:
        sub_dir = bids_dir / f"sub-{label}"
        sessions = sorted(p.name[4:] for p in sub_dir.glob("ses-*") if p.is_dir())
        if sessions_wanted is not None:
            sessions = [s for s in sessions if s in sessions_wanted]
            if not sessions:
                continue
        for ses in sessions or [None]:
            anat = sub_dir / (f"ses-{ses}" if ses else "") / "anat"
            what = SubjectInputs(label, ses).invalid_label
            if what:  # named and refused; the others run
                folder = sub_dir if what == "participant" else sub_dir / f"ses-{ses}"
                bad = (f"{folder}: folder name {folder.name!r} is not a valid BIDS {what} label "
                       "(letters and digits only); rename it")
                subjects.append(SubjectInputs(label, ses, {m: None for m in modalities}, (bad,)))
                continue
            files, problems, ambiguous = {}, [], []
            for m in modalities:
                try:
                    files[m] = _find_one(anat, MODALITY_SUFFIX[m])
                except InputError as err:  # several candidates: this subject's problem alone
                    files[m] = None
                    problems.append(str(err))
                    ambiguous.append(m)
            megre = _find_megre(anat, subject_key(label, ses), problems)
            subjects.append(SubjectInputs(label, ses, files, tuple(problems), megre, tuple(ambiguous)))
    if not subjects:
        raise InputError(bids_dir, "no subject has the requested session(s)")
    return subjects


def _find_megre(anat: Path, key: str, problems: list) -> tuple:
    """``(magnitude files, phase files)`` of the subject's multi-echo GRE, ``()`` when it has none; an
    incomplete set (e.g. phase files missing) is added to ``problems``."""
    if not any(anat.glob(f"{key}_*MEGRE.nii*")):
        return ()
    from deepmir_tasks.qsm.bids import find_megre

    try:
        mag, phase = find_megre(anat, key)
    except InputError as err:
        problems.append(str(err))
        return ()
    return tuple(mag), tuple(phase)


def _find_one(anat: Path, suffix: str) -> Path | None:
    hits = sorted(anat.glob(f"*_{suffix}.nii.gz")) + sorted(anat.glob(f"*_{suffix}.nii"))
    if not hits:
        return None
    if len(hits) > 1:
        names = ", ".join(h.name for h in hits)
        raise InputError(anat, f"several _{suffix} images ({names}); keep one per subject/session")
    return hits[0]


def dataset_name(bids_dir) -> str:
    """The ``Name`` in a dataset's ``dataset_description.json`` ("" when it cannot be read)."""
    try:
        return json.loads((Path(bids_dir) / "dataset_description.json").read_text()).get("Name", "")
    except (OSError, ValueError):
        return ""


def find_dsegs(root: Path, *, prefer: str, what: str) -> dict:
    """{(sub, ses): path} for the ``sub-*_dseg.nii[.gz]`` files under ``root`` (not under
    ``evaluation/`` or ``sourcedata/``, where the pipeline keeps its outputs and its cache)."""
    found: dict = {}
    for path in sorted(root.rglob("sub-*_dseg.nii*")):
        if {"evaluation", "sourcedata"} & set(path.relative_to(root).parts) or not path.is_file():
            continue
        key = entities(path.name)
        if key is not None:
            found.setdefault(key, []).append(path)
    out = {}
    for key, paths in found.items():
        if len(paths) > 1:
            preferred = [p for p in paths if prefer in p.name]
            if len(preferred) != 1:
                names = ", ".join(p.name for p in paths[:4])
                raise InputError(root, f"{what} has {len(paths)} dseg files for {subject_key(*key)} "
                                       f"and cannot tell which to use ({names})")
            paths = preferred
        out[key] = paths[0]
    return out


def find_probsegs(dseg: Path) -> dict:
    """{class name: path} of the ``label-<class>_probseg`` maps beside a dseg (same subject prefix)."""
    out = {}
    prefix = subject_key(*entities(dseg.name))
    for name, tags in (("cmb", ("CMB", "cmb")), ("iron", ("iron", "IRON", "Iron"))):
        for tag in tags:
            hits = sorted(dseg.parent.glob(f"{prefix}_*label-{tag}_probseg.nii*"))
            if hits:
                out[name] = hits[0]
                break
    return out
