"""The progress store: every answer a learner submits, kept in one SQLite file.

* Path: ``$NATGRAD_COURSE_DB`` if set, else ``~/.natgrad-course/progress.sqlite3``,
  else (home not writable) ``<app folder>/.progress/progress.sqlite3``.
* Every submission is a row in ``attempts`` (append-only, so two browser
  sessions writing at once lose nothing: each write is its own short
  ``BEGIN IMMEDIATE`` transaction in WAL mode with a busy timeout).
* A corrupt or unwritable file raises :class:`StoreUnavailable` when opened;
  the app then keeps answers in memory for the session (:func:`memory_store`)
  and says so. The bad file is never modified.
* CSV exports neutralise cells a spreadsheet would run as a formula (OWASP,
  "CSV Injection"): a text cell starting with ``= + - @``, a tab or a carriage
  return gets a leading ``'``, and every cell is quoted.
* Schema 2: choice responses name options by id (``course.lessons.Option.id``);
  :meth:`ProgressStore.migrate_responses` converts older rows once.
* A "Show answer" click is a row of kind :data:`REVEAL` (no response, no grade):
  the record says the learner saw the answer. :meth:`ProgressStore.latest` skips
  these rows (it returns answers); :meth:`ProgressStore.history` holds them.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

ENV_VAR = "NATGRAD_COURSE_DB"
REVEAL = "reveal"  # the kind of a row that records a "Show answer" click
SCHEMA_VERSION = 2
_APP_DIR = Path(__file__).resolve().parent.parent
_SCHEMA = """
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    learner TEXT NOT NULL,
    lesson TEXT NOT NULL,
    question TEXT NOT NULL,
    kind TEXT NOT NULL,
    response TEXT NOT NULL,
    correct INTEGER,
    score REAL,
    self_rating INTEGER,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS attempts_learner ON attempts (learner, lesson, question, id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
EXPORT_FIELDS = ("id", "learner", "lesson", "question", "kind", "response", "correct", "score", "self_rating", "created_at")
_LEARNER_ROWS = f"SELECT {', '.join(EXPORT_FIELDS)} FROM attempts WHERE learner = ? ORDER BY id"  # one learner's rows


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # what spreadsheets may read as the start of a formula


def csv_safe(value: object) -> object:
    """A CSV cell that no spreadsheet runs as a formula: text starting with one of
    :data:`FORMULA_START` gets a leading ``'`` (shown as text; strip it to recover
    the value). Numbers and None are returned unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


class StoreUnavailable(RuntimeError):
    """The progress file cannot be used (corrupt, unwritable, locked too long)."""


@dataclass(frozen=True)
class Attempt:
    id: int
    learner: str
    lesson: str
    question: str
    kind: str
    response: object
    correct: bool | None
    score: float | None
    self_rating: int | None
    created_at: str


def default_path() -> Path:
    """Where progress is kept unless ``$NATGRAD_COURSE_DB`` says otherwise."""
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return Path(env).expanduser()
    home = Path.home() / ".natgrad-course"
    try:
        home.mkdir(parents=True, exist_ok=True)
        if os.access(home, os.W_OK):
            return home / "progress.sqlite3"
    except OSError:
        pass
    return _APP_DIR / ".progress" / "progress.sqlite3"


class ProgressStore:
    """Answers per learner in SQLite. Safe to share between threads and processes."""

    def __init__(self, path: Path | str, *, timeout: float = 10.0):
        self.path = str(path)
        self.timeout = timeout
        self._memory_conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        if self.path == ":memory:":
            self._memory_conn = sqlite3.connect(":memory:", check_same_thread=False)
        else:
            try:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreUnavailable(f"cannot create the folder for {self.path}: {exc}") from exc
        try:
            with self._connect() as conn:
                if self._memory_conn is None:
                    conn.execute("PRAGMA journal_mode=WAL")
                ok = conn.execute("PRAGMA quick_check").fetchone()[0]
                if ok != "ok":
                    raise StoreUnavailable(f"{self.path} failed its integrity check: {ok}")
                conn.executescript(_SCHEMA)
                conn.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
                conn.commit()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot use {self.path}: {exc}") from exc

    @property
    def persistent(self) -> bool:
        return self._memory_conn is None

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        if self._memory_conn is not None:
            with self._lock:
                yield self._memory_conn
            return
        conn = sqlite3.connect(self.path, timeout=self.timeout)
        try:
            conn.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
            yield conn
        finally:
            conn.close()

    def _write(self, sql: str, params: tuple) -> sqlite3.Cursor:
        try:
            with self._connect() as conn:
                conn.execute("BEGIN IMMEDIATE")
                cur = conn.execute(sql, params)
                conn.commit()
                return cur
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"could not save to {self.path}: {exc}") from exc

    def _read(self, sql: str, params: tuple) -> list[tuple]:
        try:
            with self._connect() as conn:
                return conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"could not read {self.path}: {exc}") from exc

    # ------------------------------------------------------------------ writes
    def record(
        self,
        learner: str,
        lesson: str,
        question: str,
        kind: str,
        response: object,
        correct: bool | None,
        score: float | None,
    ) -> int:
        """Append one submitted answer; returns its id."""
        now = datetime.now(UTC).isoformat(timespec="microseconds")
        cur = self._write(
            "INSERT INTO attempts (learner, lesson, question, kind, response, correct, score, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (learner, lesson, question, kind, json.dumps(response), None if correct is None else int(correct), score, now),
        )
        return int(cur.lastrowid)

    def rate(self, attempt_id: int, rating: int) -> None:
        """Store the learner's self-rating (1-3) of a reflection answer."""
        if rating not in (1, 2, 3):
            raise ValueError("rating must be 1, 2 or 3")
        self._write("UPDATE attempts SET self_rating = ? WHERE id = ?", (rating, attempt_id))

    def reset(self, learner: str) -> int:
        """Delete every answer of ``learner``; returns how many were deleted.
        Raises :class:`StoreUnavailable` (and deletes nothing) when the file cannot be written."""
        return self._write("DELETE FROM attempts WHERE learner = ?", (learner,)).rowcount

    def import_attempts(self, attempts: Iterable[Attempt], ratings: dict[int, int] | None = None) -> int:
        """Append ``attempts`` (answer, grade, rating and time as recorded elsewhere, new
        ids here) and set ``ratings`` (id here -> 1-3) in one transaction: all or
        nothing. Returns how many attempts were added."""
        rows = [(a.learner, a.lesson, a.question, a.kind, json.dumps(a.response),
                 None if a.correct is None else int(a.correct), a.score, a.self_rating, a.created_at)
                for a in attempts]
        try:
            with self._connect() as conn:
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(
                    "INSERT INTO attempts (learner, lesson, question, kind, response, correct, score, self_rating,"
                    " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
                conn.executemany("UPDATE attempts SET self_rating = ? WHERE id = ?",
                                 [(r, i) for i, r in (ratings or {}).items()])
                conn.commit()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"could not save to {self.path}: {exc}") from exc
        return len(rows)

    def migrate_responses(self, name: str, convert: Callable[[Attempt], object]) -> int:
        """Rewrite every stored response once per migration ``name`` (remembered in
        the file): ``convert(attempt)`` returns the new response (the old one to
        keep it). One transaction; returns how many rows changed (0 when the
        migration ran before)."""
        try:
            with self._connect() as conn:
                conn.execute("BEGIN IMMEDIATE")
                if conn.execute("SELECT 1 FROM meta WHERE key = ?", (f"migration:{name}",)).fetchone():
                    conn.rollback()
                    return 0
                rows = conn.execute(f"SELECT {', '.join(EXPORT_FIELDS)} FROM attempts ORDER BY id").fetchall()
                changed = []
                for row in rows:
                    a = _attempt(row)
                    new = convert(a)
                    if new != a.response:
                        changed.append((json.dumps(new), a.id))
                conn.executemany("UPDATE attempts SET response = ? WHERE id = ?", changed)
                conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)",
                             (f"migration:{name}", datetime.now(UTC).isoformat(timespec="seconds")))
                conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                             (str(SCHEMA_VERSION),))
                conn.commit()
                return len(changed)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"could not migrate {self.path}: {exc}") from exc

    # ------------------------------------------------------------------ reads
    def attempts(self, learner: str) -> list[Attempt]:
        rows = self._read(
            _LEARNER_ROWS,
            (learner,),
        )
        return [_attempt(r) for r in rows]

    def latest(self, learner: str) -> dict[tuple[str, str], Attempt]:
        """The newest answer per (lesson, question) of ``learner`` (reveal rows skipped)."""
        return latest_answers(self.attempts(learner))

    def history(self, learner: str) -> dict[tuple[str, str], list[Attempt]]:
        """Every row of ``learner`` per (lesson, question), oldest first, reveal rows included."""
        return by_question(self.attempts(learner))

    def count(self, learner: str) -> int:
        """How many answers of ``learner`` are stored."""
        return int(self._read("SELECT COUNT(*) FROM attempts WHERE learner = ?", (learner,))[0][0])

    def learners(self) -> list[str]:
        return [r[0] for r in self._read("SELECT DISTINCT learner FROM attempts ORDER BY learner", ())]

    # ------------------------------------------------------------------ export
    def export_json(self, learner: str) -> str:
        return json.dumps(
            {"learner": learner, "schema_version": SCHEMA_VERSION, "attempts": [asdict(a) for a in self.attempts(learner)]},
            indent=2,
        )

    def export_csv(self, learner: str) -> str:
        """Every answer of ``learner`` as CSV (responses JSON-encoded), safe to open
        in a spreadsheet (:func:`csv_safe` on every cell)."""
        buf = io.StringIO()
        writer = csv.writer(buf, quoting=csv.QUOTE_ALL)
        writer.writerow(EXPORT_FIELDS)
        for a in self.attempts(learner):
            row = asdict(a)
            row["response"] = json.dumps(a.response)
            writer.writerow([csv_safe(row[f]) for f in EXPORT_FIELDS])
        return buf.getvalue()


