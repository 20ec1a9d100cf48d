"""The review page driven in real headless Chromium: keys, clicks, a reload, then the export.

Chromium is driven over the DevTools protocol through ``--remote-debugging-pipe`` (JSON messages
on file descriptors 3 and 4, NUL-terminated), so no driver or client library is needed. Keys and
clicks are real input events (``Input.dispatchKeyEvent`` / ``Input.dispatchMouseEvent``).
Chromium is found or installed as in ``test_report_browser.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from deepmir_tasks.review import find_review_subjects, read_decisions
from deepmir_tasks.review.decisions import rater_decisions

pytestmark = [pytest.mark.browser, pytest.mark.slow]

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1500,1100"]


class Browser:
    """A minimal DevTools-protocol client over Chromium's debugging pipe, one page."""

    def __init__(self, exe, profile: Path):
        to_chrome_r, self._w = os.pipe()
        self._r, from_chrome_w = os.pipe()
        # Chromium reads commands on fd 3 and writes answers on fd 4
        cmd = (f'exec 3<&{to_chrome_r} 4>&{from_chrome_w}; exec "$0" "$@"')
        self.proc = subprocess.Popen(["bash", "-c", cmd, exe, *FLAGS, "--remote-debugging-pipe",
                                      f"--user-data-dir={profile}", "about:blank"],
                                     pass_fds=(to_chrome_r, from_chrome_w), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf, self._id, self.session = b"", 0, None
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Page.enable")

    def call(self, method, timeout=30, **params):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            while b"\0" not in self._buf:
                chunk = os.read(self._r, 1 << 16)
                if not chunk:
                    raise RuntimeError("chromium closed the debugging pipe")
                self._buf += chunk
            raw, self._buf = self._buf.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") == self._id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})
        raise TimeoutError(method)

    def js(self, expression):
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            raise RuntimeError(res["exceptionDetails"])
        return res["result"].get("value")

    def wait(self, expression, timeout=30):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.js(expression):
                return
            time.sleep(0.05)
        raise TimeoutError(expression)

    def open(self, url, ready="document.body.dataset.ready === '1'"):
        self.js("window.__left = true")  # gone once the new document is there
        self.call("Page.navigate", url=url)
        self.wait(f"!window.__left && document.readyState === 'complete' && {ready}")

    def key(self, key):
        codes = {"ArrowDown": 40, "ArrowUp": 38, "Enter": 13}
        down = {"type": "keyDown", "key": key, "windowsVirtualKeyCode": codes[key] if key in codes else ord(key.upper())}
        if len(key) == 1:
            down["text"] = key
        self.call("Input.dispatchKeyEvent", **down)
        self.call("Input.dispatchKeyEvent", type="keyUp", key=key, windowsVirtualKeyCode=down["windowsVirtualKeyCode"])

    def click(self, x, y):
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def close(self):
        self.session = None  # a browser-wide command
        try:
            self.call("Browser.close", timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._w)
        os.close(self._r)


@pytest.fixture
def session(chromium, tmp_path):
    from deepmir_tasks.review.server import make_server
    from test_review import make_output_dir

    out = make_output_dir(tmp_path)
    server = make_server(find_review_subjects(out), "alice", port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    browser = Browser(chromium, tmp_path / "profile")
    yield browser, f"http://127.0.0.1:{server.server_port}", out
    browser.close()
    server.shutdown()
    server.server_close()


STATE = ("Array.from(document.querySelectorAll('.card')).map(e => [e.dataset.id, e.dataset.decision || null, "
         "e.querySelector('input.note').value])")
CURRENT = "document.querySelector('.card.cur').dataset.id"
SETTLED = "document.body.dataset.pending === '0'"


def test_review_with_keys_and_clicks_survives_a_reload_and_exports(session, tmp_path):
    from test_review import LESIONS, RAW_AFFINE, world

    from deepmir_tasks.review.export import export_review

    browser, base, out = session
    browser.open(base + "/", ready="true")
    assert "sub-01" in browser.js("document.body.innerText")
    browser.open(base + "/s/sub-01")
    assert browser.js("document.querySelectorAll('.card').length") == 5
    assert browser.js("Array.from(document.images).every(i => i.complete)") is not None
    assert browser.js(CURRENT) == "k1"  # the first undecided
    browser.key("2")   # k1, the model's CMB, relabelled iron; the page moves on to k2
    browser.key("i")   # k2 accepted as iron
    browser.wait(SETTLED)
    assert browser.js(CURRENT) == "k3"

    browser.open(base + "/s/sub-01")  # reload mid-way: resumes at the first undecided
    assert browser.js(CURRENT) == "k3"
    browser.key("x")   # k3 rejected
    browser.key("c")   # d1 (dropped) accepted as CMB
    assert browser.js(CURRENT) == "d2"
    browser.key("k")   # back to d1
    assert browser.js(CURRENT) == "d1"
    browser.key("ArrowDown")
    assert browser.js(CURRENT) == "d2"
    browser.key("3")   # d2 is a calcification
    browser.key("n")   # a note on d2
    browser.call("Input.insertText", text="negative on QSM")
    browser.key("Enter")
    browser.wait(SETTLED)

    # add the missed lesion: move the viewer to its slice with the keys, click on it
    i, j, k = LESIONS["missed"]["ijk"]
    z = browser.js("+document.getElementById('slider').value")
    for _ in range(abs(k - z)):
        browser.key("." if k > z else ",")
    assert browser.js("+document.getElementById('slider').value") == k
    browser.wait("document.getElementById('slice').complete")
    box = browser.js("(() => { const e = document.getElementById('slice'); e.scrollIntoView(); "
                     "const r = e.getBoundingClientRect(); return [r.left, r.top]; })()")
    zoom = browser.js("JSON.parse(document.getElementById('data').textContent).zoom")
    ny = 40
    browser.click(box[0] + (i + 0.5) * zoom, box[1] + (ny - 1 - j + 0.5) * zoom)
    browser.wait("document.querySelectorAll('.card').length === 6")
    browser.wait(SETTLED)
    assert browser.js(CURRENT) == "a1"
    assert "NOT saved" not in browser.js("document.getElementById('status').textContent")

    expected = [["k1", "iron", ""], ["k2", "iron", ""], ["k3", "not_lesion", ""], ["d1", "cmb", ""],
                ["d2", "calcification", "negative on QSM"], ["a1", "cmb", ""]]
    assert browser.js(STATE) == expected
    browser.open(base + "/s/sub-01")  # reload: every decision is back
    assert browser.js(STATE) == expected
    assert browser.js("document.getElementById('progress').textContent") == "6 of 6 decided"

    (subject,) = find_review_subjects(out)
    saved = rater_decisions(read_decisions(subject), "alice")
    assert {c: r["decision"] for c, r in saved.items()} == {c: d for c, d, _ in expected}
    assert (saved["a1"]["i"], saved["a1"]["j"], saved["a1"]["k"]) == (i, j, k)  # the clicked voxel

    # export: the labels training will read
    import nibabel as nib

    res = export_review(out, tmp_path / "annot", "alice", [subject])
    data = np.asarray(nib.load(res["subjects"][0]["dseg"]).dataobj)

    def at(cid):
        v = np.rint(np.linalg.solve(RAW_AFFINE[:3, :3], world(LESIONS[cid]["ijk"]) - RAW_AFFINE[:3, 3])).astype(int)
        return int(data[tuple(v)])

    assert [at(c) for c in ("k1", "k2", "k3", "d1", "d2", "missed")] == [2, 2, 0, 1, 0, 1]
    methods = {r["candidate_id"]: r["method"] for r in res["subjects"][0]["report"]}
    assert methods["a1"] == "grown on SWI"


def test_a_failed_save_is_shown_and_not_kept(session):
    browser, base, out = session
    browser.open(base + "/s/sub-01")
    (subject,) = find_review_subjects(out)
    subject.review_tsv.mkdir()  # the file system refuses to put the table there
    browser.key("1")
    browser.wait(SETTLED)
    assert "NOT saved (k1)" in browser.js("document.getElementById('status').textContent")
    assert browser.js(STATE)[0] == ["k1", None, ""]  # the page does not pretend it was saved
    assert browser.js(CURRENT) == "k2"


#: the 20 candidates of the one-key-per-candidate test: 12 kept lesions, then 8 dropped candidates
#: (working-grid voxels on a 5 x 2 x 2 lattice inside the head), and the decision meant for each
TWENTY = [(f"k{n}" if n <= 12 else f"d{n - 12}", (10 + 5 * (m % 5), 14 + 12 * (m // 5 % 2), 10 + 10 * (m // 10)))
          for m, n in enumerate(range(1, 21))]
TWENTY_DECISIONS = ["cmb", "iron", "cmb", "not_lesion", "cmb", "vein", "iron", "cmb", "calcification", "cmb",
                    "iron", "not_lesion", "cmb", "vein", "not_lesion", "cmb", "calcification", "iron", "not_lesion", "cmb"]
#: both keys of each class are used (``1``/``c``, ``2``/``i``, ``3``/``a``, ``4``/``v``, ``5``/``x``)
CLASS_KEYS = {"cmb": "1c", "iron": "2i", "calcification": "3a", "vein": "4v", "not_lesion": "5x"}


def make_twenty(root: Path) -> Path:
    """The hand-made output folder of ``test_review`` with its lesion tables replaced by 20 candidates."""
    import pandas as pd
    from test_review import make_output_dir, world

    from deepmir_tasks.bids_names import derivative_name
    from deepmir_tasks.io import write_tsv

    out = make_output_dir(root)
    rows = {"kept": [], "dropped": []}
    for n, (cid, ijk) in enumerate(TWENTY):
        table = "kept" if cid[0] == "k" else "dropped"
        x, y, z = world(ijk)
        rows[table].append({"participant_id": "sub-01", "lesion_id": int(cid[1:]), "label": ("cmb", "iron")[n % 2],
                            "n_voxels": 14, "volume_mm3": 14.0, "x_mm": x, "y_mm": y, "z_mm": z, "i": ijk[0],
                            "j": ijk[1], "k": ijk[2], "prob_max": 0.9, "qsm_mean_ppm": 0.3, "region": "deep",
                            **({"reason": "min_prob"} if table == "dropped" else {})})
    anat = out / "sub-01" / "anat"
    write_tsv(pd.DataFrame(rows["kept"]), anat / derivative_name("lesions", "sub-01"))
    write_tsv(pd.DataFrame(rows["dropped"]), anat / derivative_name("dropped", "sub-01"))
    return out


def test_twenty_candidates_take_twenty_key_presses(chromium, tmp_path):
    """Issue 17: reviewing a subject with 20 candidates takes one key press per candidate. Each
    decision moves the page to the next undecided candidate, so the rater presses nothing else."""
    from deepmir_tasks.review.server import make_server

    out = make_twenty(tmp_path)
    (subject,) = find_review_subjects(out)
    server = make_server([subject], "alice", port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    browser = Browser(chromium, tmp_path / "profile")
    try:
        browser.open(f"http://127.0.0.1:{server.server_port}/s/sub-01")
        ids = [cid for cid, _ in TWENTY]
        assert browser.js("Array.from(document.querySelectorAll('.card')).map(e => e.dataset.id)") == ids
        # count, on the page, every key event that reaches it (capture phase: before the page's own handler)
        browser.js("window.__keys = 0; document.addEventListener('keydown', () => { window.__keys++; }, true)")
        presses = 0
        for n, (cid, decision) in enumerate(zip(ids, TWENTY_DECISIONS)):
            assert browser.js(CURRENT) == cid  # the page is already on the next undecided one
            browser.key(CLASS_KEYS[decision][n % 2])
            presses += 1
        browser.wait(SETTLED)
        assert presses == 20 == len(ids)
        assert browser.js("window.__keys") == presses  # no other key event reached the page
        assert "NOT saved" not in browser.js("document.getElementById('status').textContent")
        assert browser.js("document.getElementById('progress').textContent") == "20 of 20 decided"
        assert [row[:2] for row in browser.js(STATE)] == [list(p) for p in zip(ids, TWENTY_DECISIONS)]
    finally:
        browser.close()
        server.shutdown()
        server.server_close()

    table = read_decisions(subject)  # what was saved on disk: one row per key press, the intended classes
    assert len(table) == 20
    assert list(table["candidate_id"]) == ids and list(table["rater"]) == ["alice"] * 20
    assert list(table["decision"]) == TWENTY_DECISIONS
    assert {c: r["decision"] for c, r in rater_decisions(table, "alice").items()} == dict(zip(ids, TWENTY_DECISIONS))
