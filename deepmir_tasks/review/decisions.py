"""A ``deepmir run`` output's subjects, their candidates, and the raters' decisions on them.

Candidates are the kept lesions (``k<lesion_id>``), the dropped ones (``d<lesion_id>``) and the
lesions a rater added (``a<n>``, per rater). Every decision is one row of
``sub-X[_ses-Y]_desc-review_lesions.tsv`` beside the subject's other outputs (one row per rater
and candidate, with its time), described by a JSON sidecar (raters, times, the source tables and
their SHA-256). Each save rewrites both files atomically under a lock on the subject's folder, so
two raters (or two tabs) never lose each other's rows and a reload shows every decision made.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from deepmir_tasks.bids_names import MODALITY_SUFFIX, check_label, derivative_name, entities, space_of, subject_key
from deepmir_tasks.io import InputError, write_json, write_tsv
from deepmir_tasks.labels import LESION_CLASSES

__all__ = ["DECISIONS", "TARGET_DECISIONS", "REVIEW_NAME", "REVIEW_COLUMNS", "RATER_RE", "ReviewSubject",
           "find_review_subjects", "read_candidates", "read_decisions", "rater_decisions", "save_decision",
           "check_rater", "source_changes"]

#: decision value -> what the page calls it (in the order of the keys 1-5)
DECISIONS = {"cmb": "CMB", "iron": "iron deposit", "calcification": "calcification", "vein": "vein",
             "not_lesion": "not a lesion"}
#: the decisions that become labels of an annotation dseg (the model's lesion classes)
TARGET_DECISIONS = tuple(c for c in LESION_CLASSES if c in DECISIONS)
#: the decisions file beside a subject's outputs ({key} = sub-X[_ses-Y])
REVIEW_NAME = "{key}_desc-review_lesions.tsv"
#: columns of the decisions file (``session_id`` only for subjects with sessions)
REVIEW_COLUMNS = ("participant_id", "session_id", "rater", "candidate_id", "source", "lesion_id", "model_label",
                  "reason", "i", "j", "k", "x_mm", "y_mm", "z_mm", "decision", "note", "time")
COLUMN_DESCRIPTIONS = {
    "rater": "who decided",
    "candidate_id": "k<lesion_id> a kept lesion, d<lesion_id> a dropped candidate, a<n> a lesion the rater added",
    "source": "kept, dropped or added",
    "lesion_id": "lesion_id in the source table (n/a for added lesions)",
    "model_label": "the model's class for the candidate (n/a for added lesions)",
    "reason": "why the candidate was dropped (dropped candidates only)",
    "i": "centroid voxel index in the working grid", "j": "see i", "k": "see i",
    "x_mm": "centroid, scanner mm (world space of the subject's reference: its T2w, else SWI, else QSM)",
    "y_mm": "see x_mm", "z_mm": "see x_mm",
    "decision": "one of " + ", ".join(DECISIONS) + " (n/a: not decided yet, a note only)",
    "note": "the rater's free-text note",
    "time": "when the row was last changed (ISO 8601, UTC)",
}
#: a rater's name: it is written into tables, so letters, digits, '.', '_' and '-' only
RATER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SOURCES = {"k": "kept", "d": "dropped", "a": "added"}
#: a reference space -> the image that defines it (the one a subject's outputs always include)
REFERENCE_IMAGE = {space: modality for modality, space in MODALITY_SUFFIX.items()}


@dataclass(frozen=True)
class ReviewSubject:
    """One subject (and session) of a ``deepmir run`` output folder, with its files."""

    participant_id: str  # without "sub-"
    session_id: str | None  # without "ses-"
    anat: Path
    files: dict = field(default_factory=dict)  # DERIVATIVE_NAMES name -> Path or None
    space: str = "T2w"  # the reference space of its outputs (T2w, else swi, else Chimap)

    @property
    def key(self) -> str:
        return subject_key(self.participant_id, self.session_id)

    @property
    def review_tsv(self) -> Path:
        return self.anat / REVIEW_NAME.format(key=self.key)

    @property
    def review_json(self) -> Path:
        return self.review_tsv.with_suffix(".json")


def find_review_subjects(output_dir, participant_labels=None) -> list[ReviewSubject]:
    """The subjects of a ``deepmir run`` output folder that have a lesion table."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise InputError(output_dir, "output folder does not exist")
    tables = sorted(output_dir.glob("sub-*/anat/*_desc-deepmir_lesions.tsv")) + \
        sorted(output_dir.glob("sub-*/ses-*/anat/*_desc-deepmir_lesions.tsv"))
    subjects = {}
    for table in tables:
        ent = entities(table.name)
        if ent is None:
            continue
        sub, ses = ent
        key = subject_key(sub, ses)
        files = {}
        space = space_of(table.name)  # the subject's reference space (T2w, else SWI, else QSM)
        for name in ("t2", "swi", "qsm", "mask", "dseg", "probseg_cmb", "probseg_iron", "lesions", "dropped"):
            path = table.parent / derivative_name(name, key, space)
            files[name] = path if path.exists() else None
        subjects[key] = ReviewSubject(sub, ses, table.parent, files, space)
    if not subjects:
        raise InputError(output_dir, "no subject with a lesion table (sub-*/anat/*_desc-deepmir_lesions.tsv): "
                                     "is this the output folder of deepmir run?")
    if participant_labels:
        wanted = [check_label(p) for p in participant_labels]
        absent = [p for p in wanted if not any(s.participant_id == p for s in subjects.values())]
        if absent:
            raise InputError(output_dir, "no lesion table for participant(s) " + ", ".join(f"sub-{p}" for p in absent))
        subjects = {k: s for k, s in subjects.items() if s.participant_id in wanted}
    for s in subjects.values():
        # the reference image, mask and labels; a modality the subject was run without is shown empty
        for name in (REFERENCE_IMAGE[s.space], "mask", "dseg"):
            if s.files[name] is None:
                raise InputError(s.anat / derivative_name(name, s.key, s.space),
                                 f"{s.key}'s {name} output is missing; review needs the working-grid images")
    return [subjects[k] for k in sorted(subjects)]


