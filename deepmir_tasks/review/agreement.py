"""Two raters' lesion-wise agreement on the same subjects.

- **Matched candidates** are the model's candidates both raters decided (same ``candidate_id``)
  plus the lesions each added that lie within 5 mm of one the other added (one to one, by
  distance, as in :func:`deepmir_tasks.lesions.metrics.match_lesions`).
- **Cohen's kappa** over the matched candidates, on the five decisions (``kappa``) and on
  lesion (CMB or iron) versus not (``kappa_lesion``): ``(p_o - p_e) / (1 - p_e)``; NaN when
  chance agreement is 1 (both raters gave one same answer to everything) or nothing matched.
- **Sensitivity**: each rater's lesions (accepted as CMB or iron, added ones included) matched,
  same class within 5 mm, to the other's; ``sensitivity_a`` is rater A's with B as the reference
  (matched / B's lesions), ``sensitivity_b`` the reverse; NaN when the reference has no lesion.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from deepmir_tasks.review.decisions import DECISIONS, TARGET_DECISIONS

__all__ = ["cohen_kappa", "decision_pairs", "lesion_counts", "subject_agreement", "summarise"]

AGREEMENT_COLUMNS = ("participant_id", "rater_a", "rater_b", "n_candidates", "observed_agreement", "kappa",
                     "kappa_lesion", "n_lesions_a", "n_lesions_b", "n_lesions_matched", "sensitivity_a",
                     "sensitivity_b")


def cohen_kappa(a, b, categories=None) -> float:
    """Cohen's kappa of two raters' answers on the same items (NaN when undefined)."""
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError("both raters must answer the same items")
    n = len(a)
    if n == 0:
        return float("nan")
    cats = list(categories) if categories is not None else sorted(set(a) | set(b))
    p_o = sum(x == y for x, y in zip(a, b)) / n
    p_e = sum((a.count(c) / n) * (b.count(c) / n) for c in cats)
    return float("nan") if p_e >= 1.0 else (p_o - p_e) / (1.0 - p_e)


def _rows(decisions: pd.DataFrame, rater: str) -> pd.DataFrame:
    return decisions[(decisions["rater"] == rater) & decisions["decision"].notna()]


def _xyz(df: pd.DataFrame) -> np.ndarray:
    return df[["x_mm", "y_mm", "z_mm"]].apply(pd.to_numeric, errors="coerce").to_numpy(float).reshape(-1, 3)


def decision_pairs(decisions: pd.DataFrame, rater_a: str, rater_b: str, tolerance_mm: float = 5.0) -> list[tuple]:
    """(A's decision, B's decision) on every matched candidate of one subject."""
    from deepmir_tasks.lesions.metrics import match_lesions

    a, b = _rows(decisions, rater_a), _rows(decisions, rater_b)
    model_a = a[a["source"] != "added"].set_index("candidate_id")["decision"]
    model_b = b[b["source"] != "added"].set_index("candidate_id")["decision"]
    both = [c for c in model_a.index if c in model_b.index]
    pairs = [(model_a[c], model_b[c]) for c in both]
    add_a, add_b = a[a["source"] == "added"], b[b["source"] == "added"]
    m = match_lesions(_xyz(add_a), _xyz(add_b), tolerance_mm)
    pairs += [(add_a["decision"].iloc[p], add_b["decision"].iloc[t]) for p, t, _ in m.pairs]
    return pairs


def lesion_counts(decisions: pd.DataFrame, rater_a: str, rater_b: str, tolerance_mm: float = 5.0) -> tuple:
    """(A's lesions, B's lesions, matched same-class pairs) of one subject."""
    from deepmir_tasks.lesions.metrics import match_lesions

    a, b = _rows(decisions, rater_a), _rows(decisions, rater_b)
    n_a = n_b = matched = 0
    for cls in TARGET_DECISIONS:
        la, lb = a[a["decision"] == cls], b[b["decision"] == cls]
        n_a, n_b = n_a + len(la), n_b + len(lb)
        matched += match_lesions(_xyz(la), _xyz(lb), tolerance_mm).tp
    return n_a, n_b, matched


def _row(label, rater_a, rater_b, pairs, counts) -> dict:
    n_a, n_b, matched = counts
    a = [x for x, _ in pairs]
    b = [y for _, y in pairs]
    return {"participant_id": label, "rater_a": rater_a, "rater_b": rater_b, "n_candidates": len(pairs),
            "observed_agreement": float(np.mean([x == y for x, y in pairs])) if pairs else float("nan"),
            "kappa": cohen_kappa(a, b, DECISIONS),
            "kappa_lesion": cohen_kappa([x in TARGET_DECISIONS for x in a], [y in TARGET_DECISIONS for y in b],
                                        [True, False]),
            "n_lesions_a": n_a, "n_lesions_b": n_b, "n_lesions_matched": matched,
            "sensitivity_a": matched / n_b if n_b else float("nan"),
            "sensitivity_b": matched / n_a if n_a else float("nan")}


def subject_agreement(decisions: pd.DataFrame, rater_a: str, rater_b: str, tolerance_mm: float = 5.0) -> dict:
    """One subject's agreement row (see the module's docstring)."""
    label = decisions["participant_id"].dropna().iloc[0] if decisions["participant_id"].notna().any() else "?"
    if "session_id" in decisions and decisions["session_id"].notna().any():
        label = f"{label}_{decisions['session_id'].dropna().iloc[0]}"
    return _row(label, rater_a, rater_b, decision_pairs(decisions, rater_a, rater_b, tolerance_mm),
                lesion_counts(decisions, rater_a, rater_b, tolerance_mm))


def summarise(tables: list[pd.DataFrame], rater_a: str, rater_b: str, tolerance_mm: float = 5.0) -> pd.DataFrame:
    """One row per subject both raters reviewed, then the pooled row (``participant_id`` ``all``)."""
    rows, pairs, counts = [], [], np.zeros(3, int)
    for table in tables:
        if not (table["rater"] == rater_a).any() or not (table["rater"] == rater_b).any():
            continue
        rows.append(subject_agreement(table, rater_a, rater_b, tolerance_mm))
        pairs += decision_pairs(table, rater_a, rater_b, tolerance_mm)
        counts += lesion_counts(table, rater_a, rater_b, tolerance_mm)
    rows.append(_row("all", rater_a, rater_b, pairs, tuple(int(c) for c in counts)))
    return pd.DataFrame(rows, columns=list(AGREEMENT_COLUMNS))
