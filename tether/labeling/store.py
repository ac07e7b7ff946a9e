"""The labeling store: one SQLite file holding labelers, tasks and answers.

Why these choices:
- WAL mode, so exports and stats read while the server writes; ``synchronous=FULL``, so an
  answer whose commit returned survives a crash of the process *and* of the machine (the
  server answers the HTTP request only after that commit).
- Every write is one ``BEGIN IMMEDIATE`` transaction: an answer is either all there or not at
  all, and two writers never interleave. A lock inside the process serialises this process's
  writers (cheaper than SQLite's sleep-and-retry busy handler); ``busy_timeout`` covers other
  processes (``tether label simulate`` next to a running server).
- ``UNIQUE (labeler, task, request_id)`` makes a retried request a no-op, and a partial unique
  index allows one live answer per labeler and task: a second needs an undo first.
- Undo marks an answer undone instead of deleting it: the audit trail stays, and a late retry
  of the undone request still finds its row instead of answering the task twice.
- The schema version lives in ``PRAGMA user_version``; MIGRATIONS[v] upgrades v -> v + 1.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from tether.errors import DataError, TetherError
from tether.labeling.judgement import make_judgement
from tether.labeling.records import (
    AlreadyAnswered, Answer, Labeler, Progress, RoundProgress, Submitted, UnknownAnswer, UnknownTask,
)
from tether.labeling.tasks import Task

__all__ = [
    "SCHEMA_VERSION", "Store", "Labeler", "Answer", "Progress", "RoundProgress", "Submitted",
    "UnknownTask", "UnknownAnswer", "AlreadyAnswered",
]

MIGRATIONS: list[list[str]] = [
    [  # 0 -> 1
        """CREATE TABLE labelers (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            token_sha256 TEXT NOT NULL UNIQUE,  -- only a hash: a copied database leaks no token
            created_at REAL NOT NULL
        )""",
        """CREATE TABLE tasks (
            id TEXT PRIMARY KEY,
            position INTEGER NOT NULL UNIQUE,  -- serving order
            prompt TEXT NOT NULL,
            responses TEXT NOT NULL,  -- JSON list of k strings
            k INTEGER NOT NULL CHECK (k >= 2)
        )""",
        """CREATE TABLE answers (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            labeler_id INTEGER NOT NULL REFERENCES labelers(id),
            task_id TEXT NOT NULL REFERENCES tasks(id),
            request_id TEXT NOT NULL,
            choice TEXT NOT NULL CHECK (choice IN ('a', 'b', 'tie', 'skip', 'rank')),
            ranking TEXT CHECK ((ranking IS NULL) = (choice IN ('tie', 'skip'))),  -- JSON, best -> worst
            reason TEXT,
            created_at REAL NOT NULL,
            undone_at REAL,
            UNIQUE (labeler_id, task_id, request_id)
        )""",
        "CREATE UNIQUE INDEX answers_one_live ON answers (labeler_id, task_id) WHERE undone_at IS NULL",
        "CREATE INDEX answers_by_labeler ON answers (labeler_id, id)",
    ],
    [  # 1 -> 2: which responses were cut off at the length limit (JSON booleans; NULL: not known)
        "ALTER TABLE tasks ADD COLUMN truncated TEXT",
    ],
    [  # 2 -> 3: the round of iterated online RLHF (tether rlhf) whose policy sampled the task (NULL: none)
        "ALTER TABLE tasks ADD COLUMN round INTEGER",
        "CREATE INDEX tasks_by_round ON tasks (round)",
    ],
]
SCHEMA_VERSION = len(MIGRATIONS)
BUSY_TIMEOUT_S = 30.0
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,63}$")


class Store:
    def __init__(self, path: str | Path, *, create: bool = False):
        self.path = Path(path)
        if not create and not self.path.exists():
            raise TetherError(
                f"labeling database not found: {self.path} "
                f"(start one with `tether label add-labeler NAME --db {self.path}`)"
            )
        self._write_lock = threading.Lock()
        self._migrate()

    # -- connections -------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        # One short-lived connection per operation: the server calls in from many threads,
        # and opening a SQLite connection costs microseconds next to an HTTP request.
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = FULL")
        return conn

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        conn = self._connect()
        try:
            conn.execute("BEGIN")  # one consistent snapshot for multi-query reads
            yield conn
            conn.execute("COMMIT")
        finally:
            conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._write_lock:
            conn = self._connect()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            finally:
                conn.close()

    def _migrate(self) -> None:
        """Bring the file to SCHEMA_VERSION. An up-to-date file (the common case: every export,
        every server start) costs one read, not a write transaction next to a busy server."""
        try:
            conn = self._connect()
            try:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version < SCHEMA_VERSION:
                    conn.execute("PRAGMA journal_mode = WAL")  # persistent; not allowed inside a transaction
            finally:
                conn.close()
            _check_not_newer(self.path, version)
            if version == SCHEMA_VERSION:
                return
            with self._write() as conn:
                version = conn.execute("PRAGMA user_version").fetchone()[0]  # another process may have won
                _check_not_newer(self.path, version)
                for v in range(version, SCHEMA_VERSION):
                    for statement in MIGRATIONS[v]:
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            raise TetherError(f"{self.path} is not a usable labeling database ({exc})") from None

    def schema_version(self) -> int:
        with self._read() as conn:
            return conn.execute("PRAGMA user_version").fetchone()[0]

    # -- labelers ----------------------------------------------------------------------
    def add_labeler(self, name: str, *, new_token: bool = False) -> str:
        """Create a labeler (or, with ``new_token``, replace a lost token); return the token.
        The token is shown once: only its hash is stored."""
        if not _NAME_RE.match(name):
            raise DataError(f"labeler name {name!r}: use 1-64 letters, digits or _.@+- (it appears in the export)")
        token = secrets.token_urlsafe(24)
        with self._write() as conn:
            exists = conn.execute("SELECT id FROM labelers WHERE name = ?", (name,)).fetchone()
            if exists and not new_token:
                raise TetherError(f"labeler {name!r} already exists (use --new-token to replace a lost token)")
            if exists:
                conn.execute("UPDATE labelers SET token_sha256 = ? WHERE id = ?", (_hash(token), exists["id"]))
            else:
                conn.execute(
                    "INSERT INTO labelers (name, token_sha256, created_at) VALUES (?, ?, ?)",
                    (name, _hash(token), time.time()),
                )
        return token

    def labeler_for_token(self, token: str | None) -> Labeler | None:
        if not token:
            return None
        with self._read() as conn:
            row = conn.execute("SELECT id, name FROM labelers WHERE token_sha256 = ?", (_hash(token),)).fetchone()
        return Labeler(row["id"], row["name"]) if row else None

    def labeler(self, name: str) -> Labeler | None:
        with self._read() as conn:
            row = conn.execute("SELECT id, name FROM labelers WHERE name = ?", (name,)).fetchone()
        return Labeler(row["id"], row["name"]) if row else None

    def labelers(self) -> list[Labeler]:
        with self._read() as conn:
            return [Labeler(r["id"], r["name"]) for r in conn.execute("SELECT id, name FROM labelers ORDER BY name")]

    # -- tasks -------------------------------------------------------------------------
    def add_tasks(self, tasks: Iterable[Task]) -> int:
        """Add tasks in one transaction (all or none); known ids are skipped if unchanged.
        Returns how many were new."""
        added = 0
        with self._write() as conn:
            position = conn.execute("SELECT COALESCE(MAX(position), -1) FROM tasks").fetchone()[0]
            for task in tasks:
                row = conn.execute("SELECT prompt, responses FROM tasks WHERE id = ?", (task.id,)).fetchone()
                if row is not None:
                    if row["prompt"] != task.prompt or tuple(json.loads(row["responses"])) != task.responses:
                        raise DataError(
                            f"task {task.id!r} is already in {self.path.name} with a different prompt or responses; "
                            "give the new one another id"
                        )
                    continue
                position += 1
                conn.execute(
                    "INSERT INTO tasks (id, position, prompt, responses, k, truncated, round) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (task.id, position, task.prompt, json.dumps(list(task.responses), ensure_ascii=False), task.k,
                     None if task.truncated is None else json.dumps(list(task.truncated)), task.round),
                )
                added += 1
        return added

    def task(self, task_id: str) -> Task | None:
        with self._read() as conn:
            row = conn.execute(f"SELECT {_TASK_COLUMNS} FROM tasks WHERE id = ?", (task_id,)).fetchone()
        return _task(row) if row else None

    def tasks(self) -> list[Task]:
        with self._read() as conn:
            return [_task(r) for r in conn.execute(f"SELECT {_TASK_COLUMNS} FROM tasks ORDER BY position")]

    def next_task(self, labeler: Labeler) -> Task | None:
        """The first task, in file order, that this labeler has no live answer for."""
        with self._read() as conn:
            row = conn.execute(
                f"""SELECT {_TASK_COLUMNS} FROM tasks WHERE id NOT IN
                   (SELECT task_id FROM answers WHERE labeler_id = ? AND undone_at IS NULL)
                   ORDER BY position LIMIT 1""",
                (labeler.id,),
            ).fetchone()
        return _task(row) if row else None

    def progress(self, labeler: Labeler) -> Progress:
        with self._read() as conn:
            return _progress(conn, labeler)

    def round_progress(self, round_: int, answers_per_task: int = 1) -> RoundProgress:
        """How many of a round's tasks have ``answers_per_task`` live answers, whoever gave
        them (one live answer per labeler and task, so that many labelers)."""
        with self._read() as conn:
            total = conn.execute("SELECT COUNT(*) FROM tasks WHERE round = ?", (round_,)).fetchone()[0]
            answered = conn.execute(
                """SELECT COUNT(*) FROM tasks t WHERE t.round = ? AND
                   (SELECT COUNT(*) FROM answers a WHERE a.task_id = t.id AND a.undone_at IS NULL) >= ?""",
                (round_, answers_per_task),
            ).fetchone()[0]
        return RoundProgress(answered=answered, total=total)

    # -- answers -----------------------------------------------------------------------
    def submit(
        self,
        labeler: Labeler,
        task_id: str,
        choice: str,
        ranking: Sequence[int] | None,
        reason: str | None,
        request_id: str,
    ) -> Submitted:
        """Validate and store one answer, committed before this returns.

        Raises UnknownTask, DataError (an answer that does not fit the task) or AlreadyAnswered.
        A retry with a stored ``request_id`` returns the stored answer and writes nothing.
        """
        reason = (reason.strip() or None) if reason else None
        with self._write() as conn:
            row = conn.execute(
                f"{_ANSWER_SELECT} WHERE a.labeler_id = ? AND a.task_id = ? AND a.request_id = ?",
                (labeler.id, task_id, request_id),
            ).fetchone()
            if row is not None:
                return Submitted(_answer(row), created=False, progress=_progress(conn, labeler))
            task_row = conn.execute("SELECT k FROM tasks WHERE id = ?", (task_id,)).fetchone()
            if task_row is None:
                raise UnknownTask(f"no task with id {task_id!r}")
            judgement = make_judgement(choice, ranking, task_row["k"])
            live = conn.execute(
                "SELECT id FROM answers WHERE labeler_id = ? AND task_id = ? AND undone_at IS NULL",
                (labeler.id, task_id),
            ).fetchone()
            if live is not None:
                raise AlreadyAnswered(
                    f"task {task_id!r} already answered by {labeler.name} (answer {live['id']}); undo it first"
                )
            cursor = conn.execute(
                """INSERT INTO answers (labeler_id, task_id, request_id, choice, ranking, reason, created_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?)""",
                (labeler.id, task_id, request_id, judgement.choice,
                 json.dumps(list(judgement.ranking)) if judgement.ranking is not None else None, reason, time.time()),
            )
            row = conn.execute(f"{_ANSWER_SELECT} WHERE a.id = ?", (cursor.lastrowid,)).fetchone()
            return Submitted(_answer(row), created=True, progress=_progress(conn, labeler))

    def undo(self, labeler: Labeler, answer_id: int | None = None) -> Answer | None:
        """Mark undone the given answer, or this labeler's latest live one; return it (None if
        there is nothing to undo). Undoing an answer already undone changes nothing, so a
        retried undo with an ``answer_id`` never undoes a second answer."""
        with self._write() as conn:
            if answer_id is None:
                row = conn.execute(
                    f"{_ANSWER_SELECT} WHERE a.labeler_id = ? AND a.undone_at IS NULL ORDER BY a.id DESC LIMIT 1",
                    (labeler.id,),
                ).fetchone()
                if row is None:
                    return None
            else:
                row = conn.execute(
                    f"{_ANSWER_SELECT} WHERE a.id = ? AND a.labeler_id = ?", (answer_id, labeler.id)
                ).fetchone()
                if row is None:
                    raise UnknownAnswer(f"no answer {answer_id} by {labeler.name}")
                if row["undone_at"] is not None:
                    return _answer(row)
            conn.execute("UPDATE answers SET undone_at = ? WHERE id = ?", (time.time(), row["id"]))
            row = conn.execute(f"{_ANSWER_SELECT} WHERE a.id = ?", (row["id"],)).fetchone()
        return _answer(row)

    def live_answers(self) -> list[tuple[Answer, Task]]:
        """Every answer not undone, with its task, in task order then labeler name."""
        with self._read() as conn:
            rows = conn.execute(
                f"""SELECT {_ANSWER_COLUMNS}, t.prompt, t.responses, t.truncated, t.round FROM {_ANSWER_TABLES}
                    JOIN tasks t ON t.id = a.task_id WHERE a.undone_at IS NULL ORDER BY t.position, l.name"""
            ).fetchall()
        return [(_answer(r), _task(r, id_column="task_id")) for r in rows]

    def answer_rows(self, include_undone: bool = True) -> list[Answer]:
        """All answers in insertion order (tests and audits)."""
        where = "" if include_undone else "WHERE a.undone_at IS NULL"
        with self._read() as conn:
            return [_answer(r) for r in conn.execute(f"{_ANSWER_SELECT} {where} ORDER BY a.id")]


_ANSWER_COLUMNS = """a.id, l.name AS labeler, a.task_id, a.request_id, a.choice, a.ranking, a.reason,
    a.created_at, a.undone_at"""
_ANSWER_TABLES = "answers a JOIN labelers l ON l.id = a.labeler_id"
_ANSWER_SELECT = f"SELECT {_ANSWER_COLUMNS} FROM {_ANSWER_TABLES}"
_TASK_COLUMNS = "id, prompt, responses, truncated, round"


def _check_not_newer(path: Path, version: int) -> None:
    if version > SCHEMA_VERSION:
        raise TetherError(f"{path} has labeling schema {version}, newer than this tether's {SCHEMA_VERSION}: upgrade tether")


def _answer(row: sqlite3.Row) -> Answer:
    return Answer(
        id=row["id"], labeler=row["labeler"], task_id=row["task_id"], request_id=row["request_id"],
        choice=row["choice"], ranking=tuple(json.loads(row["ranking"])) if row["ranking"] is not None else None,
        reason=row["reason"], created_at=row["created_at"], undone_at=row["undone_at"],
    )


def _progress(conn: sqlite3.Connection, labeler: Labeler) -> Progress:
    done = conn.execute(
        "SELECT COUNT(*) FROM answers WHERE labeler_id = ? AND undone_at IS NULL", (labeler.id,)
    ).fetchone()[0]
    total = conn.execute("SELECT COUNT(*) FROM tasks").fetchone()[0]
    return Progress(done=done, total=total)


def _task(row: sqlite3.Row, id_column: str = "id") -> Task:
    truncated = None if row["truncated"] is None else tuple(json.loads(row["truncated"]))
    return Task(row[id_column], row["prompt"], tuple(json.loads(row["responses"])), truncated, row["round"])


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