def read_candidates(subject: ReviewSubject) -> pd.DataFrame:
    """Every candidate of a subject, kept lesions first, then dropped ones, with ``candidate_id``,
    ``source``, ``model_label``, ``reason``, integer ``i, j, k`` and the tables' other columns."""
    from deepmir_tasks.report._tables import read_lesion_table

    parts = []
    for source, name, what in (("kept", "lesions", "lesion table"), ("dropped", "dropped", "dropped-candidate table")):
        path = subject.files.get(name)
        if path is None:
            continue
        df = read_lesion_table(path, what=what)
        missing = [c for c in ("i", "j", "k", "x_mm", "y_mm", "z_mm") if c not in df.columns]
        if missing:
            raise InputError(path, f"{what} lacks the column(s) {', '.join(missing)}")
        ijk = df[["i", "j", "k"]].apply(pd.to_numeric, errors="coerce").to_numpy(float)
        if len(df) and not np.isfinite(ijk).all():
            raise InputError(path, f"{what} has a missing or non-numeric centroid (i, j, k)")
        df = df.assign(i=np.rint(ijk[:, 0]).astype(int), j=np.rint(ijk[:, 1]).astype(int),
                       k=np.rint(ijk[:, 2]).astype(int))
        ids = df["lesion_id"].astype(str).str.strip()
        if ids.duplicated().any():
            raise InputError(path, f"{what} has a repeated lesion_id {ids[ids.duplicated()].iloc[0]}")
        df.insert(0, "candidate_id", source[0] + ids)
        df.insert(1, "source", source)
        df["model_label"] = df["label"]
        if "reason" not in df.columns:
            df["reason"] = np.nan
        parts.append(df)
    if not parts:
        return pd.DataFrame(columns=["candidate_id", "source", "lesion_id", "model_label", "reason",
                                     "i", "j", "k", "x_mm", "y_mm", "z_mm"])
    return pd.concat(parts, ignore_index=True)


