"""The review pages: an index of subjects and one page per subject, self-contained (inline CSS and
script, no outside resources), and the pictures they show (candidate crops, axial slices).

Pictures reuse the QC report's helpers (:mod:`deepmir_tasks.report._images`): images reoriented
to RAS, axial slices with anterior at the top and the subject's left on the left.
"""

from __future__ import annotations

import base64
import json

import numpy as np

from deepmir_tasks.report import _html as H
from deepmir_tasks.report._images import (Grid, lesion_tile_picture, paint_labels, png_data_uri, to_gray,
                                          to_rgb, view)
from deepmir_tasks.review.decisions import DECISIONS

__all__ = ["KEYS", "from_ras_index", "slice_zoom", "crop_png", "slice_png", "candidate_payload",
           "subject_page", "index_page"]

#: decision -> its keys on the page (digit, letter)
KEYS = {"cmb": ("1", "c"), "iron": ("2", "i"), "calcification": ("3", "a"), "vein": ("4", "v"),
        "not_lesion": ("5", "x")}
#: table columns shown under each candidate, with captions
FIELDS = (("model_label", "model"), ("reason", "dropped because"), ("volume_mm3", "vol. mm³"),
          ("prob_max", "p max"), ("qsm_mean_ppm", "QSM mean ppm"), ("qsm_max_ppm", "QSM max ppm"),
          ("swi_contrast", "SWI contrast"), ("region", "region"), ("i", "i"), ("j", "j"), ("k", "k"))


def from_ras_index(grid: Grid, ras) -> tuple[int, int, int]:
    """The voxel index of the files as given for an index of the RAS-ordered arrays (the inverse
    of :meth:`Grid.to_ras_index`)."""
    out = [0, 0, 0]
    for axis, (new_axis, flip) in enumerate(grid.ornt):
        value = int(ras[int(new_axis)])
        out[axis] = grid.shape_in[axis] - 1 - value if flip < 0 else value
    return tuple(out)


def slice_zoom(grid: Grid) -> int:
    """Pixels per voxel of the slice viewer: the larger in-plane side drawn at about 480 px."""
    return int(np.clip(round(480 / max(grid.t2.shape[:2])), 1, 8))


def _png(pixels: np.ndarray) -> bytes:
    return base64.b64decode(png_data_uri(pixels).split(",", 1)[1])


def crop_png(grid: Grid, ijk, *, contour: bool) -> bytes:
    """T2w | SWI | QSM | SWI-with-outline crops through a voxel of the files as given."""
    return _png(lesion_tile_picture(grid, grid.to_ras_index(ijk), contour=contour))


def slice_png(grid: Grid, modality: str, k_ras: int) -> bytes:
    """Axial slice ``k_ras`` of ``modality`` with the detections outlined, ``slice_zoom`` px per voxel."""
    k_ras = int(np.clip(k_ras, 0, grid.t2.shape[2] - 1))
    rgb = to_rgb(to_gray(view(getattr(grid, modality), "axial", k_ras), grid.windows[modality]))
    paint_labels(rgb, view(grid.dseg, "axial", k_ras), outside=True)
    f = slice_zoom(grid)
    return _png(np.repeat(np.repeat(rgb, f, axis=0), f, axis=1))


def _value(v):
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return None
    if isinstance(v, (np.integer, np.floating)):
        v = v.item()
    return round(v, 3) if isinstance(v, float) else v


def candidate_payload(grid: Grid, cand: dict, decision: dict | None) -> dict:
    """What the page needs of one candidate (a table row, or a rater's added lesion)."""
    ijk = [int(cand[a]) for a in ("i", "j", "k")]
    decision = decision or {}
    return {"id": cand["candidate_id"], "source": cand["source"], "ijk": ijk,
            "ras": list(grid.to_ras_index(ijk)), "model_label": _value(cand.get("model_label")),
            "fields": [[cap, _value(cand.get(col))] for col, cap in FIELDS if _value(cand.get(col)) is not None],
            "decision": decision.get("decision"), "note": decision.get("note") or "",
            "time": decision.get("time")}


def index_page(rater: str, rows: list[tuple[str, int, int]]) -> str:
    """The list of subjects with this rater's progress: rows of (key, decided, candidates)."""
    body = [f"<h1>DEEPMIR review</h1><p>Rater <b>{H.esc(rater)}</b>. Every decision is saved at once; "
            "come back any time.</p>",
            H.data_table(["subject", "decided", "candidates"],
                         [[f'<a href="/s/{H.esc(k)}">{H.esc(k)}</a>', str(d), str(n)] for k, d, n in rows])]
    return H.page("DEEPMIR review", "\n".join(body), "deepmir review")


