"""The per-subject visual QC page (``sub-<label>.html``), after fMRIPrep's subject reports.

A rater reads it top to bottom: who and what was run; whether SWI and QSM line up with the T2w
(edges of the T2w drawn over them, and a CSS flicker); whether the brain mask is right; then one
tile per detected lesion (T2w, SWI and QSM crops through its centroid and its outline), CMBs first
and most confident first; candidates that were dropped as mimics in a collapsed section.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from deepmir_tasks.io import InputError, atomic_path
from deepmir_tasks.report import _html as H
from deepmir_tasks.report._images import (
    Grid,
    load_grid,
    hstack,
    lesion_tile_picture,
    overview_picture,
    overview_slices,
    png_data_uri,
)
from deepmir_tasks.report._tables import (
    LABELS,
    REGIONS,
    centroid_indices,
    read_lesion_table,
    sort_lesions,
    strip_prefix,
)

__all__ = ["render_subject_report"]

#: Lesion-table fields shown in a tile, with their captions (in order).
TILE_FIELDS = (
    ("region", "region"), ("volume_mm3", "vol. mm³"), ("diameter_mm", "diam. mm"),
    ("n_voxels", "voxels"), ("prob_max", "p max"), ("prob_mean", "p mean"),
    ("qsm_mean_ppm", "QSM mean ppm"), ("qsm_max_ppm", "QSM max ppm"),
    ("swi_contrast", "SWI contrast"), ("xyz", "x, y, z (mm)"), ("ijk", "voxel i, j, k"),
)
TILE_FOV_MM = 32.0
TILE_PANEL_PX = 92


def render_subject_report(out_html, *, participant_id, t2, swi, qsm, mask, dseg, lesions_tsv,
                          dropped_tsv=None, inputs=None, provenance=None, session_id=None,
                          input_warnings=None) -> Path:
    """Write the self-contained QC page of one subject; return its path.

    Args:
        out_html: where to write the page (conventionally ``sub-<label>[_ses-<label>].html``).
        participant_id: subject label, with or without ``sub-``.
        t2, swi, qsm, mask, dseg: NIfTI files in the working grid (one grid for all five); one or
            two of ``t2``, ``swi``, ``qsm`` may be None (a subject with a subset: said on the page,
            the missing image shown empty).
        lesions_tsv: the per-lesion table (lesion-table contract; ``i, j, k`` index the working grid).
        dropped_tsv: the table of candidates dropped as mimics (same columns plus ``reason``).
        inputs: description of the raw inputs, e.g. ``{"T2w": {"file": ..., "shape": ...,
            "voxel_size_mm": ...}, ...}``.
        provenance: software version, model name and SHA-256, parameters, run time...
        session_id: session label, with or without ``ses-``.
        input_warnings: the input checks' warnings (e.g. a resolution outside the supported range
            run with ``--allow-resolution``), shown first.

    Raises:
        InputError: an unreadable image or table, images on different grids, a lesion table
            without the needed columns or with a centroid outside the grid, or a table that
            belongs to another participant.
    """
    started = time.perf_counter()
    label = strip_prefix(participant_id, "sub-")
    if not label:
        raise ValueError("participant_id is empty")
    session = strip_prefix(session_id, "ses-") if session_id else None

    grid = load_grid(t2, swi, qsm, mask, dseg)
    lesions = _read_checked(lesions_tsv, "lesion table", label, session, grid)
    dropped = _read_checked(dropped_tsv, "dropped-candidate table", label, session, grid) \
        if dropped_tsv is not None else None

    title_id = f"sub-{label}" + (f" ses-{session}" if session else "")
    sections = [
        _header(title_id, grid, inputs, provenance),
        _checks(grid, lesions, input_warnings, no_qsm=qsm is None, no_t2w=t2 is None, no_swi=swi is None),
        _summary(lesions, dropped),
        _registration(grid),
        _brain_mask(grid),
        _lesion_tiles(grid, lesions),
        _dropped_section(grid, dropped, dropped_tsv is not None),
    ]
    body = "\n".join(s for s in sections if s)
    elapsed = time.perf_counter() - started
    body += f'\n<p class="muted">Page rendered in {elapsed:.1f} s.</p>'
    from deepmir_tasks import __version__

    text = H.page(f"DEEPMIR QC: {title_id}", body, f"deepmir {__version__}")
    out_html = Path(out_html)
    with atomic_path(out_html) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return out_html


# ----------------------------------------------------------------------------------------------


def _read_checked(path, what, label, session, grid: Grid) -> pd.DataFrame:
    df = read_lesion_table(path, what=what)
    if "participant_id" in df.columns:
        others = sorted({strip_prefix(p, "sub-") for p in df["participant_id"].dropna()} - {label})
        if others:
            raise InputError(path, f"{what} has rows of other participant(s) "
                                   f"{', '.join('sub-' + o for o in others[:3])}; expected sub-{label}")
    if session and "session_id" in df.columns:
        others = sorted({strip_prefix(s, "ses-") for s in df["session_id"].dropna()} - {session})
        if others:
            raise InputError(path, f"{what} has rows of other session(s) "
                                   f"{', '.join('ses-' + o for o in others[:3])}; expected ses-{session}")
    ijk = centroid_indices(df, path, grid.shape_in, what=what)
    df = df.copy()
    df["_ijk"] = [tuple(v) for v in ijk]
    return sort_lesions(df)


def _header(title_id: str, grid: Grid, inputs, provenance) -> str:
    from deepmir_tasks import __version__

    nav = ('<nav><a href="#summary">Summary</a><a href="#registration">Registration</a>'
           '<a href="#mask">Brain mask</a><a href="#lesions">Lesions</a>'
           '<a href="#dropped">Dropped candidates</a></nav>')
    out = [f"<h1>DEEPMIR quality control: {H.esc(title_id)}</h1>", nav, '<div class="grid2">']

    # inputs
    out.append("<div><h3>Inputs</h3>")
    if inputs:
        out.append(_inputs_table(inputs))
    else:
        out.append('<p class="muted">No description of the raw inputs was given.</p>')
    zooms = ", ".join(f"{z:g}" for z in grid.zooms_in)
    out.append(H.kv_table([
        ("working grid", f"{' × '.join(str(s) for s in grid.shape_in)} voxels of {H.esc(zooms)} mm, "
                         f"orientation {H.esc(''.join(grid.axcodes_in))}"),
    ]))
    out.append("</div>")

    # provenance
    out.append("<div><h3>Software and parameters</h3>")
    rows = [("report renderer", f"deepmir {H.esc(__version__)}")]
    for key, value in (provenance or {}).items():
        if isinstance(value, dict):
            rows.append((key, H.kv_table([(k, H.fmt_value(v)) for k, v in value.items()])))
        elif "time" in str(key).lower() or str(key).lower().endswith("_s"):
            rows.append((key, H.fmt_duration(value)))
        elif "sha" in str(key).lower():
            rows.append((key, f"<code>{H.esc(value)}</code>"))
        else:
            rows.append((key, H.fmt_value(value)))
    if not provenance:
        rows.append(("provenance", '<span class="muted">not given</span>'))
    out.append(H.kv_table(rows))
    out.append("</div></div>")
    return "\n".join(out)


def _inputs_table(inputs) -> str:
    if isinstance(inputs, dict) and inputs and all(isinstance(v, dict) for v in inputs.values()):
        keys: list[str] = []
        for v in inputs.values():
            keys += [k for k in v if k not in keys]
        rows = [[H.esc(name)] + [_input_cell(k, v.get(k)) for k in keys] for name, v in inputs.items()]
        return H.data_table(["input"] + keys, rows)
    if isinstance(inputs, dict):
        return H.kv_table([(k, _input_cell(k, v)) for k, v in inputs.items()])
    return f"<p>{H.esc(inputs)}</p>"


def _input_cell(key, value) -> str:
    if isinstance(value, (list, tuple)) and all(isinstance(x, (int, float)) for x in value):
        sep = " × " if "shape" in str(key).lower() else ", "
        return H.esc(sep.join(H.fmt(x, 4) for x in value))
    return H.fmt_value(value)


def _checks(grid: Grid, lesions: pd.DataFrame, input_warnings=None, no_qsm: bool = False,
            no_t2w: bool = False, no_swi: bool = False) -> str:
    warnings = [f"Input check: {w}" for w in input_warnings or []]
    if not grid.mask.any():
        warnings.append("The brain mask is empty: preprocessing failed; nothing below can be trusted.")
    frac = grid.mask.mean()
    if grid.mask.any() and (frac < 0.05 or frac > 0.85):
        warnings.append(f"The brain mask covers {100 * frac:.0f}% of the field of view; check it below.")
    n_dseg = int(np.count_nonzero(grid.dseg))
    if len(lesions) and n_dseg == 0:
        warnings.append("The lesion table has rows but the dseg has no labelled voxel: "
                        "the table and the segmentation do not belong together.")
    if len(lesions):
        outside = [str(lid) for lid, ijk in zip(lesions["lesion_id"], lesions["_ijk"])
                   if not grid.mask[grid.to_ras_index(ijk)]]
        if outside:
            warnings.append(f"{len(outside)} lesion centroid(s) lie outside the brain mask "
                            f"(lesion {', '.join(outside[:8])}{'…' if len(outside) > 8 else ''}).")
    if not np.any(grid.qsm) and not no_qsm:
        warnings.append("The QSM map is zero everywhere.")
    used = " + ".join(n for n, missing in (("T2w", no_t2w), ("SWI", no_swi), ("QSM", no_qsm)) if not missing)
    if no_qsm:
        warnings.append(f"No QSM: this subject ran on {used}. A calcification cannot be told from a "
                        "microbleed without the sign of its susceptibility, and veins are told apart by "
                        "shape alone; check each CMB below.")
    if no_swi:
        warnings.append(f"No SWI: this subject ran on {used}. No call had SWI evidence (no SWI contrast "
                        "in its row, no blooming to see)" + (
                            "; the QSM was aligned to the T2w by its header or its brain support, not through "
                            "a registered SWI: check the registration below." if not (no_qsm or no_t2w) else "."))
    if no_t2w:
        warnings.append(f"No T2w: this subject ran on {used}, in the {'SWI' if not no_swi else 'QSM'}'s "
                        "space: the brain mask and the MNI affine (regions) come from that image, and no "
                        "T2w anatomy stands behind each call.")
    return "".join(f'<div class="warn">{H.esc(w)}</div>' for w in warnings)


def _summary(lesions: pd.DataFrame, dropped: pd.DataFrame | None) -> str:
    out = ['<h2 id="summary">Summary</h2>', '<div class="grid2">']
    labels = list(LABELS) + sorted(set(lesions["label"].dropna()) - set(LABELS))
    vol = pd.to_numeric(lesions.get("volume_mm3", pd.Series(dtype=float)), errors="coerce")
    diam = pd.to_numeric(lesions.get("diameter_mm", pd.Series(dtype=float)), errors="coerce")
    rows = []
    for lab in labels:
        sel = lesions["label"] == lab
        rows.append([f'<span class="badge {H.esc(lab) if lab in LABELS else "other"}">{H.esc(lab.upper() if lab == "cmb" else lab)}</span>',
                     str(int(sel.sum())), H.fmt(vol[sel].sum() if sel.any() else 0.0),
                     H.fmt(diam[sel].median() if sel.any() else None)])
    out.append("<div><h3>Detections per class</h3>"
               + H.data_table(["class", "count", "total volume mm³", "median diameter mm"], rows,
                              numeric=(1, 2, 3)) + "</div>")

    if "region" in lesions.columns:
        regions = list(REGIONS) + sorted(set(lesions["region"].dropna()) - set(REGIONS))
        if lesions["region"].isna().any():
            regions.append(None)
        rows = []
        for reg in regions:
            sel = lesions["region"].isna() if reg is None else lesions["region"] == reg
            counts = [int((sel & (lesions["label"] == lab)).sum()) for lab in labels]
            if reg is None and not sum(counts):
                continue
            rows.append([H.esc(reg)] + [str(c) for c in counts] + [str(sum(counts))])
        out.append("<div><h3>Per region (MARS)</h3>"
                   + H.data_table(["region"] + [lab.upper() if lab == "cmb" else lab for lab in labels]
                                  + ["total"], rows, numeric=tuple(range(1, len(labels) + 2))) + "</div>")
    if dropped is not None:
        if len(dropped) and "reason" in dropped.columns:
            counts = dropped["reason"].fillna("n/a").value_counts()
            rows = [[H.esc(r), str(int(c))] for r, c in counts.items()]
        else:
            rows = [["(none)", str(len(dropped))]]
        out.append("<div><h3>Dropped candidates</h3>"
                   + H.data_table(["reason", "count"], rows, numeric=(1,)) + "</div>")
    out.append("</div>")
    return "\n".join(out)


def _figure(rgb: np.ndarray, caption: str, alt: str) -> str:
    h, w = rgb.shape[:2]
    return (f"<figure>{H.img_tag(png_data_uri(rgb), alt, w, h)}"
            f"<figcaption>{H.esc(caption)}</figcaption></figure>")


def _slice_caption(grid: Grid, plane: str, index: int) -> str:
    axis = {"sagittal": 0, "coronal": 1, "axial": 2}[plane]
    return f"{plane} {index + 1}/{grid.t2.shape[axis]}"


def _registration(grid: Grid) -> str:
    slices = overview_slices(grid)
    out = ['<h2 id="registration">Registration check</h2>',
           '<p class="note">Edges of the T2w (red) drawn over the SWI and the QSM in the working '
           'grid. Where registration worked, the red lines follow the ventricles, the cortex and the '
           'brain outline of the picture below them. Axial slices: anterior up, subject\'s left on '
           'the left.</p>']
    for modality, name in (("swi", "SWI"), ("qsm", "QSM")):
        figs = [_figure(overview_picture(grid, modality, plane, idx, overlay="t2_edges"),
                        _slice_caption(grid, plane, idx), f"{name} {plane} slice with T2w edges")
                for plane, idx in slices]
        out.append(f"<h3>{name} with T2w edges</h3><div class=\"strip\">{''.join(figs)}</div>")

    axial = [(p, i) for p, i in slices if p == "axial"]
    t2_mosaic = hstack([overview_picture(grid, "t2", p, i) for p, i in axial], fill=0)
    swi_mosaic = hstack([overview_picture(grid, "swi", p, i) for p, i in axial], fill=0)
    h, w = t2_mosaic.shape[:2]
    out.append(
        "<h3>Flicker: T2w ↔ SWI</h3>"
        '<p class="note">The two images alternate every second (hover to pause on one); anatomy '
        "should stay put while only the contrast changes.</p>"
        '<div class="flicker">'
        + H.img_tag(png_data_uri(t2_mosaic), "T2w axial slices", w, h, css_class="bottom")
        + H.img_tag(png_data_uri(swi_mosaic), "SWI axial slices", w, h, css_class="top")
        + "</div>"
    )
    return "\n".join(out)


def _brain_mask(grid: Grid) -> str:
    figs = [_figure(overview_picture(grid, "t2", plane, idx, overlay="mask"),
                    _slice_caption(grid, plane, idx), f"T2w {plane} slice with brain mask outline")
            for plane, idx in overview_slices(grid)]
    frac = 100.0 * grid.mask.mean()
    vol_ml = grid.mask.sum() * float(np.prod(grid.zooms)) / 1000.0
    return ('<h2 id="mask">Brain mask</h2>'
            f'<p class="note">Outline of the brain mask (cyan) on the T2w: {vol_ml:.0f} ml, '
            f'{frac:.1f}% of the field of view.</p>'
            f'<div class="strip">{"".join(figs)}</div>')


#: fields given a whole line of the tile's table, above and below the paired ones
_TOP_FIELDS = ("reason", "region")
_BOTTOM_FIELDS = ("xyz", "ijk")


def _tile_rows(row: pd.Series, extra=()) -> str:
    """The lesion's table row as a compact table: wide fields on their own line, others in pairs."""
    top, pairs, bottom = [], [], []
    for key, caption in tuple(extra) + TILE_FIELDS:
        if key == "xyz":
            value = ", ".join(_mm(row.get(c)) for c in ("x_mm", "y_mm", "z_mm"))
        elif key == "ijk":
            value = ", ".join(str(v) for v in row["_ijk"])
        elif key in ("region", "reason"):
            value = H.esc(row.get(key))
        else:
            value = H.fmt(row.get(key))
        (top if key in _TOP_FIELDS else bottom if key in _BOTTOM_FIELDS else pairs).append((caption, value))
    trs = [f'<tr><th>{H.esc(c)}</th><td colspan="3">{v}</td></tr>' for c, v in top]
    for n in range(0, len(pairs), 2):
        pair = pairs[n:n + 2]
        trs.append("<tr>" + "".join(f"<th>{H.esc(c)}</th><td>{v}</td>" for c, v in pair) + "</tr>")
    trs += [f'<tr><th>{H.esc(c)}</th><td colspan="3">{v}</td></tr>' for c, v in bottom]
    return '<table class="lesion-row">' + "".join(trs) + "</table>"