def latest_answers(attempts: Iterable[Attempt]) -> dict[tuple[str, str], Attempt]:
    """The newest answer per (lesson, question) in ``attempts`` (in id order), reveal rows skipped."""
    return {(a.lesson, a.question): a for a in attempts if a.kind != REVEAL}


def by_question(attempts: Iterable[Attempt]) -> dict[tuple[str, str], list[Attempt]]:
    """``attempts`` (in id order) grouped per (lesson, question)."""
    out: dict[tuple[str, str], list[Attempt]] = {}
    for a in attempts:
        out.setdefault((a.lesson, a.question), []).append(a)
    return out


def _attempt(row: tuple) -> Attempt:
    d = dict(zip(EXPORT_FIELDS, row, strict=True))
    try:
        d["response"] = json.loads(d["response"])
    except (TypeError, ValueError):
        pass
    d["correct"] = None if d["correct"] is None else bool(d["correct"])
    return Attempt(**d)


def read_only_attempts(path: Path | str, learner: str, timeout: float = 1.0) -> list[Attempt]:
    """``learner``'s rows from the file at ``path`` opened read-only: for a file that can be read but not
    written (a read-only file or folder), which :class:`ProgressStore` cannot open, since opening creates
    the schema. Tried as ``mode=ro``, then ``immutable=1`` (a WAL file in a folder where SQLite cannot create
    its shared-memory file). Raises :class:`StoreUnavailable` when neither reads it."""
    uri = Path(path).resolve().as_uri()
    last: sqlite3.Error | None = None
    for mode in ("mode=ro", "immutable=1"):
        try:
            conn = sqlite3.connect(f"{uri}?{mode}", uri=True, timeout=timeout)
            try:
                rows = conn.execute(_LEARNER_ROWS, (learner,)).fetchall()
            finally:
                conn.close()
            return [_attempt(r) for r in rows]
        except sqlite3.Error as exc:
            last = exc
    raise StoreUnavailable(f"could not read {path}: {last}")


def memory_store() -> ProgressStore:
    """A store that lives only as long as the process (the fallback)."""
    return ProgressStore(":memory:")


def open_store(path: Path | str | None = None) -> tuple[ProgressStore, str | None]:
    """Open the store at ``path`` (default: :func:`default_path`).

    Returns ``(store, warning)``. When the file cannot be used, the store is an
    in-memory one and ``warning`` says why, in words a learner can act on.
    """
    path = Path(path) if path is not None else default_path()
    try:
        return ProgressStore(path), None
    except StoreUnavailable as exc:
        return memory_store(), (
            f"Your progress cannot be saved to `{path}` ({exc}). "
            f"The course works as usual, but answers are kept only until this server stops. "
            f"To fix it, move the file aside or set `{ENV_VAR}` to a writable path, then restart."
        )
