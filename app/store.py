"""The conversation history: one SQLite file (through sqlite-utils) that the TUI and `trit ask` share, even while
both run at once.

The schema is a list of named migrations applied in order and recorded in `_trit_migrations`, so a history written
by any earlier Trit opens in this one, and a history from a newer Trit is refused instead of being changed.
Every failure reaches the caller as a one-line `StoreError`; nothing is ever deleted to recover from one. A history
that cannot be written (a full disk, a read-only folder) still opens for reading; each write then fails with a
`WriteError` that says what is full or read-only and where.

A reply is written into its row as it streams (begin_reply, save_draft, finish_reply), marked with the process
writing it; a reader that finds such a row whose writer is gone (kill -9, a crash, a power cut) calls it
"interrupted", one whose writer still runs "in_progress"."""

from __future__ import annotations

import functools
import inspect
import json
import os
import sqlite3
import sys
import threading
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from sqlite_utils import Database

from .paths import paths, why_unwritable
from .warm_cache import WarmCache

DEFAULT_FILE = "history.db"
BUSY_TIMEOUT_S = 5.0  # how long a write waits for another Trit process before giving up
SAVE_TIMEOUT_S = 60.0  # how long a finished answer waits: it is the user's work, not to be dropped after 5 s
TITLE_LENGTH = 60
ROLES = ("system", "user", "assistant")
MIGRATIONS_TABLE = "_trit_migrations"


class StoreError(Exception):
    """The history cannot be read or written: the message says what is wrong and what to do."""


class NotFound(StoreError):
    """No conversation or message with that id."""


class WriteError(StoreError):
    """Nothing can be written now: the disk is full, the folder read-only, or another process held the write lock
    too long. What was saved before is untouched."""


@dataclass
class Message:
    id: int
    conversation_id: int
    role: str
    content: str
    created: str  # ISO-8601 UTC, seconds
    model: str = ""
    # "stop", "stop_string", "length", "cancelled"; "in_progress" while a live process writes it, "interrupted" when
    # that process died first; None for user/system
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    reused_tokens: int | None = None
    generated_tokens: int | None = None
    dropped_messages: int | None = None
    prefill_tok_s: float | None = None
    decode_tok_s: float | None = None
    time_to_first_token_s: float | None = None

    def to_dict(self) -> dict:
        """The JSON shape of a message, the same in `trit ask --json` and `trit history show --json`."""
        return asdict(self)


MESSAGE_FIELDS = [f.name for f in fields(Message)]
STAT_FIELDS = MESSAGE_FIELDS[MESSAGE_FIELDS.index("created") + 1:]  # what add_message(**stats) accepts


@dataclass
class Conversation:
    id: int
    title: str
    model: str
    system: str
    params: dict
    created: str
    updated: str
    message_count: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SearchHit:
    conversation_id: int
    message_id: int
    title: str
    role: str
    snippet: str  # the words around the match, matches in [brackets]
    created: str


# ---- migrations: append only; a released step never changes, since databases in the wild were built by it ----

def _create_conversations_and_messages(db: Database) -> None:
    # update_seq orders "most recently updated" exactly: `updated` moves in whole seconds and with the clock.
    db.executescript("""
        CREATE TABLE conversations (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            title TEXT NOT NULL DEFAULT '',
            model TEXT NOT NULL DEFAULT '',
            system TEXT NOT NULL DEFAULT '',
            params TEXT NOT NULL DEFAULT '{}',
            created TEXT NOT NULL,
            updated TEXT NOT NULL,
            update_seq INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX conversations_update_seq ON conversations(update_seq);
        CREATE TABLE messages (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            role TEXT NOT NULL,
            content TEXT NOT NULL,
            created TEXT NOT NULL,
            model TEXT NOT NULL DEFAULT '',
            finish_reason TEXT
        );
        CREATE INDEX messages_conversation ON messages(conversation_id, id);
    """)


def _index_message_text(db: Database) -> None:
    # Triggers keep the index in step with every insert, update and delete, cascaded deletes included.
    db["messages"].enable_fts(["content"], fts_version="FTS5", create_triggers=True)


