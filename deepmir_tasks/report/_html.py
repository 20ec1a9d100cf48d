"""HTML building blocks shared by the subject and cohort reports.

Pages are self-contained: one inline stylesheet, system fonts, images as data URIs, no scripts.
Every value that comes from a file or a caller goes through :func:`esc`.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
from numbers import Number

CSS = """
:root { --fg:#1d2330; --muted:#5b6475; --line:#d6dae2; --bg:#ffffff; --panel:#f5f6f9;
        --cmb:#d62828; --iron:#c99700; --ok:#2a9d4b; --fail:#d62828; --cached:#4a6fa5; }
* { box-sizing: border-box; }
body { font-family: system-ui, -apple-system, "Segoe UI", "DejaVu Sans", Arial, sans-serif;
       color: var(--fg); background: var(--bg); margin: 0 auto; padding: 16px 24px 48px;
       max-width: 1280px; font-size: 14px; line-height: 1.4; }
h1 { font-size: 22px; margin: 4px 0 2px; }
h2 { font-size: 18px; margin: 28px 0 8px; padding-top: 6px; border-top: 2px solid var(--line); }
h3 { font-size: 15px; margin: 16px 0 6px; }
p.note, .muted { color: var(--muted); }
nav { margin: 6px 0 10px; }
nav a { margin-right: 14px; }
a { color: #1f5fbf; }
table { border-collapse: collapse; margin: 4px 0 10px; }
th, td { border: 1px solid var(--line); padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: var(--panel); font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.kv th { width: 190px; }
.grid2 { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; }
.warn { background: #fff4d6; border: 1px solid #e7c35a; padding: 6px 10px; margin: 6px 0; }
.strip { display: flex; flex-wrap: wrap; gap: 6px; align-items: flex-end; }
figure { margin: 0; }
figure img { display: block; background: #000; }
figcaption { font-size: 12px; color: var(--muted); text-align: center; }
img.px { image-rendering: pixelated; }
.flicker { position: relative; display: inline-block; }
.flicker img { display: block; }
.flicker img.top { position: absolute; left: 0; top: 0; animation: flick 2s steps(1, end) infinite; }
.flicker:hover img.top { animation-play-state: paused; }
@keyframes flick { 0% { opacity: 1; } 50% { opacity: 0; } }
.tiles { display: flex; flex-wrap: wrap; gap: 10px; }
.lesion-tile, .dropped-tile { border: 1px solid var(--line); border-left: 6px solid var(--muted);
       padding: 6px; background: var(--panel); width: 394px; }
.label-cmb { border-left-color: var(--cmb); }
.label-iron { border-left-color: var(--iron); }
.tile-head { display: flex; justify-content: space-between; font-weight: 600; margin-bottom: 4px; }
.panels { display: flex; justify-content: space-between; font-size: 11px; color: var(--muted);
          width: 374px; margin: 1px 0 4px; }
.panels span { width: 92px; text-align: center; }
.lesion-row { font-size: 12px; margin: 0; width: 100%; }
.lesion-row th, .lesion-row td { padding: 1px 4px; }
.lesion-row th { white-space: nowrap; font-weight: 600; }
.badge { display: inline-block; padding: 0 7px; border-radius: 9px; color: #fff; font-size: 12px;
         font-weight: 600; }
.badge.cmb { background: var(--cmb); } .badge.iron { background: var(--iron); }
.badge.done { background: var(--ok); } .badge.failed { background: var(--fail); }
.badge.cached { background: var(--cached); } .badge.other { background: var(--muted); }
tr.failed td { background: #fdecec; }
details { margin: 8px 0; border: 1px solid var(--line); padding: 6px 10px; }
details > summary { cursor: pointer; font-weight: 600; }
.legend span { margin-right: 14px; }
.sw { display: inline-block; width: 12px; height: 12px; vertical-align: -1px; margin-right: 4px; }
footer { margin-top: 30px; color: var(--muted); font-size: 12px; }
"""


def esc(value) -> str:
    """HTML-escape any value (``None``/NaN shown as ``n/a``)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return html.escape(str(value), quote=True)


def fmt(value, digits: int = 3) -> str:
    """Format a number compactly for a table (escaped); non-numbers are escaped as they are."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return esc(value)
    if isinstance(value, Number):
        v = float(value)
        if math.isnan(v):
            return "n/a"
        if v.is_integer() and abs(v) < 1e12:
            return str(int(v))
        if abs(v) >= 1000 or abs(v) < 1e-3:
            return f"{v:.{digits}g}"
        return f"{v:.{digits}g}" if abs(v) < 1 else f"{v:.{max(digits - 1, 1)}f}"
    return esc(value)


def fmt_value(value) -> str:
    """A parameter value for a key/value table: numbers formatted, containers as JSON."""
    if isinstance(value, (dict, list, tuple)):
        return "<code>" + esc(json.dumps(value, default=str)) + "</code>"
    return fmt(value, digits=6)


def fmt_duration(seconds) -> str:
    """``3725.2`` -> ``1 h 02 min 05 s``; strings are passed through escaped."""
    if isinstance(seconds, Number) and not isinstance(seconds, bool) and math.isfinite(float(seconds)):
        s = float(seconds)
        if s < 60:
            return f"{s:.1f} s"
        m, s = divmod(int(round(s)), 60)
        h, m = divmod(m, 60)
        return f"{h} h {m:02d} min {s:02d} s" if h else f"{m} min {s:02d} s"
    return esc(seconds)


def kv_table(rows, css_class: str = "kv") -> str:
    """A two-column table from ``(key, html_value)`` pairs (values must already be HTML)."""
    body = "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="{css_class}">{body}</table>'


def data_table(header, rows, numeric=(), row_classes=None) -> str:
    """A table with a header row; ``rows`` hold HTML strings; ``numeric`` column indices align right."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for n, row in enumerate(rows):
        cls = f' class="{esc(row_classes[n])}"' if row_classes and row_classes[n] else ""
        cells = "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>"
                        for i, c in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def img_tag(uri: str, alt: str, width: int | None = None, height: int | None = None,
            css_class: str | None = None, display_width: int | None = None) -> str:
    """An ``<img>`` with an embedded data URI; ``display_width`` scales it on screen only."""
    attrs = [f'src="{uri}"', f'alt="{esc(alt)}"']
    if display_width and width and height:
        attrs.append(f'width="{display_width}" height="{int(round(height * display_width / width))}"')
    elif width and height:
        attrs.append(f'width="{width}" height="{height}"')
    if css_class:
        attrs.append(f'class="{esc(css_class)}"')
    return "<img " + " ".join(attrs) + ">"


def page(title: str, body: str, generator: str) -> str:
    """Wrap ``body`` into a complete self-contained HTML document."""
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<meta name=\"generator\" content=\"{esc(generator)}\">\n"
        f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n"
        f"<footer>Generated {esc(now)} by {esc(generator)}. Self-contained page: all pictures are "
        "embedded; it can be read offline and archived as one file.</footer>\n</body>\n</html>\n"
    )
