"""Reading why a subject's job failed from pydra's error records: one line per subject."""

from __future__ import annotations

import logging
import re
from pathlib import Path

__all__ = ["error_reason", "one_line", "quiet_pydra_failures"]

_ERR_LINE = re.compile(r"^(?:[\w.]+\.)?(\w*(?:Error|Exception)): (.+)$")


def error_reason(job_dir: Path, *, cache_dir=None, marker: str = "", since: float = 0.0) -> str:
    """One line saying why a subject's job failed.

    The subject's own error record is read first. Some failures (e.g. a check of the job's inputs
    before it starts) are recorded only by the outer split job, whose record holds a section per
    failed subject: then the section mentioning ``marker`` (the subject's T2w path) is used.
    """
    text = _read_error(job_dir / "_error.pklz")
    if text is None and cache_dir is not None:
        for err_file in Path(cache_dir).glob("*/_error.pklz"):
            if err_file.stat().st_mtime < since - 1:
                continue
            outer = _read_error(err_file) or ""
            sections = [sec for sec in outer.split("\nJob '") if marker and marker in sec]
            if sections:
                text = sections[-1]
                break
    if text is None:
        return "failed (no error record)"
    hits = [m for m in (_ERR_LINE.match(line.strip()) for line in text.splitlines()) if m]
    inner = [m for m in hits if m.group(1) != "RuntimeError" or "Workflow job" not in m.group(2)]
    if inner:
        m = inner[-1]
        return m.group(2) if m.group(1) == "InputError" else f"{m.group(1)}: {m.group(2)}"
    return one_line(text)


def _read_error(err_file: Path) -> str | None:
    import cloudpickle as cp

    if not err_file.exists():
        return None
    try:
        return "".join(cp.loads(err_file.read_bytes()).get("error message", []))
    except Exception:  # noqa: BLE001 - an unreadable record is reported as such by the caller
        return None


def one_line(err) -> str:
    """The last non-empty line of an error (its message), or the error's type name."""
    lines = [l for l in str(err).strip().splitlines() if l.strip()]
    return lines[-1].strip() if lines else type(err).__name__


class _PydraFailureFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Task execution failed" not in record.getMessage()


def quiet_pydra_failures() -> None:
    """Keep pydra's own "Task execution failed / Full crash report ..." records off the console:
    DEEPMIR reports each failed subject in one line itself (:func:`error_reason`), and the crash
    report stays in the subject's cache folder. ``deepmir -v`` shows pydra's records again."""
    logger = logging.getLogger("pydra.submitter")
    if not any(isinstance(f, _PydraFailureFilter) for f in logger.filters):
        logger.addFilter(_PydraFailureFilter())