def _add_message_stats(db: Database) -> None:
    messages = db["messages"]
    for name in ("prompt_tokens", "reused_tokens", "generated_tokens", "dropped_messages"):
        messages.add_column(name, int)
    for name in ("prefill_tok_s", "decode_tok_s", "time_to_first_token_s"):
        messages.add_column(name, float)


def _add_message_writer(db: Database) -> None:
    # the process writing a reply into this row (see _process_id), NULL once the reply is finished
    db["messages"].add_column("writer", str)


MIGRATIONS: list[tuple[str, Callable[[Database], None]]] = [
    ("001_conversations_messages", _create_conversations_and_messages),
    ("002_messages_fts", _index_message_text),
    ("003_message_stats", _add_message_stats),
    ("004_message_writer", _add_message_writer),
]


@contextmanager
def _write(db: Database) -> Iterator[None]:
    """One write transaction. IMMEDIATE takes the write lock up front, so a read-then-write waits for another
    process (busy_timeout) instead of failing when that process committed in between."""
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.conn.execute("COMMIT")
    except BaseException:
        db.rollback()
        raise


def applied_migrations(db: Database) -> list[str]:
    if MIGRATIONS_TABLE not in db.table_names():
        return []
    return [row[0] for row in db.execute(f"SELECT name FROM {MIGRATIONS_TABLE} ORDER BY rowid")]


def migrate(db: Database, migrations: list[tuple[str, Callable[[Database], None]]] = MIGRATIONS) -> list[str]:
    """Apply the steps of `migrations` not yet recorded, in order, one transaction each; returns those applied now.
    Another process may be migrating the same file, so each step is checked again once the write lock is held."""
    applied_now = []
    recorded = set(applied_migrations(db))
    for name, step in migrations:
        if name in recorded:
            continue
        with _write(db):
            db.execute(f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} "
                       "(name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
            if name in applied_migrations(db):
                continue
            step(db)
            db[MIGRATIONS_TABLE].insert({"name": name, "applied_at": _now()})
        applied_now.append(name)
    return applied_now


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _process_id(pid: int) -> str:
    """A process as a reply's writer: on Linux the boot, the pid and its start time, so that a pid used again after
    kill -9 or a reboot is not taken for the writer; elsewhere the pid alone."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        start = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]  # field 22, starttime
        return f"{boot}/{pid}/{start}"
    except (OSError, IndexError):
        return str(pid)


def _writer_alive(writer: str) -> bool:
    try:
        pid = int(writer.split("/")[1] if "/" in writer else writer)
    except (ValueError, IndexError):
        return True  # a writer this Trit cannot read: do not call it interrupted
    if "/" in writer:
        return _process_id(pid) == writer
    if sys.platform == "win32":
        return True  # os.kill there would end the process, not test it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists but is not ours
    return True


def _read_message(row: dict) -> Message:
    writer = row.pop("writer")
    if writer is not None and row["finish_reason"] is None:
        row["finish_reason"] = "in_progress" if _writer_alive(writer) else "interrupted"
    return Message(**row)


def _error_kind(e: sqlite3.Error) -> str:
    """"locked", "full", "readonly", "io" or "": by SQLite's error code where Python gives it (3.11+), else its text."""
    name = getattr(e, "sqlite_errorname", "") or ""
    text = str(e).lower()
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in text or "busy" in text:
        return "locked"
    if name.startswith("SQLITE_FULL") or "is full" in text:
        return "full"
    if name.startswith("SQLITE_READONLY") or "readonly" in text or "read-only" in text:
        return "readonly"
    if name.startswith(("SQLITE_IOERR", "SQLITE_CANTOPEN")) or "disk i/o" in text or "unable to open" in text:
        return "io"
    return ""


def title_from(text: str) -> str:
    """The first non-empty line, whitespace collapsed, cut at a word boundary near TITLE_LENGTH."""
    line = next((" ".join(line.split()) for line in text.splitlines() if line.strip()), "")
    if len(line) <= TITLE_LENGTH:
        return line
    cut = line[:TITLE_LENGTH].rsplit(" ", 1)[0] if " " in line[:TITLE_LENGTH] else line[:TITLE_LENGTH]
    return cut.rstrip(" ,.;:") + "…"


SQLITE_MIN_INT, SQLITE_MAX_INT = -(1 << 63), (1 << 63) - 1


