"""Reading the per-lesion tables (the lesion-table contract) for the reports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from deepmir_tasks.io import InputError

#: Columns of the per-lesion table, in contract order (``session_id`` only when sessions exist).
LESION_COLUMNS = (
    "participant_id", "session_id", "lesion_id", "label", "n_voxels", "volume_mm3", "diameter_mm",
    "x_mm", "y_mm", "z_mm", "i", "j", "k", "prob_max", "prob_mean", "qsm_mean_ppm", "qsm_max_ppm",
    "swi_contrast", "region",
)
#: MARS regions in display order.
REGIONS = (
    "lobar-frontal", "lobar-parietal", "lobar-temporal", "lobar-occipital", "lobar-insula", "lobar",
    "deep", "infratentorial",
)
#: Classes in display order.
LABELS = ("cmb", "iron")

_TEXT_COLUMNS = {"participant_id": str, "session_id": str, "lesion_id": str, "label": str,
                 "region": str, "reason": str}


def read_lesion_table(path, *, what: str = "lesion table", required=("lesion_id", "label")) -> pd.DataFrame:
    """Read a per-lesion TSV (``n/a`` = missing) and check the columns the reports need.

    Identifiers (``participant_id``, ``lesion_id``...) are read as text so that ``01`` stays ``01``;
    ``label`` is lower-cased. A table with a header and no rows is valid (no lesions).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, f"{what} does not exist")
    if path.is_dir():
        raise InputError(path, f"{what} path is a folder, not a TSV file")
    try:
        df = pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=True, dtype=_TEXT_COLUMNS)
    except pd.errors.EmptyDataError:
        raise InputError(path, f"{what} is empty (no header line)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(path, f"{what} is not a readable TSV ({first})") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise InputError(path, f"{what} lacks the column(s) {', '.join(missing)} "
                               f"(has: {', '.join(map(str, df.columns)) or 'none'})")
    if "label" in df.columns:
        df["label"] = df["label"].str.strip().str.lower()
    for col in ("participant_id", "session_id"):
        if col in df.columns:
            df[col] = df[col].str.strip()
    return df


def centroid_indices(df: pd.DataFrame, path, shape, *, what: str = "lesion table") -> np.ndarray:
    """The ``i, j, k`` columns as an (n, 3) int array, checked to be whole numbers inside ``shape``."""
    missing = [c for c in ("i", "j", "k") if c not in df.columns]
    if missing:
        raise InputError(path, f"{what} lacks the centroid voxel column(s) {', '.join(missing)}")
    ijk = df[["i", "j", "k"]].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    bad = ~np.all(np.isfinite(ijk), axis=1)
    if bad.any():
        row = int(np.argmax(bad))
        raise InputError(path, f"{what}: lesion {df['lesion_id'].iloc[row]} has a missing or "
                               "non-numeric centroid voxel (i, j, k)")
    rounded = np.rint(ijk)
    outside = np.any((rounded < 0) | (rounded > np.asarray(shape) - 1), axis=1)
    if outside.any():
        row = int(np.argmax(outside))
        raise InputError(path, f"{what}: lesion {df['lesion_id'].iloc[row]} centroid voxel "
                               f"{tuple(int(v) for v in rounded[row])} lies outside the image grid "
                               f"{tuple(int(s) for s in shape)}")
    return rounded.astype(int)


def sort_lesions(df: pd.DataFrame) -> pd.DataFrame:
    """Order lesions by label (CMB, iron, then others) then by confidence (``prob_max`` descending).

    Missing probabilities go last within their label; ties keep a natural ``lesion_id`` order.
    """
    if df.empty:
        return df.copy()
    out = df.copy()
    label_rank = {name: n for n, name in enumerate(LABELS)}
    out["_label_rank"] = out["label"].map(lambda v: label_rank.get(v, len(LABELS)))
    out["_label_text"] = out["label"].fillna("")
    if "prob_max" in out.columns:
        prob = pd.to_numeric(out["prob_max"], errors="coerce")
    else:
        prob = pd.Series(np.nan, index=out.index)
    out["_prob"] = -prob.fillna(-np.inf)  # descending, NaN last
    ids = out["lesion_id"].astype(str)
    out["_id_num"] = pd.to_numeric(ids, errors="coerce").fillna(np.inf)
    out["_id_text"] = ids
    out = out.sort_values(["_label_rank", "_label_text", "_prob", "_id_num", "_id_text"], kind="stable")
    return out.drop(columns=["_label_rank", "_label_text", "_prob", "_id_num", "_id_text"])


def strip_prefix(value: str | None, prefix: str) -> str | None:
    """``"sub-01"`` -> ``"01"`` (and ``"01"`` stays ``"01"``)."""
    if value is None:
        return None
    value = str(value).strip()
    return value[len(prefix):] if value.startswith(prefix) else value
