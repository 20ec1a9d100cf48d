"""Cohort tables: concatenate the per-subject lesion tables and summaries."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from deepmir_tasks.io import InputError

__all__ = ["combine_tables", "read_table", "write_group_tables"]

_TEXT = {"participant_id": str, "session_id": str, "label": str, "region": str, "reason": str}


def read_table(path, *, what: str = "table") -> pd.DataFrame:
    """Read a DEEPMIR TSV (``n/a`` = missing, identifiers as text); header-only files are valid."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, f"{what} does not exist")
    try:
        return pd.read_csv(path, sep="\t", na_values=["n/a"], dtype=_TEXT)
    except pd.errors.EmptyDataError:
        raise InputError(path, f"{what} is empty (no header line)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise InputError(path, f"{what} is not a readable TSV ({first})") from None


def combine_tables(paths, default_columns=()) -> pd.DataFrame:
    """Concatenate subject tables (lesions, dropped or summaries) into one cohort table.

    Columns are the union, in order of first appearance (``session_id`` is filled with ``NaN``
    for subjects without sessions). Rows keep the order of ``paths``. An empty list, or tables
    with a header and no rows, give a table with the columns and no rows (``default_columns``
    when there is no table at all, so the written file still has its header). Raises
    :class:`~deepmir_tasks.io.InputError` naming a missing or unreadable file.
    """
    frames = [read_table(p, what="subject table") for p in paths]
    columns: list[str] = [] if frames else list(default_columns)
    for df in frames:
        columns += [c for c in df.columns if c not in columns]
    if "session_id" in columns and columns.index("session_id") != 1 and columns[0] == "participant_id":
        columns.remove("session_id")
        columns.insert(1, "session_id")
    non_empty = [df for df in frames if len(df)]
    if not non_empty:
        return pd.DataFrame(columns=columns)
    out = pd.concat(non_empty, ignore_index=True, sort=False)
    return out.reindex(columns=columns)


def write_group_tables(lesion_paths, summary_paths, out_dir, dropped_paths=()) -> dict:
    """Write ``group/lesions.tsv``, ``group/summary.tsv`` (and ``group/dropped.tsv``) under ``out_dir``.

    ``out_dir`` is the derivatives root; the tables go in its ``group`` folder. Returns their paths.
    """
    from deepmir_tasks.io import write_tsv

    from deepmir_tasks.lesions.schema import LESION_COLUMNS, SUMMARY_COLUMNS

    lesion_cols = [c for c in LESION_COLUMNS if c != "session_id"]
    group = Path(out_dir) / "group"
    out = {"lesions": write_tsv(combine_tables(lesion_paths, lesion_cols), group / "lesions.tsv"),
           "summary": write_tsv(combine_tables(summary_paths, SUMMARY_COLUMNS), group / "summary.tsv")}
    if dropped_paths:
        out["dropped"] = write_tsv(combine_tables(dropped_paths, lesion_cols + ["reason"]),
                                   group / "dropped.tsv")
    return out
