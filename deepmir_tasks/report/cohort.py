"""The cohort QC page (``report.html``): every subject's status and counts, with distributions.

Failed subjects come first so that nobody scrolls past them; each row links to the subject's page.
Distributions (lesions per subject, lesion volumes, QSM of the detections) are drawn from the
group lesion table with matplotlib's Agg canvas (no global backend is set).
"""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pandas as pd

from deepmir_tasks.io import atomic_path
from deepmir_tasks.report import _html as H
from deepmir_tasks.report._tables import LABELS, REGIONS, read_lesion_table, strip_prefix

__all__ = ["render_cohort_report", "STATUSES"]

#: Allowed subject statuses, in display order.
STATUSES = ("failed", "done", "cached")
_COLOURS = {"cmb": "#d62828", "iron": "#c99700"}
_SAFE_LINK = re.compile(r"^(?![a-zA-Z][a-zA-Z0-9+.-]*:)|^(https?|file):", re.ASCII)


def render_cohort_report(out_html, subjects: list[dict], group_lesions_tsv=None) -> Path:
    """Write the cohort's self-contained QC page; return its path.

    Args:
        out_html: where to write the page (conventionally ``report.html`` at the derivatives root).
        subjects: one dict per subject with ``participant_id``, ``status`` (``done``, ``failed`` or
            ``cached``), ``reason`` (for failures), ``n_cmb``, ``n_iron``, ``iron_volume_mm3`` and
            ``report`` (link to the subject page relative to ``out_html``, or None).
        group_lesions_tsv: the group lesion table (all subjects' lesions, with ``participant_id``),
            from which the distribution plots are drawn.

    Raises:
        ValueError: a subject without ``participant_id`` or with an unknown ``status``.
        InputError: an unreadable group table or one without ``participant_id``/``label``.
    """
    rows = [_normalise(s, n) for n, s in enumerate(subjects)]
    rows.sort(key=lambda r: (STATUSES.index(r["status"]), _natural(r["label"])))
    group = None
    if group_lesions_tsv is not None:
        group = read_lesion_table(group_lesions_tsv, what="group lesion table",
                                  required=("participant_id", "label"))
        group["participant_id"] = group["participant_id"].map(lambda v: strip_prefix(v, "sub-"))

    n_status = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    body = ["<h1>DEEPMIR quality control: cohort</h1>",
            '<nav><a href="#subjects">Subjects</a><a href="#distributions">Distributions</a></nav>',
            f"<p>{len(rows)} subject(s): {n_status['done']} done, {n_status['cached']} cached "
            f"(reused from an earlier run), <strong>{n_status['failed']} failed</strong>.</p>"]
    body.append(_warnings(rows, group))
    body.append(_subject_table(rows))
    body.append(_distributions(rows, group))
    from deepmir_tasks import __version__

    text = H.page("DEEPMIR QC: cohort", "\n".join(b for b in body if b), f"deepmir {__version__}")
    out_html = Path(out_html)
    with atomic_path(out_html) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return out_html


# ----------------------------------------------------------------------------------------------


def _normalise(subject: dict, n: int) -> dict:
    if not isinstance(subject, dict):
        raise ValueError(f"subjects[{n}] must be a dict, got {type(subject).__name__}")
    if not subject.get("participant_id"):
        raise ValueError(f"subjects[{n}] has no participant_id")
    status = str(subject.get("status", "")).strip().lower()
    if status not in STATUSES:
        raise ValueError(f"subjects[{n}] ({subject['participant_id']}) has status {subject.get('status')!r}; "
                         f"expected one of {', '.join(STATUSES)}")
    return {
        "label": strip_prefix(subject["participant_id"], "sub-"),
        "status": status,
        "reason": subject.get("reason"),
        "n_cmb": _number(subject.get("n_cmb")),
        "n_iron": _number(subject.get("n_iron")),
        "iron_volume_mm3": _number(subject.get("iron_volume_mm3")),
        "report": subject.get("report"),
    }


def _number(value):
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return None if np.isnan(v) else v


def _natural(text: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(text))]


def _link(report) -> str:
    if not report:
        return '<span class="muted">—</span>'
    target = str(report)
    if not _SAFE_LINK.match(target):
        return H.esc(target)  # a script: or data: URL is shown, not linked
    return f'<a href="{H.esc(target)}">{H.esc(Path(target).name or target)}</a>'


def _subject_table(rows) -> str:
    header = ["participant", "status", "CMB", "iron", "iron volume mm³", "subject report", "reason"]
    cells, classes = [], []
    for r in rows:
        cells.append([
            f"sub-{H.esc(r['label'])}",
            f'<span class="badge {r["status"]}">{r["status"]}</span>',
            H.fmt(r["n_cmb"]), H.fmt(r["n_iron"]), H.fmt(r["iron_volume_mm3"]),
            _link(r["report"]),
            H.esc(r["reason"]) if r["reason"] else "",
        ])
        classes.append(r["status"])
    return '<h2 id="subjects">Subjects</h2>' + H.data_table(header, cells, numeric=(2, 3, 4),
                                                             row_classes=classes)


