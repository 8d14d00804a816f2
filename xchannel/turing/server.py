"""The Turing-test web server (standard library: ``http.server.ThreadingHTTPServer`` and ``json``).

Routes -- the raw request path is matched exactly and never decoded or joined to a folder:

=========================  ===============================================================================
``GET /``                  the page (``static/index.html``); ``GET /static/app.js``, ``/static/style.css``
``POST /api/session``      start the participant's one session, or resume it at its first unanswered trial
``POST /api/answer``       ``{"index", "clicked": "left"|"right", "response_ms"}`` -> next trial
``GET /img/<token>``       one image of the current trial; the token is random, good for one fetch
anything else              404 (other HTTP methods: 501)
=========================  ===============================================================================

What the server guarantees:

* **The answer never leaves the server.** A trial reaches the page as two opaque image URLs; which one is fake is
  decided by the stored plan and revealed only after answering, and only on practice trials (feedback).
* **Answers are checked against the trial record**: the trial must be the session's current one, the click a
  side, the answer arrive no sooner than the display time after the trial was handed out. Each answer is
  committed before the reply (see :mod:`~xchannel.turing.store`).
* **One session per participant.** The participant id comes from the page (a ``?participant=`` URL parameter,
  e.g. a crowd-worker id, or the id kept in localStorage) or the ``xc_participant`` cookie, else it is made up;
  the database allows one session per id, and a completed one is not restarted.
* **Nothing but images and the page's assets can be read.** Images are served only through tokens mapped
  server-side to files enumerated from the pairs folder at startup (:func:`~xchannel.turing.pairs.scan_pairs`
  skips symlinks leading outside it), opened with ``O_NOFOLLOW``. Responses carry ``no-store``, ``nosniff`` and a
  restrictive Content-Security-Policy.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import secrets
import signal
import sqlite3
import stat
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path

from xchannel.errors import UserError
from xchannel.turing.pairs import RANDOM, REAL, ImageFile, PairsFolder, scan_pairs
from xchannel.turing.protocol import SIDES, ProtocolConfig, choose_method, plan_session
from xchannel.turing.store import AlreadyAnswered, AnswerStore, SessionRecord, TrialRecord

COOKIE = "xc_participant"
PARTICIPANT_RE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
IMAGE_ROUTE = re.compile(r"^/img/([A-Za-z0-9_-]{32})$")
MAX_BODY = 4096
MAX_RESPONSE_MS = 24 * 3600 * 1000.0
COOKIE_MAX_AGE = 365 * 24 * 3600
SECURITY_HEADERS = (
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    ("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src blob:; "
                                "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
)
STATIC = {  # route -> (file in xchannel/turing/static, content type)
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
}


@dataclass
class Reply:
    """An HTTP response: status, body and extra headers."""

    status: int
    body: bytes = b""
    content_type: str = "application/json; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def json(cls, status: int, payload: dict, headers: list[tuple[str, str]] | None = None) -> Reply:
        return cls(status, json.dumps(payload).encode(), headers=headers or [])

    @classmethod
    def error(cls, status: int, code: str, message: str) -> Reply:
        return cls.json(status, {"error": code, "message": message})


NOT_FOUND = Reply.error(404, "not_found", "Not found.")


class TuringApp:
    """The experiment's logic behind the HTTP layer: sessions, trials, answers and images.

    ``methods`` restricts the methods tested (default: every folder of the pairs folder except ``real``, so
    ``random`` too, as in Table 1). ``seed`` makes method assignment and session plans reproducible (default:
    drawn from the OS).
    """

    def __init__(self, pairs: PairsFolder, store: AnswerStore, *, methods: Sequence[str] | None = None,
                 cfg: ProtocolConfig = ProtocolConfig(), seed: int | None = None,
                 active_within_s: float = 1800.0) -> None:
        self.pairs, self.store, self.cfg = pairs, store, cfg
        self.methods = sorted(methods) if methods else [m for m in pairs.methods if pairs.ids_for(m)]
        for m in self.methods:
            if m == REAL or not pairs.ids_for(m):
                raise UserError(f"{pairs.root}: no images for method {m!r} (folders with images matching "
                                f"{REAL}/: {', '.join(x for x in pairs.methods if pairs.ids_for(x))})")
        self.random_ids = pairs.ids_for(RANDOM)
        self.active_within_s = active_within_s
        self._rng = random.Random(seed if seed is not None else secrets.randbits(64))
        self._rng_lock = threading.Lock()
        self._static = {route: (resources.files("xchannel.turing").joinpath("static", name).read_bytes(), ctype)
                        for route, (name, ctype) in STATIC.items()}
        page, ctype = self._static["/"]
        self._static["/"] = (_render_page(page, cfg), ctype)

    # --------------------------------------------------------------------------------------- helpers

    def _choose(self, load: dict[str, int]) -> str:
        with self._rng_lock:
            return choose_method(load, self._rng)

    def _plan(self, method: str, seed: int):
        return plan_session(method, self.pairs.ids_for(method), self.random_ids, random.Random(seed), self.cfg)

    def _trial_payload(self, session: SessionRecord, trial: TrialRecord) -> dict:
        tokens = self.store.issue_trial(trial)
        practice = trial.is_practice
        return {
            "index": trial.index,
            "practice": practice,
            "number": trial.index + 1 if practice else trial.index - session.n_practice + 1,
            "of": session.n_practice if practice else session.n_test,
            "images": {side: f"/img/{tokens[side]}" for side in SIDES},
        }

    def _session_payload(self, pid: str, session: SessionRecord, trial: TrialRecord | None, resumed: bool) -> dict:
        payload = {
            "participant": pid,
            "n_practice": session.n_practice,
            "n_test": session.n_test,
            "display_ms": session.display_ms,
            "resumed": resumed,
            "trial": self._trial_payload(session, trial) if trial else None,
        }
        if trial is None:
            payload["completion_code"] = session.completion_code
        return payload

    @staticmethod
    def valid_participant(value: object) -> str | None:
        return value if isinstance(value, str) and PARTICIPANT_RE.match(value) else None

    # ---------------------------------------------------------------------------------------- routes

    def start(self, participant: str | None, user_agent: str = "") -> Reply:
        """``POST /api/session``: the participant's session, started or resumed; a finished one is refused."""
        pid = self.valid_participant(participant) or secrets.token_urlsafe(16)
        cookie = [("Set-Cookie", f"{COOKIE}={pid}; Path=/; Max-Age={COOKIE_MAX_AGE}; HttpOnly; SameSite=Strict")]
        session = self.store.session_for(pid)
        resumed = session is not None
        if session is None:
            with self._rng_lock:
                seed = self._rng.randrange(2**63)
            try:
                session = self.store.create_session(pid, self.methods, self._choose, self._plan, self.cfg,
                                                    seed=seed, user_agent=user_agent,
                                                    active_within_s=self.active_within_s)
            except sqlite3.IntegrityError:  # the same participant started a session a moment ago
                session = self.store.session_for(pid)
                resumed = True
        if session.completed:
            return Reply.json(409, {"error": "already_completed", "participant": pid,
                                    "completion_code": session.completion_code,
                                    "message": "You have already completed this experiment. Each person can "
                                               "take part once. Thank you!"}, cookie)
        if session.method not in self.methods:
            return Reply.error(409, "method_unavailable", "This experiment is no longer running. Thank you!")
        trial = self.store.current_trial(session.session_id)
        return Reply.json(200, self._session_payload(pid, session, trial, resumed), cookie)

    def answer(self, participant: str | None, body: dict) -> Reply:
        """``POST /api/answer``: validate against the current trial record, store, hand out the next trial."""
        pid = self.valid_participant(participant)
        session = self.store.session_for(pid) if pid else None
        if session is None:
            return Reply.error(403, "no_session", "No session: reload the page to start.")
        if session.completed:
            return Reply.error(409, "already_completed", "This session is complete.")
        index, clicked, response_ms = body.get("index"), body.get("clicked"), body.get("response_ms")
        if isinstance(index, bool) or not isinstance(index, int):
            return Reply.error(400, "bad_request", "'index' must be an integer.")
        if clicked not in SIDES:
            return Reply.error(400, "bad_request", "'clicked' must be 'left' or 'right'.")
        if (isinstance(response_ms, bool) or not isinstance(response_ms, (int, float))
                or not math.isfinite(response_ms) or not 0 <= response_ms <= MAX_RESPONSE_MS):
            return Reply.error(400, "bad_request", "'response_ms' must be a number of milliseconds.")
        trial = self.store.current_trial(session.session_id)
        if trial is None or trial.index != index or trial.last_issued_at is None:
            return Reply.error(409, "stale", "That trial is not the current one: reload the page to continue.")
        server_ms = (time.time() - trial.last_issued_at) * 1000.0
        if server_ms < session.display_ms:
            return Reply.error(409, "too_early", "Answers are taken once the images have been hidden.")
        try:
            self.store.record_answer(session, trial, clicked, response_ms, server_ms)
        except AlreadyAnswered:
            return Reply.error(409, "stale", "That trial is already answered: reload the page to continue.")
        payload: dict = {"feedback": None}
        if trial.is_practice:
            payload["feedback"] = {"correct": clicked == trial.fake_side, "fake_side": trial.fake_side}
        session = self.store.session_for(pid)
        nxt = self.store.current_trial(session.session_id)
        payload["trial"] = self._trial_payload(session, nxt) if nxt else None
        if nxt is None:
            payload["completion_code"] = session.completion_code
        return Reply.json(200, payload)

    def image(self, token: str) -> Reply:
        """``GET /img/<token>``: the image a live, unspent token of a current trial stands for."""
        claim = self.store.claim_image(token)
        if claim is None:
            return NOT_FOUND
        trial, side = claim
        source = trial.fake_source if side == trial.fake_side else REAL
        found = self.pairs.image(source, trial.image_id)
        data = _read_enumerated(found, self.pairs.root) if found else None
        if data is None:
            return NOT_FOUND
        return Reply(200, data, found.content_type)

    def static(self, route: str) -> Reply | None:
        if route not in self._static:
            return None
        body, ctype = self._static[route]
        return Reply(200, body, ctype)


