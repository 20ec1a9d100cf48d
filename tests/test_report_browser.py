"""The subject QC page as a browser shows it (headless Chromium).

Chromium is installed with ``scripts/install_chromium.sh`` when it is missing; the tests are
skipped, with the reason, only when that is impossible (no apt-get or no root).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from deepmir_tasks.report import render_subject_report
from helpers.report import make_simulated, parse_page

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # simulating the subject takes a few seconds

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# Appended to a copy of the page (the report itself has no script): after every picture has
# loaded, write into <body> how many <img> failed to decode and how many lesion tiles are shown.
PROBE = """<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var bad = imgs.filter(function (im) { return !(im.complete && im.naturalWidth > 0 && im.naturalHeight > 0); });
  var tiles = Array.prototype.slice.call(document.querySelectorAll(".lesion-tile"));
  var shown = tiles.filter(function (t) { var r = t.getBoundingClientRect(); return r.width > 0 && r.height > 0; });
  var tileImgs = document.querySelectorAll(".lesion-tile img");
  var tileOk = Array.prototype.slice.call(tileImgs).filter(function (im) { return im.naturalWidth > 0; });
  document.body.setAttribute("data-probe", [imgs.length, bad.length, tiles.length, shown.length,
                                            tileImgs.length, tileOk.length].join(","));
});
</script>"""


def _chromium(exe, tmp: Path, *args, timeout=120) -> subprocess.CompletedProcess:
    cmd = [exe, *FLAGS, f"--user-data-dir={tmp / 'chromium-profile'}", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


@pytest.fixture(scope="module")
def simulated_page(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    subj = make_simulated(tmp / "subject", seed=3)
    out = render_subject_report(
        tmp / "sub-01.html", participant_id="sub-01", t2=subj["t2"], swi=subj["swi"], qsm=subj["qsm"],
        mask=subj["mask"], dseg=subj["dseg"], lesions_tsv=subj["lesions_tsv"], dropped_tsv=subj["dropped_tsv"],
        provenance={"model": "truth (simulated)"})
    return {"tmp": tmp, "html": out, "lesions": pd.read_csv(subj["lesions_tsv"], sep="\t")}


def test_screenshot_is_not_blank(chromium, simulated_page):
    tmp = simulated_page["tmp"]
    shot = tmp / "shot.png"
    _chromium(chromium, tmp, f"--screenshot={shot}", "--window-size=1280,4000",
              simulated_page["html"].as_uri())
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert img.shape == (4000, 1280)
    assert img.var() > 500.0  # text, tables and brain pictures, not an empty white page
    assert np.mean(img < 128) > 0.03  # a good share of dark (image and text) pixels
    # the pictures are drawn: rows of the upper page hold dark brain-slice backgrounds
    assert np.mean(img[:2500] < 10) > 0.01


def test_dom_shows_one_decoded_tile_per_lesion(chromium, simulated_page):
    tmp = simulated_page["tmp"]
    n_rows = len(simulated_page["lesions"])
    assert n_rows >= 3  # the simulated subject has lesions of both classes to show
    assert set(simulated_page["lesions"]["label"]) == {"cmb", "iron"}
    text = simulated_page["html"].read_text()
    probed = tmp / "probed.html"
    probed.write_text(text.replace("</body>", PROBE + "\n</body>"))
    dom = _chromium(chromium, tmp, "--virtual-time-budget=10000", "--dump-dom", probed.as_uri()).stdout

    # tiles in the rendered DOM
    tiles = [e for e in parse_page(dom) if "lesion-tile" in e.classes]
    assert len(tiles) == n_rows
    assert sorted(int(t.attrs["data-lesion-id"]) for t in tiles) == sorted(simulated_page["lesions"]["lesion_id"])
    # every picture decoded in the browser; every tile is laid out and its picture has a width
    probe = re.search(r'data-probe="([\d,]+)"', dom)
    assert probe, "the probe script did not run"
    n_img, n_bad, n_tiles, n_shown, n_tile_img, n_tile_ok = map(int, probe.group(1).split(","))
    assert n_img == text.count("<img ") and n_bad == 0
    assert n_tiles == n_shown == n_rows
    assert n_tile_img == n_tile_ok == n_rows
