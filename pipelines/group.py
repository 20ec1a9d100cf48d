"""The group level: cohort tables and the cohort report, from every subject already written."""

from __future__ import annotations

from pathlib import Path

from deepmir_tasks.io import InputError

from . import derivatives
from .results import STATUS_FAILED, read_statuses

__all__ = ["run_group"]


def run_group(output_dir, *, report: bool = True) -> dict:
    """Build ``group/lesions.tsv``, ``group/summary.tsv`` and ``report.html`` from every subject
    already in ``output_dir`` (the ``group`` analysis level; also run after each participant run)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise InputError(output_dir, "output folder does not exist: run the participant level first")
    written = read_statuses(output_dir)
    group = derivatives.write_group_tables(output_dir, [files for _, st, files in written
                                                         if st["status"] != STATUS_FAILED])
    if report:
        _cohort_report(output_dir, written, group)
    return group


def _cohort_report(output_dir, written, group):
    import pandas as pd

    try:
        from deepmir_tasks.report import render_cohort_report
    except ImportError:  # reports are optional for the tables
        return None
    rows = []
    for key, st, files in written:
        table = (pd.read_csv(files["lesions"], sep="\t", na_values="n/a", keep_default_na=False)
                 if "lesions" in files else pd.DataFrame(columns=["label", "volume_mm3"]))
        is_iron = table["label"] == "iron"
        html = Path(output_dir) / f"{key}.html"
        rows.append(dict(participant_id=key.removeprefix("sub-"), status=st["status"], reason=st["reason"],
                         n_cmb=int((table["label"] == "cmb").sum()), n_iron=int(is_iron.sum()),
                         iron_volume_mm3=float(table.loc[is_iron, "volume_mm3"].sum()),
                         report=html.name if html.exists() else None))
    return render_cohort_report(Path(output_dir) / "report.html", rows, group_lesions_tsv=group.get("lesions"))
