"""SQLite store of Turing-test sessions and answers.

Durability: the database runs in WAL mode with ``synchronous=FULL`` and every answer is its own committed
transaction, so a closed browser, a killed server or a power cut loses nothing already answered.

Tables (``PRAGMA user_version`` = 1, ``meta.format`` = :data:`FORMAT`):

* ``sessions`` -- one per participant (``participant_id`` is UNIQUE: the database itself refuses a second
  session), with the method it tests, the plan's seed and the protocol settings.
* ``trials`` -- the planned trials of each session, written when the session starts. The fake's side is decided
  here, by the server; the page never learns it before answering (practice feedback aside).
* ``image_tokens`` -- opaque random tokens handed to the page for the current trial's two images; each is
  good for one fetch while its trial is the current one.
* ``answers`` -- one row per answered trial: participant, session, method, image id, the fake's source and side,
  the side clicked, practice / attention-check flags, response time (client: from the images being hidden to
  the click; server: from handing out the trial to receiving the answer), ``shows`` (how often the pair was
  handed out: more than 1 only if the page was reloaded mid-trial) and a timestamp.
"""

from __future__ import annotations

import contextlib
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from xchannel.errors import UserError
from xchannel.turing.protocol import ProtocolConfig, Trial

FORMAT = "xchannel-turing-answers/1"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    session_id     TEXT PRIMARY KEY,
    participant_id TEXT NOT NULL UNIQUE,
    method         TEXT NOT NULL,
    seed           INTEGER NOT NULL,
    n_practice     INTEGER NOT NULL,
    n_test         INTEGER NOT NULL,
    display_ms     INTEGER NOT NULL,
    user_agent     TEXT,
    started_at     REAL NOT NULL,
    last_seen      REAL NOT NULL,
    completed_at   REAL
);
CREATE TABLE IF NOT EXISTS trials (
    session_id         TEXT NOT NULL REFERENCES sessions(session_id),
    trial_idx          INTEGER NOT NULL,
    image_id           TEXT NOT NULL,
    fake_source        TEXT NOT NULL,
    fake_side          TEXT NOT NULL CHECK (fake_side IN ('left', 'right')),
    is_practice        INTEGER NOT NULL,
    is_attention_check INTEGER NOT NULL,
    shows              INTEGER NOT NULL DEFAULT 0,
    last_issued_at     REAL,
    PRIMARY KEY (session_id, trial_idx)
);
CREATE TABLE IF NOT EXISTS image_tokens (
    token      TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    trial_idx  INTEGER NOT NULL,
    side       TEXT NOT NULL CHECK (side IN ('left', 'right')),
    fetched    INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS answers (
    answer_id          INTEGER PRIMARY KEY AUTOINCREMENT,
    participant_id     TEXT NOT NULL,
    session_id         TEXT NOT NULL,
    method             TEXT NOT NULL,
    trial_idx          INTEGER NOT NULL,
    image_id           TEXT NOT NULL,
    fake_source        TEXT NOT NULL,
    fake_side          TEXT NOT NULL,
    clicked_side       TEXT NOT NULL CHECK (clicked_side IN ('left', 'right')),
    is_practice        INTEGER NOT NULL,
    is_attention_check INTEGER NOT NULL,
    response_ms        REAL NOT NULL,
    server_ms          REAL NOT NULL,
    shows              INTEGER NOT NULL,
    answered_at        REAL NOT NULL,
    UNIQUE (session_id, trial_idx)
);
CREATE INDEX IF NOT EXISTS answers_by_method ON answers (method);
"""


@dataclass(frozen=True)
class SessionRecord:
    session_id: str
    participant_id: str
    method: str
    n_practice: int
    n_test: int
    display_ms: int
    started_at: float
    completed_at: float | None

    @property
    def completed(self) -> bool:
        return self.completed_at is not None

    @property
    def n_trials(self) -> int:
        return self.n_practice + self.n_test

    @property
    def completion_code(self) -> str:
        """A short code a participant can quote to prove completion (e.g. to a crowdsourcing platform)."""
        return self.session_id[:10].upper()


@dataclass(frozen=True)
class TrialRecord:
    session_id: str
    index: int
    image_id: str
    fake_source: str
    fake_side: str
    is_practice: bool
    is_attention_check: bool
    shows: int
    last_issued_at: float | None


@dataclass(frozen=True)
class Answer:
    """One row of ``answers``. ``fooled`` is the paper's event: the real photo was labelled fake."""

    participant_id: str
    session_id: str
    method: str
    trial_idx: int
    image_id: str
    fake_source: str
    fake_side: str
    clicked_side: str
    is_practice: bool
    is_attention_check: bool
    response_ms: float
    server_ms: float
    shows: int
    answered_at: float

    @property
    def correct(self) -> bool:
        return self.clicked_side == self.fake_side

    @property
    def fooled(self) -> bool:
        return not self.correct


class AlreadyAnswered(Exception):
    """The trial has an answer already (a duplicate submission, e.g. from a second tab)."""


def _session(row: sqlite3.Row) -> SessionRecord:
    return SessionRecord(row["session_id"], row["participant_id"], row["method"], row["n_practice"],
                         row["n_test"], row["display_ms"], row["started_at"], row["completed_at"])


def _trial(row: sqlite3.Row) -> TrialRecord:
    return TrialRecord(row["session_id"], row["trial_idx"], row["image_id"], row["fake_source"], row["fake_side"],
                       bool(row["is_practice"]), bool(row["is_attention_check"]), row["shows"],
                       row["last_issued_at"])


class AnswerStore:
    """The experiment's database. Thread-safe: one connection, every operation under one lock.

    ``create=False`` opens an existing database only (for reports), refusing a missing or foreign file.
    """

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise UserError(f"{self.path}: no such answers database")
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
            self._db.row_factory = sqlite3.Row
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            if create:
                self._create_schema()
            self._check_schema()
        except sqlite3.DatabaseError as err:
            raise UserError(f"{self.path}: not a usable SQLite database ({err})") from err
        if mode.lower() != "wal":
            raise UserError(f"{self.path}: SQLite refused WAL mode (journal_mode={mode}); use a local disk")

    # ----------------------------------------------------------------------------------------- plumbing

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> AnswerStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``: other processes wait rather than interleave)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _create_schema(self) -> None:
        with self._tx() as db:
            for statement in filter(str.strip, _SCHEMA.split(";")):
                db.execute(statement)
            db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('format', ?)", (FORMAT,))
            if db.execute("PRAGMA user_version").fetchone()[0] == 0:
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _check_schema(self) -> None:
        try:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
        except sqlite3.OperationalError:
            row = None
        if row is None or row[0] != FORMAT:
            raise UserError(f"{self.path}: not a Turing-test answers database (expected format {FORMAT})")

    # ----------------------------------------------------------------------------------------- sessions

    def session_for(self, participant_id: str) -> SessionRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM sessions WHERE participant_id = ?", (participant_id,)).fetchone()
        return _session(row) if row else None

    def sessions(self) -> list[SessionRecord]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM sessions ORDER BY started_at").fetchall()
        return [_session(r) for r in rows]

    def _load(self, db: sqlite3.Connection, methods: Sequence[str], now: float, active_within_s: float) -> dict:
        """Per method: completed sessions plus unfinished ones seen within ``active_within_s`` seconds."""
        load = {m: 0 for m in methods}
        rows = db.execute(
            "SELECT method, COUNT(*) FROM sessions WHERE completed_at IS NOT NULL OR last_seen >= ? GROUP BY method",
            (now - active_within_s,)).fetchall()
        for method, n in rows:
            if method in load:
                load[method] = n
        return load

    def method_load(self, methods: Sequence[str], active_within_s: float = 1800.0) -> dict[str, int]:
        with self._lock:
            return self._load(self._db, methods, time.time(), active_within_s)

    def create_session(self, participant_id: str, methods: Sequence[str],
                       choose: Callable[[Mapping[str, int]], str], plan: Callable[[str, int], list[Trial]],
                       cfg: ProtocolConfig, *, seed: int, user_agent: str = "",
                       active_within_s: float = 1800.0) -> SessionRecord:
        """Start the participant's one session: pick its method with ``choose(load)`` and store
        ``plan(method, seed)``, atomically (two simultaneous first visits cannot both get a session).

        Raises :class:`sqlite3.IntegrityError` if the participant already has a session.
        """
        now = time.time()
        session_id = secrets.token_hex(16)
        with self._tx() as db:
            method = choose(self._load(db, methods, now, active_within_s))
            trials = plan(method, seed)
            if len(trials) != cfg.n_trials:
                raise ValueError(f"plan has {len(trials)} trials, the protocol {cfg.n_trials}")
            db.execute("INSERT INTO sessions (session_id, participant_id, method, seed, n_practice, n_test, "
                       "display_ms, user_agent, started_at, last_seen) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (session_id, participant_id, method, seed, cfg.n_practice, cfg.n_test, cfg.display_ms,
                        user_agent[:512], now, now))
            db.executemany("INSERT INTO trials (session_id, trial_idx, image_id, fake_source, fake_side, "
                           "is_practice, is_attention_check) VALUES (?, ?, ?, ?, ?, ?, ?)",
                           [(session_id, t.index, t.image_id, t.fake_source, t.fake_side, int(t.is_practice),
                             int(t.is_attention_check)) for t in trials])
            row = db.execute("SELECT * FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
        return _session(row)

    # ------------------------------------------------------------------------------------------- trials

    def trials(self, session_id: str) -> list[TrialRecord]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM trials WHERE session_id = ? ORDER BY trial_idx",
                                    (session_id,)).fetchall()
        return [_trial(r) for r in rows]

    def current_trial(self, session_id: str) -> TrialRecord | None:
        """The first trial of the session without an answer (``None`` once all are answered)."""
        with self._lock:
            row = self._db.execute(
                "SELECT t.* FROM trials t WHERE t.session_id = ? AND NOT EXISTS (SELECT 1 FROM answers a "
                "WHERE a.session_id = t.session_id AND a.trial_idx = t.trial_idx) ORDER BY t.trial_idx LIMIT 1",
                (session_id,)).fetchone()
        return _trial(row) if row else None

    def issue_trial(self, trial: TrialRecord) -> dict[str, str]:
        """Hand out ``trial`` (again): fresh one-fetch image tokens for both sides, ``shows`` + 1, the
        response clock restarted. Tokens of earlier showings of the trial are revoked."""
        now = time.time()
        tokens = {side: secrets.token_urlsafe(24) for side in ("left", "right")}
        with self._tx() as db:
            db.execute("DELETE FROM image_tokens WHERE session_id = ?", (trial.session_id,))
            db.executemany("INSERT INTO image_tokens (token, session_id, trial_idx, side) VALUES (?, ?, ?, ?)",
                           [(tok, trial.session_id, trial.index, side) for side, tok in tokens.items()])
            db.execute("UPDATE trials SET shows = shows + 1, last_issued_at = ? WHERE session_id = ? AND "
                       "trial_idx = ?", (now, trial.session_id, trial.index))
            db.execute("UPDATE sessions SET last_seen = ? WHERE session_id = ?", (now, trial.session_id))
        return tokens

    def claim_image(self, token: str) -> tuple[TrialRecord, str] | None:
        """The trial and side an image token stands for, if the token exists, has not been fetched yet and
        its trial is still unanswered; the token is then spent. ``None`` otherwise."""
        with self._tx() as db:
            row = db.execute("SELECT * FROM image_tokens WHERE token = ?", (token,)).fetchone()
            if row is None or row["fetched"]:
                return None
            answered = db.execute("SELECT 1 FROM answers WHERE session_id = ? AND trial_idx = ?",
                                  (row["session_id"], row["trial_idx"])).fetchone()
            if answered:
                return None
            db.execute("UPDATE image_tokens SET fetched = 1 WHERE token = ?", (token,))
            trial = db.execute("SELECT * FROM trials WHERE session_id = ? AND trial_idx = ?",
                               (row["session_id"], row["trial_idx"])).fetchone()
        return _trial(trial), row["side"]

    # ------------------------------------------------------------------------------------------ answers

    def record_answer(self, session: SessionRecord, trial: TrialRecord, clicked_side: str,
                      response_ms: float, server_ms: float) -> Answer:
        """Store one answer and commit it; the session is marked complete with its last trial.

        Raises :class:`AlreadyAnswered` if the trial already has an answer.
        """
        now = time.time()
        answer = Answer(session.participant_id, session.session_id, session.method, trial.index, trial.image_id,
                        trial.fake_source, trial.fake_side, clicked_side, trial.is_practice,
                        trial.is_attention_check, float(response_ms), float(server_ms), trial.shows, now)
        try:
            with self._tx() as db:
                db.execute("INSERT INTO answers (participant_id, session_id, method, trial_idx, image_id, "
                           "fake_source, fake_side, clicked_side, is_practice, is_attention_check, response_ms, "
                           "server_ms, shows, answered_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           (answer.participant_id, answer.session_id, answer.method, answer.trial_idx,
                            answer.image_id, answer.fake_source, answer.fake_side, answer.clicked_side,
                            int(answer.is_practice), int(answer.is_attention_check), answer.response_ms,
                            answer.server_ms, answer.shows, answer.answered_at))
                db.execute("DELETE FROM image_tokens WHERE session_id = ?", (session.session_id,))
                n_answered = db.execute("SELECT COUNT(*) FROM answers WHERE session_id = ?",
                                        (session.session_id,)).fetchone()[0]
                done = now if n_answered >= session.n_trials else None
                db.execute("UPDATE sessions SET last_seen = ?, completed_at = COALESCE(completed_at, ?) "
                           "WHERE session_id = ?", (now, done, session.session_id))
        except sqlite3.IntegrityError as err:
            raise AlreadyAnswered(f"trial {trial.index} of session {session.session_id} is answered") from err
        return answer

    def answers(self) -> list[Answer]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM answers ORDER BY answer_id").fetchall()
        return [Answer(r["participant_id"], r["session_id"], r["method"], r["trial_idx"], r["image_id"],
                       r["fake_source"], r["fake_side"], r["clicked_side"], bool(r["is_practice"]),
                       bool(r["is_attention_check"]), r["response_ms"], r["server_ms"], r["shows"],
                       r["answered_at"]) for r in rows]