def _guarded(method):
    """Serialise callers (the TUI's workers share one Store) and turn SQLite's exceptions into one-line StoreErrors."""

    takes_cid = list(inspect.signature(method).parameters)[1:2] == ["cid"]

    @functools.wraps(method)
    def wrapper(self: Store, *args, **kwargs):
        if takes_cid and args and isinstance(args[0], int) and not SQLITE_MIN_INT <= args[0] <= SQLITE_MAX_INT:
            # an id past SQLite's integer range cannot exist (binding it would raise OverflowError)
            raise NotFound(f"no conversation {args[0]} — `trit history list` shows them")
        with self._lock:
            try:
                return method(self, *args, **kwargs)
            except sqlite3.Error as e:
                raise self._explain(e) from e

    return wrapper


class Store:
    def __init__(self, path: str | Path | None = None, *, timeout: float = BUSY_TIMEOUT_S):
        self.path = Path(path).expanduser() if path is not None else paths().data / DEFAULT_FILE
        # the saved KV caches of this history's conversations (the user's history only: ids are per file)
        self.warm = WarmCache() if path is None else None
        self.timeout = timeout
        self._wait = timeout  # how long the write under way waits for the lock, for its message
        self.read_only: str | None = None  # why this history can be read but not written, when it cannot
        self._lock = threading.RLock()
        self._create_file()
        try:
            self._connect()
        except sqlite3.Error as e:
            self.read_only = why_unwritable(self.path.parent) if _error_kind(e) in ("full", "readonly", "io") else None
            if self.read_only is None:
                raise self._explain(e) from e
            try:
                self._connect()
            except sqlite3.Error as e:
                raise self._explain(e) from e

    def _connect(self) -> None:
        if self.read_only is None:
            # isolation_level=None: no implicit transactions; every write says where it begins and ends.
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        else:
            # Reading a WAL database needs its -shm file, which a read-only folder or a full disk cannot give. With
            # no WAL content to read, immutable=1 reads the database file alone, as SQLite documents; otherwise
            # mode=ro uses the -shm and -wal already there.
            wal = Path(f"{self.path}-wal")
            mode = "mode=ro" if wal.exists() and wal.stat().st_size > 0 else "immutable=1"
            conn = sqlite3.connect(f"{self.path.absolute().as_uri()}?{mode}", uri=True, isolation_level=None,
                                   check_same_thread=False)
        try:
            self.db = Database(conn, execute_plugins=False)
            self._open()
        except BaseException:
            conn.close()
            raise

    def _create_file(self) -> None:
        """Create the file, and its folder if missing, readable by this user only: it holds private conversations."""
        try:
            if not self.path.parent.exists():
                self.path.parent.mkdir(mode=0o700, parents=True)
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass
        except OSError as e:
            why = why_unwritable(self.path.parent, e.errno)
            raise WriteError(f"cannot create the history {self.path}: " + (why or f"{e.strerror}; make that folder "
                             "writable or set TRIT_HOME to another place")) from e

    def _open(self) -> None:
        self.db.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
        self.db.execute("PRAGMA foreign_keys = ON")
        applied = applied_migrations(self.db)
        known = {name for name, _ in MIGRATIONS}
        unknown = [name for name in applied if name not in known]
        if unknown:
            raise StoreError(f"{self.path} was written by a newer Trit (schema step {unknown[-1]} is unknown to "
                             "this one); upgrade Trit to open it — the file was not changed")
        if not applied and self.db.table_names():
            raise StoreError(f"{self.path} is a SQLite database but not a Trit history; "
                             "move it elsewhere or point TRIT_HOME to another folder — the file was not changed")
        if self.read_only is not None:
            if len(applied) < len(MIGRATIONS):
                raise WriteError(f"{self.path} must be brought up to this Trit's schema, which needs writing, and "
                                 f"{self.read_only}")
            return
        # only now, once the file is known to be Trit's: WAL mode is written into the file itself
        self.db.enable_wal()  # readers and one writer at a time, across processes, without blocking each other
        migrate(self.db)

    def _explain(self, e: sqlite3.Error) -> StoreError:
        text = str(e)
        kind = _error_kind(e)
        if kind == "locked":
            return WriteError(f"{self.path} stayed locked by another program for {self._wait:g} s; "
                              "close other Trit windows and try again")
        why = self.read_only or (why_unwritable(self.path.parent) if kind in ("full", "readonly", "io") else None)
        if why is not None:
            return WriteError(f"cannot write to {self.path}: {why}")
        if kind == "readonly":
            return WriteError(f"{self.path} is read-only; make it and its folder writable by you and try again")
        if "not a database" in text or "malformed" in text:
            return StoreError(f"{self.path} is not a usable SQLite database ({text}); "
                              "move it aside and Trit will start a new history")
        if "unable to open" in text:
            return StoreError(f"cannot open {self.path}; check that it is a file in a folder you can write to")
        if "closed" in text:
            return StoreError(f"the history {self.path} was already closed")
        return StoreError(f"{self.path}: {text}")

    def close(self) -> None:
        with self._lock:
            self.db.close()

    @contextmanager
    def _waiting(self, seconds: float) -> Iterator[None]:
        """The writes inside wait up to `seconds` for another process's write lock (0: not at all)."""
        self.db.execute(f"PRAGMA busy_timeout = {int(seconds * 1000)}")
        self._wait = seconds
        try:
            yield
        finally:
            self.db.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            self._wait = self.timeout

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    @_guarded
    def schema_version(self) -> list[str]:
        return applied_migrations(self.db)

    # ---- conversations ----

    def _conversations(self, where: str = "", args: list | None = None, tail: str = "") -> list[Conversation]:
        rows = self.db.query(
            "SELECT c.id, c.title, c.model, c.system, c.params, c.created, c.updated,"
            " (SELECT count(*) FROM messages m WHERE m.conversation_id = c.id) AS message_count"
            f" FROM conversations c {where} {tail}", args or [])
        return [Conversation(**{**row, "params": json.loads(row["params"] or "{}")}) for row in rows]

    def _touch(self, cid: int, **changes) -> None:
        """Mark the conversation as the most recently updated one, in the caller's write transaction."""
        seq = self.db.execute("SELECT coalesce(max(update_seq), 0) + 1 FROM conversations").fetchone()[0]
        self.db["conversations"].update(cid, {**changes, "updated": _now(), "update_seq": seq})

    def _require(self, cid: int) -> None:
        if not self.db.execute("SELECT 1 FROM conversations WHERE id = ?", [cid]).fetchone():
            raise NotFound(f"no conversation {cid} — `trit history list` shows them")

    @_guarded
    def create_conversation(self, *, model: str = "", system: str = "", params: dict | None = None,
                            title: str = "") -> Conversation:
        now = _now()
        with _write(self.db):
            seq = self.db.execute("SELECT coalesce(max(update_seq), 0) + 1 FROM conversations").fetchone()[0]
            cid = self.db["conversations"].insert({
                "title": title.strip(), "model": model, "system": system, "params": json.dumps(params or {}),
                "created": now, "updated": now, "update_seq": seq,
            }).last_pk
        return self.conversation(cid)

    @_guarded
    def conversation(self, cid: int) -> Conversation:
        found = self._conversations("WHERE c.id = ?", [cid])
        if not found:
            raise NotFound(f"no conversation {cid} — `trit history list` shows them")
        return found[0]

    @_guarded
    def last_conversation_id(self) -> int | None:
        row = self.db.execute("SELECT id FROM conversations ORDER BY update_seq DESC, id DESC LIMIT 1").fetchone()
        return row[0] if row else None

    @_guarded
    def list_conversations(self, limit: int = 50, offset: int = 0, *, query: str | None = None,
                           model: str | None = None) -> list[Conversation]:
        """The most recently updated first; only those with a message matching every word of `query` (as search
        matches them), and only those whose model is `model`, when given."""
        limit, offset = min(limit, SQLITE_MAX_INT), min(offset, SQLITE_MAX_INT)  # "as many as there are"
        where, args = [], []
        if query is not None:
            match = self.db.quote_fts(query)  # quoted, as in search: what people type is searched for, not parsed
            if not match:
                return []
            where.append("c.id IN (SELECT m.conversation_id FROM messages_fts JOIN messages m"
                         " ON m.id = messages_fts.rowid WHERE messages_fts MATCH ?)")
            args.append(match)
        if model is not None:
            where.append("c.model = ?")
            args.append(model)
        return self._conversations(("WHERE " + " AND ".join(where)) if where else "", [*args, limit, offset],
                                   tail="ORDER BY c.update_seq DESC, c.id DESC LIMIT ? OFFSET ?")

    @_guarded
    def rename(self, cid: int, title: str) -> None:
        with _write(self.db):
            self._require(cid)
            self._touch(cid, title=" ".join(title.split()))

    @_guarded
    def update_conversation(self, cid: int, *, system: str | None = None, params: dict | None = None,
                            model: str | None = None) -> Conversation:
        changes = {"system": system, "model": model, "params": None if params is None else json.dumps(params)}
        with _write(self.db):
            self._require(cid)
            self._touch(cid, **{k: v for k, v in changes.items() if v is not None})
        return self.conversation(cid)

    @_guarded
    def delete_conversation(self, cid: int) -> None:
        with _write(self.db):
            self._require(cid)
            self.db.execute("DELETE FROM conversations WHERE id = ?", [cid])  # messages go by ON DELETE CASCADE
        self._forget_warm(cid)

    @_guarded
    def delete_all(self) -> int:
        with _write(self.db):
            n = self.db.execute("DELETE FROM conversations").rowcount  # messages go by ON DELETE CASCADE
        self._forget_warm(None)
        return n

    def _forget_warm(self, cid: int | None) -> None:
        """The saved KV cache holds the conversation's text too: it goes with it (every one with cid None)."""
        if self.warm is None:
            return
        try:
            self.warm.forget(cid)
        except OSError as e:
            what = f"conversation {cid} is" if cid is not None else "the conversations are"
            raise StoreError(f"{what} deleted, but {e.strerror}") from None

    # ---- messages ----

    def _message(self, mid: int) -> Message:
        rows = list(self.db.query(f"SELECT {', '.join(MESSAGE_FIELDS)}, writer FROM messages WHERE id = ?", [mid]))
        if not rows:
            raise NotFound(f"no message {mid} — `trit history show` lists a conversation's messages")
        return _read_message(rows[0])

    @_guarded
    def messages(self, cid: int) -> list[Message]:
        self._require(cid)
        rows = self.db.query(f"SELECT {', '.join(MESSAGE_FIELDS)}, writer FROM messages WHERE conversation_id = ? "
                             "ORDER BY id", [cid])
        return [_read_message(row) for row in rows]

    @_guarded
    def add_message(self, cid: int, role: str, content: str, *, wait: float | None = None, **stats) -> Message:
        """Append a message; `wait` is how long to wait for another process's write lock (default: timeout)."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        unknown = sorted(set(stats) - set(STAT_FIELDS))
        if unknown:
            raise TypeError(f"add_message() got unknown fields {', '.join(unknown)}")
        with self._waiting(self.timeout if wait is None else wait):
            return self._insert_message(cid, role, content, **stats)

    def _insert_message(self, cid: int, role: str, content: str, **columns) -> Message:
        with _write(self.db):
            title = self.db.execute("SELECT title FROM conversations WHERE id = ?", [cid]).fetchone()
            if title is None:
                raise NotFound(f"no conversation {cid} — `trit history list` shows them")
            first_user = role == "user" and not self.db.execute(
                "SELECT 1 FROM messages WHERE conversation_id = ? AND role = 'user'", [cid]).fetchone()
            mid = self.db["messages"].insert(
                {"conversation_id": cid, "role": role, "content": content, "created": _now(), **columns}).last_pk
            self._touch(cid, **({"title": title_from(content)} if first_user and not title[0] else {}))
        return self._message(mid)

    # ---- a reply as it is written ----

    @_guarded
    def begin_reply(self, cid: int, model: str, writer_pid: int | None = None) -> Message:
        """The row a reply is written into as it streams, marked as written by this process (or writer_pid) until
        finish_reply: should the process die first, readers see the reply as interrupted, not as silence."""
        return self._insert_message(cid, "assistant", "", model=model,
                                    writer=_process_id(os.getpid() if writer_pid is None else writer_pid))

    def save_draft(self, mid: int, content: str, generated_tokens: int) -> bool:
        """Save a reply's text so far if the history takes it at once; False if not. It never waits for another
        process's lock and never raises: the next save, or finish_reply, catches up."""
        if self.read_only is not None:
            return False
        with self._lock:
            try:
                with self._waiting(0), _write(self.db):
                    self.db.execute("UPDATE messages SET content = ?, generated_tokens = ? "
                                    "WHERE id = ? AND writer IS NOT NULL", [content, generated_tokens, mid])
                return True
            except sqlite3.Error:
                return False

    @_guarded
    def finish_reply(self, mid: int, content: str, *, wait: float = SAVE_TIMEOUT_S, **stats) -> Message:
        """The reply as it ended, no longer being written; waits up to `wait` for another process's write lock."""
        unknown = sorted(set(stats) - set(STAT_FIELDS))
        if unknown:
            raise TypeError(f"finish_reply() got unknown fields {', '.join(unknown)}")
        with self._waiting(wait):
            with _write(self.db):
                message = self._message(mid)
                self.db["messages"].update(mid, {"content": content, **stats, "writer": None})
                self._touch(message.conversation_id)
        return self._message(mid)

    @_guarded
    def update_message(self, mid: int, **fields) -> Message:
        unknown = sorted(set(fields) - {"role", "content", *STAT_FIELDS})
        if unknown:
            raise TypeError(f"update_message() cannot change {', '.join(unknown)}")
        if "role" in fields and fields["role"] not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, not {fields['role']!r}")
        with _write(self.db):
            message = self._message(mid)
            if fields:
                self.db["messages"].update(mid, fields)
            self._touch(message.conversation_id)
        return self._message(mid)

    @_guarded
    def delete_messages_from(self, cid: int, mid: int) -> int:
        with _write(self.db):
            self._require(cid)
            owned = self.db.execute("SELECT 1 FROM messages WHERE id = ? AND conversation_id = ?", [mid, cid])
            if not owned.fetchone():
                raise NotFound(f"no message {mid} in conversation {cid} — `trit history show {cid}` lists them")
            deleted = self.db.execute("DELETE FROM messages WHERE conversation_id = ? AND id >= ?", [cid, mid]).rowcount
            self._touch(cid)
        return deleted

    # ---- search and export ----

    @_guarded
    def search(self, text: str, limit: int = 50, prefix: bool = False) -> list[SearchHit]:
        """Messages with every word of text, best first. prefix: words also match the start of longer ones ("Darc"
        finds "Darcy"), for a search that updates as you type."""
        # Every term is quoted, so what people type (quotes, *, -, AND, brackets) is searched for, never parsed.
        if prefix:
            query = " ".join('"' + term.replace('"', '""') + '"*' for term in text.split())
        else:
            query = self.db.quote_fts(text)
        if not query:
            return []
        limit = min(limit, SQLITE_MAX_INT)
        rows = self.db.query(
            "SELECT m.conversation_id, m.id AS message_id, c.title, m.role,"
            " snippet(messages_fts, 0, '[', ']', '…', 12) AS snippet, m.created"
            " FROM messages_fts JOIN messages m ON m.id = messages_fts.rowid"
            " JOIN conversations c ON c.id = m.conversation_id"
            " WHERE messages_fts MATCH ? ORDER BY messages_fts.rank, m.id DESC LIMIT ?", [query, limit])
        return [SearchHit(**row) for row in rows]

    @_guarded
    def to_json(self, cid: int) -> dict:
        return {"conversation": self.conversation(cid).to_dict(),
                "messages": [m.to_dict() for m in self.messages(cid)]}

    @_guarded
    def to_markdown(self, cid: int) -> str:
        conversation = self.conversation(cid)
        date = conversation.created[:16].replace("T", " ") + " UTC"
        header = " · ".join(part for part in (conversation.model, date) if part)
        lines = [f"# {conversation.title or f'Conversation {conversation.id}'}", "", f"*{header}*", ""]
        if conversation.system:
            lines += ["**System**", "", conversation.system, ""]
        labels = {"user": "**You**", "assistant": "**Trit**", "system": "**System**"}  # as the chat app says
        for message in self.messages(cid):
            lines += [labels.get(message.role, f"**{message.role}**"), "", message.content, ""]
            note = {"cancelled": "stopped", "interrupted": "interrupted", "in_progress": "still being written"}
            if message.finish_reason in note:
                lines += [f"*({note[message.finish_reason]})*", ""]
        return "\n".join(lines).rstrip("\n") + "\n"
