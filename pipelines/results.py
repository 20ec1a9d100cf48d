"""What a run produced: each subject's status, recorded beside the derivatives, and its results
read back from the pydra cache."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from deepmir_tasks.bids_files import SubjectInputs
from deepmir_tasks.codehash import code_version
from deepmir_tasks.io import as_path, write_json


__all__ = ["STATUS_DONE", "STATUS_CACHED", "STATUS_FAILED", "SubjectStatus", "CohortResult", "record_status",
           "read_statuses", "load_result", "finished", "result_files"]

STATUS_DONE, STATUS_CACHED, STATUS_FAILED = "done", "cached", "failed"


@dataclass
class SubjectStatus:
    subject: SubjectInputs
    status: str
    reason: str = ""
    files: dict = field(default_factory=dict)
    seconds: float = 0.0
    model: str = ""  # the model file the subject ran with (its name)


@dataclass
class CohortResult:
    output_dir: Path
    subjects: list[SubjectStatus]
    group: dict = field(default_factory=dict)

    @property
    def failed(self) -> dict[str, str]:
        return {s.subject.key: s.reason for s in self.subjects if s.status == STATUS_FAILED}

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary_lines(self) -> list[str]:
        lines = []
        for s in sorted(self.subjects, key=lambda s: (s.status != STATUS_FAILED, s.subject.key)):
            extra = f": {s.reason}" if s.reason else ""
            lines.append(f"  {s.subject.key:<20} {s.status}{extra}")
        counts = {k: sum(s.status == k for s in self.subjects) for k in (STATUS_DONE, STATUS_CACHED, STATUS_FAILED)}
        lines.append(f"{counts[STATUS_DONE]} done, {counts[STATUS_CACHED]} cached, {counts[STATUS_FAILED]} failed")
        return lines


def _status_file(output_dir, key: str) -> Path:
    return Path(output_dir) / "logs" / f"{key}_status.json"


def record_status(output_dir, status: SubjectStatus, progress=None) -> None:
    """Write ``logs/<key>_status.json`` (read by the group level) and tell ``progress``, if given.

    A subject whose folder name is not a valid BIDS label is only told (no file is named after it)."""
    if status.subject.invalid_label is None:
        write_json({"participant_id": status.subject.participant_id, "session_id": status.subject.session_id,
                    "status": status.status, "reason": status.reason, "seconds": round(status.seconds, 1),
                    "model": status.model, "version": code_version()}, _status_file(output_dir, status.subject.key))
    if progress:
        progress(status.subject.key, status.status, status.reason)


def read_statuses(output_dir, names=("lesions", "summary", "dropped")) -> list[tuple[str, dict, dict]]:
    """``(key, status record, {name: derivative path})`` of every subject recorded in ``output_dir``;
    only the derivatives in ``names`` that exist are listed."""
    from deepmir_tasks.bids_names import derivative_name, space_of

    out = []
    for status_file in sorted((Path(output_dir) / "logs").glob("*_status.json")):
        st = json.loads(status_file.read_text())
        key = status_file.name.removesuffix("_status.json")
        anat = Path(output_dir) / SubjectInputs(st["participant_id"], st.get("session_id")).anat_dir_rel
        # the subject's reference space (T2w, else SWI, else QSM), as its lesion table is named
        tables = sorted(anat.glob(f"{key}_space-*_desc-deepmir_lesions.tsv"))
        space = space_of(tables[0].name) if tables else "T2w"
        files = {name: anat / derivative_name(name, key, space) for name in names}
        out.append((key, st, {name: path for name, path in files.items() if path.exists()}))
    return out


def load_result(task, cache_dir):
    """The cached result of ``task`` (a pydra task or workflow), or ``None``."""
    from pydra.engine.result import load_result as _load

    return _load(task._checksum, [Path(cache_dir)])


def finished(result) -> bool:
    return result is not None and not result.errored


def result_files(result) -> dict:
    """A finished result's outputs by name, as paths (``None`` for an output not produced)."""
    import attrs

    names = [f.name for f in attrs.fields(type(result.outputs)) if not f.name.startswith("_")]
    return {n: as_path(getattr(result.outputs, n)) for n in names}
