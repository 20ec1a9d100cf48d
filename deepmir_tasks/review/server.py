"""The local HTTP server behind ``deepmir review`` (stdlib ``http.server``, bound to 127.0.0.1).

Routes: ``/`` (subjects), ``/s/<key>`` (a subject's page), ``/s/<key>/crop.png?ijk=i,j,k&contour=0|1``,
``/s/<key>/slice/<t2|swi|qsm>/<k>.png`` (RAS axial slice), and two JSON posts,
``/api/<key>/decision`` ``{candidate_id, decision?, note?}`` and ``/api/<key>/add``
``{ras: [i, j, k], decision}``. Decisions are read from and written to disk on every request (no
state in memory but the images), so a reload or a second session shows every saved decision.
Posts must be JSON from the page's own origin (a web page elsewhere cannot write decisions).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from deepmir_tasks.io import InputError
from deepmir_tasks.review import pages
from deepmir_tasks.review.decisions import (ReviewSubject, read_candidates, read_decisions, rater_decisions,
                                            save_decision, source_changes)

__all__ = ["ReviewApp", "make_server", "serve"]

log = logging.getLogger("deepmir.review")


class ReviewApp:
    """The subjects under review, one rater, and the working-grid images loaded so far."""

    def __init__(self, subjects: list[ReviewSubject], rater: str):
        self.subjects = {s.key: s for s in subjects}
        self.rater = rater
        self._grids: dict = {}
        self._lock = threading.Lock()

    def grid(self, key: str):
        from deepmir_tasks.report._images import load_grid

        with self._lock:
            if key not in self._grids:
                f = self.subjects[key].files
                self._grids[key] = load_grid(f["t2"], f["swi"], f["qsm"], f["mask"], f["dseg"])
            return self._grids[key]

    def candidates(self, key: str) -> list[dict]:
        subject, grid = self.subjects[key], self.grid(key)
        mine = rater_decisions(read_decisions(subject), self.rater)
        rows = read_candidates(subject).to_dict("records") + [r for r in mine.values() if r.get("source") == "added"]
        return [pages.candidate_payload(grid, c, mine.get(c["candidate_id"])) for c in rows]

    def index(self) -> str:
        rows = []
        for key, subject in self.subjects.items():
            mine = rater_decisions(read_decisions(subject), self.rater)
            cands = read_candidates(subject)
            rows.append((key, sum(bool((mine.get(c) or {}).get("decision")) for c in cands["candidate_id"]), len(cands)))
        return pages.index_page(self.rater, rows)

    def page(self, key: str) -> str:
        keys = list(self.subjects)
        n = keys.index(key)
        warnings = [f"{name} changed since the first decisions on this subject (deepmir run again?): "
                    "candidate numbers may now point at other lesions" for name in source_changes(self.subjects[key])]
        return pages.subject_page(key, self.rater, self.grid(key), self.candidates(key), warnings,
                                  (keys[n - 1] if n else None, keys[n + 1] if n + 1 < len(keys) else None))

    def decide(self, key: str, body: dict) -> dict:
        row = save_decision(self.subjects[key], self.rater, str(body.get("candidate_id", "")),
                            body.get("decision"), body.get("note"))
        return {"row": row}

    def add(self, key: str, body: dict) -> dict:
        ras = body.get("ras")
        if not (isinstance(ras, list) and len(ras) == 3 and all(isinstance(v, int) for v in ras)):
            raise InputError(key, "an added lesion needs its voxel as three integers")
        grid = self.grid(key)
        row = save_decision(self.subjects[key], self.rater, None, body.get("decision") or "cmb",
                            ijk=pages.from_ras_index(grid, ras))
        return {"candidate": pages.candidate_payload(grid, row, row)}


_PAGE = re.compile(r"^/s/(sub-[A-Za-z0-9]+(?:_ses-[A-Za-z0-9]+)?)(/crop\.png|/slice/(t2|swi|qsm)/(\d+)\.png)?$")
_API = re.compile(r"^/api/(sub-[A-Za-z0-9]+(?:_ses-[A-Za-z0-9]+)?)/(decision|add)$")


def _handler(app: ReviewApp):
    class Handler(BaseHTTPRequestHandler):
        server_version = "deepmir-review"

        def log_message(self, fmt, *args):  # to the log, not stderr
            log.debug("%s " + fmt, self.address_string(), *args)

        def _send(self, status, body, ctype):
            data = body.encode("utf-8") if isinstance(body, str) else body
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def _json(self, status, obj):
            self._send(status, json.dumps(obj, default=str), "application/json")

        def do_GET(self):  # noqa: N802 - http.server's name
            url = urlsplit(self.path)
            try:
                if url.path == "/":
                    return self._send(HTTPStatus.OK, app.index(), "text/html; charset=utf-8")
                m = _PAGE.match(url.path)
                if not m or m.group(1) not in app.subjects:
                    return self._send(HTTPStatus.NOT_FOUND, "not found", "text/plain")
                key, what = m.group(1), m.group(2)
                if not what:
                    return self._send(HTTPStatus.OK, app.page(key), "text/html; charset=utf-8")
                grid = app.grid(key)
                if what == "/crop.png":
                    q = parse_qs(url.query)
                    ijk = [int(v) for v in q.get("ijk", [""])[0].split(",")]
                    png = pages.crop_png(grid, ijk, contour=q.get("contour", ["0"])[0] == "1")
                else:
                    png = pages.slice_png(grid, m.group(3), int(m.group(4)))
                return self._send(HTTPStatus.OK, png, "image/png")
            except (InputError, ValueError, IndexError) as err:
                return self._send(HTTPStatus.BAD_REQUEST, str(err), "text/plain; charset=utf-8")

        def do_POST(self):  # noqa: N802
            m = _API.match(urlsplit(self.path).path)
            if not m or m.group(1) not in app.subjects:
                return self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})
            origin = self.headers.get("Origin")
            host = self.headers.get("Host", "")
            if origin and origin not in (f"http://{host}",):
                return self._json(HTTPStatus.FORBIDDEN, {"error": f"posts from {origin} are refused"})
            if not self.headers.get("Content-Type", "").startswith("application/json"):
                return self._json(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, {"error": "send JSON"})
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if not isinstance(body, dict):
                    raise ValueError("the body must be a JSON object")
                out = (app.decide if m.group(2) == "decision" else app.add)(m.group(1), body)
            except (InputError, ValueError) as err:
                return self._json(HTTPStatus.BAD_REQUEST, {"error": str(err)})
            except OSError as err:  # the disk refused: say so on the page, keep serving
                return self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{err.filename or ''}: {err.strerror or err}"})
            return self._json(HTTPStatus.OK, out)

    return Handler


def make_server(subjects: list[ReviewSubject], rater: str, port: int = 8765, host: str = "127.0.0.1"):
    """A ready (not yet serving) server; ``port`` 0 picks a free port (``server.server_port``)."""
    import errno

    try:
        server = ThreadingHTTPServer((host, port), _handler(ReviewApp(subjects, rater)))
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            raise InputError("--port", f"port {port} is in use on {host}; choose another (0 picks a free one)") from None
        raise
    server.daemon_threads = True
    return server


def serve(subjects: list[ReviewSubject], rater: str, port: int = 8765) -> None:
    """Serve until interrupted (Ctrl-C)."""
    server = make_server(subjects, rater, port)
    print(f"deepmir review: {len(subjects)} subject(s), rater {rater}, at http://127.0.0.1:{server.server_port}/ "
          "(Ctrl-C to stop; every decision is already saved)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