def _mm(value) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if np.isnan(v) else f"{v:.1f}"


def _tile(grid: Grid, row: pd.Series, css: str, *, contour: bool, extra=()) -> str:
    lab = row.get("label")
    lab_text = "n/a" if not isinstance(lab, str) else lab
    lab_class = lab_text if lab_text in LABELS else "other"
    lesion_id = row["lesion_id"]
    rgb = lesion_tile_picture(grid, grid.to_ras_index(row["_ijk"]), fov_mm=TILE_FOV_MM,
                              panel_px=TILE_PANEL_PX, contour=contour)
    h, w = rgb.shape[:2]
    img = H.img_tag(png_data_uri(rgb), f"lesion {lesion_id}: T2w, SWI, QSM, SWI with outline", w, h,
                    css_class="tile-img")
    prob = H.fmt(row.get("prob_max"))
    last = "SWI + outline" if contour else "SWI + marker"
    return (f'<div class="{css} label-{H.esc(lab_class)}" data-lesion-id="{H.esc(lesion_id)}" '
            f'data-label="{H.esc(lab_text)}" id="{css.split("-")[0]}-{H.esc(lesion_id)}">'
            f'<div class="tile-head"><span><span class="badge {H.esc(lab_class)}">'
            f'{H.esc(lab_text.upper() if lab_text == "cmb" else lab_text)}</span> '
            f"lesion {H.esc(lesion_id)}</span><span>p<sub>max</sub> {prob}</span></div>"
            f"{img}"
            f'<div class="panels"><span>T2w</span><span>SWI</span><span>QSM</span><span>{last}</span></div>'
            f"{_tile_rows(row, extra)}</div>")