def read_decisions(subject: ReviewSubject) -> pd.DataFrame:
    """Every rater's decisions on a subject (an empty table when nobody has decided yet)."""
    path = subject.review_tsv
    columns = [c for c in REVIEW_COLUMNS if c != "session_id" or subject.session_id]
    if not path.exists():
        return pd.DataFrame(columns=columns)
    text = {c: str for c in ("participant_id", "session_id", "rater", "candidate_id", "source", "lesion_id",
                             "model_label", "reason", "decision", "note", "time")}
    try:
        df = pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False, dtype=text)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as err:
        raise InputError(path, f"decisions table is not a readable TSV ({str(err).strip().splitlines()[0]})") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(path, f"decisions table lacks the column(s) {', '.join(missing)}")
    bad = df["decision"].notna() & ~df["decision"].isin(list(DECISIONS))
    if bad.any():
        raise InputError(path, f"decisions table has an unknown decision {df.loc[bad, 'decision'].iloc[0]!r} "
                               f"(known: {', '.join(DECISIONS)})")
    return df[columns]


def rater_decisions(decisions: pd.DataFrame, rater: str) -> dict[str, dict]:
    """{candidate_id: row} of one rater."""
    rows = decisions[decisions["rater"] == rater]
    return {r["candidate_id"]: {k: _plain(v) for k, v in r.items()}
            for r in rows.to_dict("records")}


def check_rater(rater) -> str:
    rater = str(rater or "").strip()
    if not RATER_RE.match(rater):
        raise InputError("--rater", f"invalid rater name {rater!r}: letters, digits, '.', '_' and '-' only")
    return rater


def save_decision(subject: ReviewSubject, rater: str, candidate_id: str | None, decision: str | None = None,
                  note: str | None = None, *, ijk=None, now: str | None = None) -> dict:
    """Record one decision (or note) of ``rater`` and rewrite the decisions file and its sidecar.

    ``candidate_id`` names a kept (``k..``) or dropped (``d..``) candidate or a lesion the rater
    added (``a..``); ``None`` with ``ijk`` (a working-grid voxel) adds a lesion. ``decision`` or
    ``note`` ``None`` leaves the value recorded before unchanged. Returns the saved row.
    """
    rater = check_rater(rater)
    if decision is not None and decision not in DECISIONS:
        raise InputError(subject.review_tsv, f"unknown decision {decision!r} (known: {', '.join(DECISIONS)})")
    now = now or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    with _locked(subject.anat):
        table = read_decisions(subject)
        mine = rater_decisions(table, rater)
        if candidate_id is None:
            row = _added_row(subject, mine, ijk)
        elif candidate_id in mine:
            row = dict(mine[candidate_id])
        else:
            cands = read_candidates(subject)
            hit = cands[cands["candidate_id"] == candidate_id]
            if hit.empty:
                raise InputError(subject.review_tsv, f"{subject.key} has no candidate {candidate_id!r}")
            row = {c: hit.iloc[0].get(c) for c in REVIEW_COLUMNS if c in hit.columns}
            row.pop("note", None)
        row.update(participant_id=f"sub-{subject.participant_id}", rater=rater, time=now)
        if subject.session_id:
            row["session_id"] = f"ses-{subject.session_id}"
        if decision is not None:
            row["decision"] = decision
        if note is not None:
            row["note"] = " ".join(str(note).split()) or None  # one line in the TSV
        row = {c: row.get(c) for c in table.columns}
        others = table[~((table["rater"] == rater) & (table["candidate_id"] == row["candidate_id"]))]
        new = pd.concat([others, pd.DataFrame([row], columns=table.columns)], ignore_index=True) \
            if len(others) else pd.DataFrame([row], columns=table.columns)
        new = new.sort_values(["rater", "candidate_id"], key=_id_order, kind="stable").reset_index(drop=True)
        write_tsv(new, subject.review_tsv)
        write_json(_sidecar(subject, new), subject.review_json)
    return {k: _plain(v) for k, v in row.items()}