def subject_page(key: str, rater: str, grid: Grid, candidates: list[dict], warnings=(), neighbours=(None, None)) -> str:
    """The review page of one subject: candidates with their crops, decisions, notes, and a slice
    viewer to add missed lesions. ``neighbours`` are the previous and next subjects' keys."""
    data = {"key": key, "rater": rater, "candidates": candidates, "decisions": DECISIONS, "keys": KEYS,
            "zoom": slice_zoom(grid), "shape": list(grid.t2.shape), "has_qsm": bool(np.any(grid.qsm)),
            "prev": neighbours[0], "next": neighbours[1]}
    payload = json.dumps(data).replace("</", "<\\/")
    keys = " · ".join(f"<kbd>{a}</kbd>/<kbd>{b}</kbd> {H.esc(DECISIONS[d])}" for d, (a, b) in KEYS.items())
    warn = "".join(f'<div class="warn">{H.esc(w)}</div>' for w in warnings)
    nav = " ".join(f'<a href="/s/{H.esc(k)}">{label}</a>' for k, label in
                   ((neighbours[0], "← previous subject"), (neighbours[1], "next subject →")) if k)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>DEEPMIR review: {H.esc(key)}</title>
<style>{H.CSS}{CSS}</style></head>
<body data-ready="0">
<header><a href="/">all subjects</a> {nav}
<h1>{H.esc(key)} <span class="muted">rater {H.esc(rater)}</span></h1>
<span id="progress"></span> <span id="status" class="muted"></span></header>
{warn}
<p class="keys">{keys} · <kbd>j</kbd>/<kbd>↓</kbd> next · <kbd>k</kbd>/<kbd>↑</kbd> previous ·
<kbd>n</kbd> note (<kbd>Enter</kbd> saves) · <kbd>,</kbd>/<kbd>.</kbd> slice down/up ·
<kbd>t</kbd>/<kbd>s</kbd>/<kbd>q</kbd> T2w/SWI/QSM · click the slice to add a missed lesion</p>
<main><section id="list"></section>
<aside id="viewer" style="width: {max(360, slice_zoom(grid) * grid.t2.shape[0] + 4)}px"><div class="modes"><button data-m="t2">T2w</button><button data-m="swi">SWI</button>
<button data-m="qsm">QSM</button> <span id="slicelabel"></span></div>
<input id="slider" type="range" min="0" value="0">
<div id="stage"><img id="slice" alt="axial slice" draggable="false"><div id="marks"></div></div>
<p class="muted">Outlines: red CMB, yellow iron (the model's kept lesions). Dots: candidates on this slice
(open: one slice away). Scroll the wheel over the slice to move through slices.</p></aside></main>
<script id="data" type="application/json">{payload}</script>
<script>{SCRIPT}</script></body></html>"""


CSS = """
body { max-width: 1500px; }
header h1 { display: inline-block; margin-right: 12px; }
kbd { border: 1px solid #bbb; border-radius: 3px; padding: 0 4px; background: #f5f5f5; font-size: 12px; }
main { display: flex; gap: 18px; align-items: flex-start; }
#list { flex: 1 1 auto; min-width: 420px; }
#viewer { position: sticky; top: 8px; flex: 0 0 auto; }
#slider { width: 100%; }
#stage { position: relative; display: inline-block; cursor: crosshair; line-height: 0; }
#stage img { image-rendering: pixelated; }
.mark { position: absolute; width: 10px; height: 10px; margin: -6px 0 0 -6px; border-radius: 50%;
        border: 2px solid #3f3; pointer-events: none; }
.mark.near { opacity: 0.45; } .mark.cur { border-color: #39f; width: 16px; height: 16px; margin: -9px 0 0 -9px; }
.card { border: 2px solid var(--line); border-radius: 6px; padding: 6px 8px; margin: 0 0 8px; }
.card.cur { border-color: #39f; box-shadow: 0 0 0 2px #9cf; }
.card[data-decision] { background: #f3f8f3; }
.card[data-decision="not_lesion"], .card[data-decision="calcification"], .card[data-decision="vein"] { background: #f7f3f3; }
.card .head { display: flex; gap: 10px; align-items: baseline; }
.card .dec { margin-left: auto; font-weight: 600; }
.card img { display: block; margin: 4px 0; background: #000; }
.card table { font-size: 12px; margin: 2px 0; }
.buttons button { margin: 2px 3px 2px 0; }
.buttons button.on { background: #39f; color: #fff; border-color: #17c; }
.modes button.on { background: #333; color: #fff; }
input.note { width: 100%; margin-top: 3px; }
#status.err { color: var(--fail); font-weight: 600; }
"""

SCRIPT = r"""
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const C = D.candidates;
let cur = 0, mod = "swi", z = 0;
const $ = (s, e) => (e || document).querySelector(s);
const list = $("#list"), img = $("#slice"), slider = $("#slider"), marks = $("#marks");
const KEYMAP = {};
for (const [d, ks] of Object.entries(D.keys)) for (const k of ks) KEYMAP[k] = d;

function esc(s) { return String(s).replace(/[&<>"]/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"})[c]); }
function status(text, err) { const s = $("#status"); s.textContent = text; s.className = err ? "err" : "muted"; }
function progress() {
  const n = C.filter(c => c.decision).length;
  $("#progress").textContent = n + " of " + C.length + " decided";
}
function card(c) {
  const el = document.createElement("div");
  el.className = "card"; el.id = "c-" + c.id; el.dataset.id = c.id;
  const fields = c.fields.map(([k, v]) => "<th>" + esc(k) + "</th>").join("");
  const values = c.fields.map(([k, v]) => "<td>" + esc(v) + "</td>").join("");
  const buttons = Object.entries(D.decisions).map(([d, label]) =>
    '<button type="button" data-d="' + d + '">' + D.keys[d][0] + " " + esc(label) + "</button>").join("");
  el.innerHTML = '<div class="head"><b>' + esc(c.id) + "</b><span>" + esc(c.source) +
    (c.model_label ? " · model: " + esc(c.model_label) : "") + '</span><span class="dec"></span></div>' +
    '<img loading="lazy" alt="T2w, SWI, QSM crops" src="/s/' + D.key + "/crop.png?ijk=" + c.ijk.join(",") +
    "&contour=" + (c.source === "kept" ? 1 : 0) + '">' +
    (c.fields.length ? "<table><tr>" + fields + "</tr><tr>" + values + "</tr></table>" : "") +
    '<div class="buttons">' + buttons + '</div><input class="note" placeholder="note (n)">';
  el.querySelector("input.note").value = c.note || "";
  el.addEventListener("click", ev => {
    select(C.indexOf(c), false);
    const d = ev.target.dataset && ev.target.dataset.d;
    if (d) decide(d);
  });
  el.querySelector("input.note").addEventListener("change", ev => save(c, {note: ev.target.value}));
  return el;
}
function paint(c) {
  const el = document.getElementById("c-" + c.id);
  const note = $("input.note", el);
  if (document.activeElement !== note) note.value = c.note || "";
  if (c.decision) el.dataset.decision = c.decision; else delete el.dataset.decision;
  $(".dec", el).textContent = c.decision ? D.decisions[c.decision] : "undecided";
  for (const b of el.querySelectorAll(".buttons button")) b.classList.toggle("on", b.dataset.d === c.decision);
}
function select(i, scroll) {
  if (!C.length) return;
  cur = Math.max(0, Math.min(C.length - 1, i));
  for (const el of list.querySelectorAll(".card.cur")) el.classList.remove("cur");
  const el = document.getElementById("c-" + C[cur].id);
  el.classList.add("cur");
  if (scroll !== false) el.scrollIntoView({block: "nearest"});
  setSlice(C[cur].ras[2]);
}
async function post(url, body) {
  const r = await fetch(url, {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
  const out = await r.json().catch(() => ({error: "server answered " + r.status}));
  if (!r.ok || out.error) throw new Error(out.error || ("server answered " + r.status));
  return out;
}
// saves go to the server one after the other, in the order made; the page moves on at once
let queue = Promise.resolve(), pending = 0;
function busy(n) { pending += n; document.body.dataset.pending = pending; }
function save(c, change) {
  const before = {decision: c.decision, note: c.note};
  Object.assign(c, change);
  paint(c); progress(); busy(1); status("saving…");
  queue = queue.then(async () => {
    try {
      const out = await post("/api/" + D.key + "/decision", Object.assign({candidate_id: c.id}, change));
      c.decision = out.row.decision; c.note = out.row.note || ""; c.time = out.row.time;
      paint(c); progress(); status("saved " + c.id + " at " + c.time);
    } catch (e) {
      Object.assign(c, before); paint(c); progress();
      status("NOT saved (" + c.id + "): " + e.message, true);
    }
    busy(-1);
  });
}
function decide(d) {
  const c = C[cur];
  if (!c) return;
  save(c, {decision: d});
  const order = C.map((_, k) => (cur + 1 + k) % C.length);
  const next = order.find(k => !C[k].decision);
  select(next === undefined ? Math.min(cur + 1, C.length - 1) : next);
}
function addAt(ras) {
  busy(1); status("saving…");
  queue = queue.then(async () => {
    try {
      const out = await post("/api/" + D.key + "/add", {ras: ras, decision: "cmb"});
      C.push(out.candidate); list.appendChild(card(out.candidate)); paint(out.candidate);
      progress(); select(C.length - 1); status("added " + out.candidate.id + " (CMB; press a class key to change)");
    } catch (e) { status("NOT saved: " + e.message, true); }
    busy(-1);
  });
}
function setMode(m) {
  if (m === "qsm" && !D.has_qsm) return;
  mod = m;
  for (const b of document.querySelectorAll(".modes button")) b.classList.toggle("on", b.dataset.m === m);
  setSlice(z);
}
function setSlice(k) {
  z = Math.max(0, Math.min(D.shape[2] - 1, k));
  slider.value = z;
  img.src = "/s/" + D.key + "/slice/" + mod + "/" + z + ".png";
  $("#slicelabel").textContent = "axial slice " + z + " of " + (D.shape[2] - 1);
  marks.innerHTML = "";
  C.forEach((c, n) => {
    const dz = Math.abs(c.ras[2] - z);
    if (dz > 1) return;
    const m = document.createElement("div");
    m.className = "mark" + (dz ? " near" : "") + (n === cur ? " cur" : "");
    m.style.left = ((c.ras[0] + 0.5) * D.zoom) + "px";
    m.style.top = ((D.shape[1] - 1 - c.ras[1] + 0.5) * D.zoom) + "px";
    m.title = c.id;
    marks.appendChild(m);
  });
}
img.addEventListener("click", ev => {
  const r = img.getBoundingClientRect();
  const i = Math.floor((ev.clientX - r.left) / D.zoom), row = Math.floor((ev.clientY - r.top) / D.zoom);
  addAt([i, D.shape[1] - 1 - row, z]);
});
$("#stage").addEventListener("wheel", ev => { ev.preventDefault(); setSlice(z + (ev.deltaY > 0 ? -1 : 1)); });
slider.addEventListener("input", () => setSlice(+slider.value));
for (const b of document.querySelectorAll(".modes button")) b.addEventListener("click", () => setMode(b.dataset.m));
document.addEventListener("keydown", ev => {
  const t = ev.target;
  if (t.tagName === "INPUT" && t.type !== "range" || t.tagName === "TEXTAREA") {
    if (ev.key === "Enter" || ev.key === "Escape") t.blur();
    return;
  }
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const k = ev.key;
  let done = true;
  if (KEYMAP[k]) decide(KEYMAP[k]);
  else if (k === "j" || k === "ArrowDown") select(cur + 1);
  else if (k === "k" || k === "ArrowUp") select(cur - 1);
  else if (k === "n") { const el = document.getElementById("c-" + C[cur].id); if (el) $("input.note", el).focus(); }
  else if (k === "," || k === "PageDown") setSlice(z - 1);
  else if (k === "." || k === "PageUp") setSlice(z + 1);
  else if (k === "t") setMode("t2"); else if (k === "s") setMode("swi"); else if (k === "q") setMode("qsm");
  else done = false;
  if (done) ev.preventDefault();
});
slider.max = D.shape[2] - 1;
for (const c of C) { list.appendChild(card(c)); paint(c); }
if (!C.length) list.innerHTML = "<p>No candidates: look through the slices and click any lesion the model missed.</p>";
progress();
setMode("swi");
const first = C.findIndex(c => !c.decision);
if (C.length) select(first < 0 ? 0 : first); else setSlice(Math.floor(D.shape[2] / 2));
document.body.dataset.pending = 0;
document.body.dataset.ready = "1";
"""