def _lesion_tiles(grid: Grid, lesions: pd.DataFrame) -> str:
    legend = ('<p class="legend note"><span><span class="sw" style="background:#ff2828"></span>CMB '
              'outline</span><span><span class="sw" style="background:#ffc800"></span>iron outline</span>'
              '<span><span class="sw" style="background:#3cff3c"></span>centroid ticks</span>'
              f"Axial crops of {TILE_FOV_MM:g} × {TILE_FOV_MM:g} mm through each centroid; same "
              "display window for every tile. Sorted by class, then by maximum probability.</p>")
    if lesions.empty:
        return ('<h2 id="lesions">Detected lesions (0)</h2>'
                '<p class="note">No lesion was detected.</p>')
    tiles = [_tile(grid, row, "lesion-tile", contour=True) for _, row in lesions.iterrows()]
    return (f'<h2 id="lesions">Detected lesions ({len(lesions)})</h2>{legend}'
            f'<div class="tiles">{"".join(tiles)}</div>')


def _dropped_section(grid: Grid, dropped: pd.DataFrame | None, given: bool) -> str:
    if not given:
        return ('<h2 id="dropped">Dropped candidates</h2>'
                '<p class="note">No table of dropped candidates was given.</p>')
    n = len(dropped)
    tiles = "".join(_tile(grid, row, "dropped-tile", contour=False, extra=(("reason", "reason"),))
                    for _, row in dropped.iterrows())
    inner = f'<div class="tiles">{tiles}</div>' if n else '<p class="note">None.</p>'
    return ('<h2 id="dropped">Dropped candidates</h2>'
            '<details class="dropped"><summary>'
            f"{n} candidate(s) dropped as mimics (negative QSM, too large…) — click to show</summary>"
            f"{inner}</details>")