def source_changes(subject: ReviewSubject) -> list[str]:
    """The source tables that changed since the decisions were made (a rerun of ``deepmir run``
    renumbers candidates, so recorded ids may point at other lesions)."""
    import json

    if not subject.review_json.exists():
        return []
    try:
        recorded = json.loads(subject.review_json.read_text()).get("SourceTables", {})
    except (OSError, ValueError):
        return []
    now = _source_tables(subject)
    return [v["File"] for k, v in recorded.items() if now.get(k, {}).get("SHA256") != v.get("SHA256")]


# ---------------------------------------------------------------------------------------------
def _added_row(subject: ReviewSubject, mine: dict, ijk) -> dict:
    import nibabel as nib

    if ijk is None:
        raise InputError(subject.review_tsv, "an added lesion needs its voxel (i, j, k)")
    img = nib.load(str(subject.files["mask"]))  # the working grid
    ijk = np.asarray([int(v) for v in ijk])
    if np.any(ijk < 0) or np.any(ijk >= np.asarray(img.shape[:3])):
        raise InputError(subject.files["mask"], f"added lesion voxel {tuple(ijk)} lies outside the grid {img.shape[:3]}")
    n = 1 + max([int(c[1:]) for c in mine if c.startswith("a") and c[1:].isdigit()] or [0])
    xyz = img.affine[:3, :3] @ ijk + img.affine[:3, 3]
    return {"candidate_id": f"a{n}", "source": "added", "i": int(ijk[0]), "j": int(ijk[1]), "k": int(ijk[2]),
            "x_mm": round(float(xyz[0]), 2), "y_mm": round(float(xyz[1]), 2), "z_mm": round(float(xyz[2]), 2)}


def _sidecar(subject: ReviewSubject, table: pd.DataFrame) -> dict:
    from deepmir_tasks import __version__

    raters = {}
    for rater, rows in table.groupby("rater", sort=True):
        times = sorted(rows["time"].dropna())
        raters[rater] = {"FirstChange": times[0] if times else None, "LastChange": times[-1] if times else None,
                         "Decided": int(rows["decision"].notna().sum()),
                         "Added": int((rows["source"] == "added").sum())}
    return {"Description": "Raters' decisions on DEEPMIR's lesion candidates (deepmir review)",
            "GeneratedBy": [{"Name": "deepmir review", "Version": __version__}],
            "SourceTables": _source_tables(subject),
            "Raters": raters,
            "Decisions": DECISIONS,
            "Columns": COLUMN_DESCRIPTIONS}


def _source_tables(subject: ReviewSubject) -> dict:
    out = {}
    for name in ("lesions", "dropped"):
        path = subject.files.get(name)
        if path is not None and Path(path).exists():
            out[name] = {"File": Path(path).name, "SHA256": hashlib.sha256(Path(path).read_bytes()).hexdigest()}
    return out


@contextlib.contextmanager
def _locked(folder: Path):
    """An exclusive lock on ``folder`` (flock on the directory itself: no lock file left behind)."""
    import fcntl

    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _id_order(col: pd.Series) -> pd.Series:
    """Sort key: raters by name; candidates kept, dropped, added, each by number."""
    if col.name != "candidate_id":
        return col
    rank = {"k": 0, "d": 1, "a": 2}
    return col.map(lambda c: rank.get(str(c)[:1], 3) * 1_000_000 + (int(str(c)[1:]) if str(c)[1:].isdigit() else 0))


def _plain(v):
    """A table value as plain Python (numpy scalars unwrapped, NaN as None)."""
    if isinstance(v, np.generic):
        v = v.item()
    return None if _missing(v) else v


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v))