def _warnings(rows, group) -> str:
    """Subjects whose counts disagree with the group table (a stale or mixed-up table)."""
    if group is None:
        return ""
    out = []
    counts = group.groupby(["participant_id", "label"]).size()
    for r in rows:
        if r["status"] == "failed":
            continue
        for lab, key in (("cmb", "n_cmb"), ("iron", "n_iron")):
            expected = r[key]
            found = int(counts.get((r["label"], lab), 0))
            if expected is not None and int(expected) != found:
                out.append(f"sub-{r['label']}: {int(expected)} {lab} in the subject summary but "
                           f"{found} in the group lesion table.")
    failed = {r["label"] for r in rows if r["status"] == "failed"}
    stray = sorted(set(group["participant_id"].dropna()) & failed, key=_natural)
    if stray:
        out.append(f"The group lesion table has rows of failed subject(s): "
                   f"{', '.join('sub-' + s for s in stray[:10])}.")
    return "".join(f'<div class="warn">{H.esc(w)}</div>' for w in out[:50])


def _distributions(rows, group) -> str:
    out = ['<h2 id="distributions">Distributions</h2>']
    if group is None:
        out.append('<p class="note">No group lesion table was given: the plots of lesion volumes '
                   "and QSM values need it. Counts per subject come from the subject summaries.</p>")
    out.append(f'<img src="{_plots(rows, group)}" alt="distributions of lesion counts, volumes and QSM">')
    if group is not None and "region" in group.columns and len(group):
        labels = list(LABELS) + sorted(set(group["label"].dropna()) - set(LABELS))
        regions = list(REGIONS) + sorted(set(group["region"].dropna()) - set(REGIONS))
        table = []
        for reg in regions:
            c = [int(((group["region"] == reg) & (group["label"] == lab)).sum()) for lab in labels]
            table.append([H.esc(reg)] + [str(v) for v in c] + [str(sum(c))])
        out.append("<h3>Detections per region (MARS), whole cohort</h3>"
                   + H.data_table(["region"] + [lab.upper() if lab == "cmb" else lab for lab in labels]
                                  + ["total"], table, numeric=tuple(range(1, len(labels) + 2))))
    return "\n".join(out)


def _plots(rows, group) -> str:
    """One PNG with three panels: lesions per subject, lesion volumes, QSM of detections."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 3.4), dpi=90, layout="constrained")
    FigureCanvasAgg(fig)
    ax_n, ax_v, ax_q = fig.subplots(1, 3)
    usable = sorted((r for r in rows if r["status"] != "failed"), key=lambda r: _natural(r["label"]))

    # lesions per subject
    per_subject = {}
    for lab, key in (("cmb", "n_cmb"), ("iron", "n_iron")):
        if group is not None:
            counts = group[group["label"] == lab].groupby("participant_id").size()
            per_subject[lab] = np.array([int(counts.get(r["label"], 0)) for r in usable])
        else:
            per_subject[lab] = np.array([r[key] for r in usable if r[key] is not None])
    n_subj = max(len(v) for v in per_subject.values())
    if n_subj and group is not None and n_subj <= 40:
        # few subjects: one pair of bars per subject
        x = np.arange(n_subj)
        for shift, lab in ((-0.2, "cmb"), (0.2, "iron")):
            ax_n.bar(x + shift, per_subject[lab], width=0.4, color=_COLOURS[lab], label=_name(lab))
        ax_n.set_xticks(x, [r["label"] for r in usable], rotation=90 if n_subj > 12 else 0, fontsize=8)
        ax_n.set_xlabel("participant")
        ax_n.set_ylabel("lesions")
        ax_n.legend(frameon=False)
    elif any(len(v) for v in per_subject.values()):
        top = max(int(max(v.max() if len(v) else 0 for v in per_subject.values())), 1)
        bins = np.arange(-0.5, top + 1.5, max(1, int(np.ceil((top + 1) / 30))))
        labs = [lab for lab in per_subject if len(per_subject[lab])]
        ax_n.hist([per_subject[lab] for lab in labs], bins=bins, color=[_COLOURS[lab] for lab in labs],
                  label=[_name(lab) for lab in labs])
        ax_n.set_xlabel("lesions per subject")
        ax_n.set_ylabel("subjects")
        ax_n.legend(frameon=False)
    else:
        _empty(ax_n, "no finished subject")
    ax_n.set_title("Lesions per subject")

    # volumes and QSM
    for ax, column, xlabel, title, log in (
        (ax_v, "volume_mm3", "volume (mm³)", "Lesion volumes", True),
        (ax_q, "qsm_mean_ppm", "mean QSM (ppm)", "QSM of detections", False),
    ):
        drawn = False
        if group is not None and column in group.columns:
            values = {lab: pd.to_numeric(group.loc[group["label"] == lab, column], errors="coerce").dropna()
                      .to_numpy() for lab in LABELS}
            values = {k: (v[v > 0] if log else v) for k, v in values.items()}
            every = np.concatenate([v for v in values.values()]) if values else np.array([])
            if every.size:
                if log:
                    lo, hi = every.min(), every.max()
                    bins = np.geomspace(lo * 0.9, max(hi * 1.1, lo * 1.2), 25)
                    ax.set_xscale("log")
                else:
                    lo, hi = every.min(), every.max()
                    pad = max(1e-3, 0.05 * (hi - lo))
                    bins = np.linspace(lo - pad, hi + pad, 25)
                labs = [lab for lab, v in values.items() if v.size]
                ax.hist([values[lab] for lab in labs], bins=bins, color=[_COLOURS[lab] for lab in labs],
                        label=[_name(lab) for lab in labs])
                ax.legend(frameon=False)
                drawn = True
        if not drawn:
            _empty(ax, "no lesions" if group is not None else "no group table")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("lesions")
        ax.set_title(title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _name(label: str) -> str:
    return label.upper() if label == "cmb" else label


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#5b6475")
    ax.set_xticks([])
    ax.set_yticks([])