def _render_page(page: bytes, cfg: ProtocolConfig) -> bytes:
    """Fill the page's instructions with this server's protocol numbers."""
    seconds = cfg.display_ms / 1000.0
    display = "one second" if cfg.display_ms == 1000 else f"{seconds:g} seconds"
    text = page.decode("utf-8")
    for key, value in (("__DISPLAY__", display), ("__N_PRACTICE__", str(cfg.n_practice)),
                       ("__N_TEST__", str(cfg.n_test))):
        text = text.replace(key, value)
    return text.encode("utf-8")


def _read_enumerated(image: ImageFile, root: Path) -> bytes | None:
    """Read an enumerated image, refusing it if it was replaced by a symlink or moved out of ``root``."""
    if os.path.realpath(image.path) != str(image.path) or not str(image.path).startswith(str(root) + os.sep):
        return None
    try:
        fd = os.open(image.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        return f.read()


class _Handler(BaseHTTPRequestHandler):
    """Routes requests to the :class:`TuringApp` held by the server."""

    server_version = "xchannel-turing"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = 60  # seconds a connection may idle: a stalled client cannot hold a thread for ever

    def version_string(self) -> str:
        return self.server_version

    @property
    def app(self) -> TuringApp:
        return self.server.app  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        if not getattr(self.server, "quiet", False):
            super().log_message(format, *args)

    def _send(self, reply: Reply) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in SECURITY_HEADERS + tuple(reply.headers):
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply.body)

    def _route(self) -> str | None:
        """The path of an origin-form request target (``/a/b?x``), undecoded; ``None`` for any other form."""
        if not self.path.startswith("/") or self.path.startswith("//"):
            return None
        return self.path.split("?", 1)[0].split("#", 1)[0]

    def _cookie_participant(self) -> str | None:
        try:
            jar = SimpleCookie(self.headers.get("Cookie", ""))
        except CookieError:
            return None
        return jar[COOKIE].value if COOKIE in jar else None

    def _guarded(self, handler) -> None:
        try:
            self._send(handler())
        except Exception as err:  # never a traceback to the participant; the operator sees it
            print(f"turing-test: error handling {self.command} {self.path!r}: {err!r}", file=sys.stderr)
            self.close_connection = True
            self._send(Reply.error(500, "server_error", "Server error; please try again."))

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        def handle() -> Reply:
            route = self._route()
            if route is None:
                return NOT_FOUND
            static = self.app.static(route)
            if static is not None:
                return static
            m = IMAGE_ROUTE.match(route)
            return self.app.image(m.group(1)) if m else NOT_FOUND

        self._guarded(handle)

    def do_POST(self) -> None:  # noqa: N802
        def handle() -> Reply:
            route = self._route()
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                self.close_connection = True
                return Reply.error(411, "length_required", "Content-Length required.")
            if not 0 <= length <= MAX_BODY:
                self.close_connection = True
                return Reply.error(413, "too_large", "Request body too large.")
            raw = self.rfile.read(length)
            if route not in ("/api/session", "/api/answer"):
                return NOT_FOUND
            # JSON only: a cross-site form cannot send this content type without a CORS preflight we refuse.
            if self.headers.get_content_type() != "application/json":
                return Reply.error(415, "bad_content_type", "Send application/json.")
            try:
                body = json.loads(raw or b"{}")
            except (json.JSONDecodeError, UnicodeDecodeError):
                return Reply.error(400, "bad_request", "Body is not JSON.")
            if not isinstance(body, dict):
                return Reply.error(400, "bad_request", "Body must be a JSON object.")
            participant = TuringApp.valid_participant(body.get("participant")) or self._cookie_participant()
            if route == "/api/session":
                return self.app.start(participant, self.headers.get("User-Agent", ""))
            return self.app.answer(participant, body)

        self._guarded(handle)


class TuringHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server holding the :class:`TuringApp` its handlers use."""

    daemon_threads = True

    def __init__(self, app: TuringApp, host: str = "127.0.0.1", port: int = 8000, *, quiet: bool = False) -> None:
        self.app, self.quiet = app, quiet
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"


def build_server(pairs_dir: str | os.PathLike, db: str | os.PathLike, *, host: str = "127.0.0.1",
                 port: int = 8000, cfg: ProtocolConfig = ProtocolConfig(), methods: Sequence[str] | None = None,
                 seed: int | None = None, quiet: bool = False) -> TuringHTTPServer:
    """Scan the pairs folder, open (or create) the answers database and bind the server (not yet serving).

    The database must not lie inside the pairs folder (it is never served, but keeping it apart keeps the
    served tree read-only).
    """
    pairs = scan_pairs(pairs_dir)
    db_real = Path(os.path.realpath(db))
    if str(db_real).startswith(str(pairs.root) + os.sep):
        raise UserError(f"{db}: the answers database must not be inside the pairs folder {pairs_dir}")
    store = AnswerStore(db)
    try:
        app = TuringApp(pairs, store, methods=methods, cfg=cfg, seed=seed)
        return TuringHTTPServer(app, host, port, quiet=quiet)
    except OSError as err:
        store.close()
        raise UserError(f"cannot listen on {host}:{port} ({err.strerror})") from err
    except BaseException:
        store.close()
        raise


def serve(server: TuringHTTPServer) -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM), then close the database. Every answer is already
    committed when it is acknowledged, so stopping loses nothing."""

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        server.app.store.close()
