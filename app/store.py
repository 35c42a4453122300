"""The conversation history: one SQLite file (through sqlite-utils) that the TUI and `trit ask` share, even while
both run at once.

The schema is a list of named migrations applied in order and recorded in `_trit_migrations`, so a history written
by any earlier Trit opens in this one, and a history from a newer Trit is refused instead of being changed.
Every failure reaches the caller as a one-line `StoreError`; nothing is ever deleted to recover from one."""

from __future__ import annotations

import functools
import inspect
import json
import os
import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from sqlite_utils import Database

from .paths import paths

DEFAULT_FILE = "history.db"
BUSY_TIMEOUT_S = 5.0  # how long a write waits for another Trit process before giving up
TITLE_LENGTH = 60
ROLES = ("system", "user", "assistant")
MIGRATIONS_TABLE = "_trit_migrations"


class StoreError(Exception):
    """The history cannot be read or written: the message says what is wrong and what to do."""


class NotFound(StoreError):
    """No conversation or message with that id."""


@dataclass
class Message:
    id: int
    conversation_id: int
    role: str
    content: str
    created: str  # ISO-8601 UTC, seconds
    model: str = ""
    finish_reason: str | None = None  # "stop", "stop_string", "length", "cancelled"; None for user/system
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


MIGRATIONS: list[tuple[str, Callable[[Database], None]]] = [
    ("001_conversations_messages", _create_conversations_and_messages),
    ("002_messages_fts", _index_message_text),
    ("003_message_stats", _add_message_stats),
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


def _title_from(text: str) -> str:
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
        self.timeout = timeout
        self._lock = threading.RLock()
        self._create_file()
        try:
            # isolation_level=None: no implicit transactions; every write says where it begins and ends.
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            raise self._explain(e) from e
        try:
            self.db = Database(conn, execute_plugins=False)
            self._open()
        except BaseException as e:
            conn.close()
            if isinstance(e, sqlite3.Error):
                raise self._explain(e) from e
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
            raise StoreError(f"cannot create the history {self.path}: {e.strerror}; "
                             "make that folder writable or set TRIT_HOME to another place") from e

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
        # only now, once the file is known to be Trit's: WAL mode is written into the file itself
        self.db.enable_wal()  # readers and one writer at a time, across processes, without blocking each other
        migrate(self.db)

    def _explain(self, e: sqlite3.Error) -> StoreError:
        text = str(e)
        if "locked" in text or "busy" in text:
            return StoreError(f"{self.path} stayed locked by another program for {self.timeout:g} s; "
                              "close other Trit windows and try again")
        if "readonly" in text or "read-only" in text:
            return StoreError(f"{self.path} is read-only; make it and its folder writable by you and try again")
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
    def list_conversations(self, limit: int = 50, offset: int = 0) -> list[Conversation]:
        limit, offset = min(limit, SQLITE_MAX_INT), min(offset, SQLITE_MAX_INT)  # "as many as there are"
        return self._conversations(tail="ORDER BY c.update_seq DESC, c.id DESC LIMIT ? OFFSET ?", args=[limit, offset])

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

    @_guarded
    def delete_all(self) -> int:
        with _write(self.db):
            return self.db.execute("DELETE FROM conversations").rowcount  # messages go by ON DELETE CASCADE

    # ---- messages ----

    def _message(self, mid: int) -> Message:
        rows = list(self.db.query(f"SELECT {', '.join(MESSAGE_FIELDS)} FROM messages WHERE id = ?", [mid]))
        if not rows:
            raise NotFound(f"no message {mid} — `trit history show` lists a conversation's messages")
        return Message(**rows[0])

    @_guarded
    def messages(self, cid: int) -> list[Message]:
        self._require(cid)
        rows = self.db.query(f"SELECT {', '.join(MESSAGE_FIELDS)} FROM messages WHERE conversation_id = ? ORDER BY id",
                             [cid])
        return [Message(**row) for row in rows]

    @_guarded
    def add_message(self, cid: int, role: str, content: str, **stats) -> Message:
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        unknown = sorted(set(stats) - set(STAT_FIELDS))
        if unknown:
            raise TypeError(f"add_message() got unknown fields {', '.join(unknown)}")
        with _write(self.db):
            title = self.db.execute("SELECT title FROM conversations WHERE id = ?", [cid]).fetchone()
            if title is None:
                raise NotFound(f"no conversation {cid} — `trit history list` shows them")
            first_user = role == "user" and not self.db.execute(
                "SELECT 1 FROM messages WHERE conversation_id = ? AND role = 'user'", [cid]).fetchone()
            mid = self.db["messages"].insert(
                {"conversation_id": cid, "role": role, "content": content, "created": _now(), **stats}).last_pk
            self._touch(cid, **({"title": _title_from(content)} if first_user and not title[0] else {}))
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
    def search(self, text: str, limit: int = 50) -> list[SearchHit]:
        # Every term is quoted, so what people type (quotes, *, -, AND, brackets) is searched for, never parsed.
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
        labels = {"user": "**You**", "assistant": "**Assistant**", "system": "**System**"}
        for message in self.messages(cid):
            lines += [labels.get(message.role, f"**{message.role}**"), "", message.content, ""]
            if message.finish_reason == "cancelled":
                lines += ["*(stopped)*", ""]
        return "\n".join(lines).rstrip("\n") + "\n"
