"""The history store against real SQLite files: migrations from every earlier schema, search, deletes, exports,
bad files, and two processes writing at once."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from sqlite_utils import Database

from trit.app.store import (
    DEFAULT_FILE,
    MESSAGE_FIELDS,
    MIGRATIONS,
    TITLE_LENGTH,
    NotFound,
    Store,
    StoreError,
    migrate,
)

ALL_STEPS = [name for name, _ in MIGRATIONS]
WRITER = Path(__file__).with_name("store_writer.py")


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / DEFAULT_FILE) as s:
        yield s


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def fts_rows(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT count(*) FROM messages_fts").fetchone()[0]


def raw(path: Path) -> Database:
    """A plain sqlite-utils connection, as an older Trit (or another program) would have."""
    return Database(sqlite3.connect(path, isolation_level=None))


# ---- opening and migrating ----

def test_new_history_is_private_migrated_and_shareable(tmp_path):
    path = tmp_path / "new" / "history.db"
    with Store(path) as s:
        assert s.schema_version == ALL_STEPS
        assert mode(path) == 0o600
        assert mode(path.parent) == 0o700
        s.add_message(s.create_conversation().id, "user", "hi")  # the WAL file exists once something is written
        assert mode(Path(f"{path}-wal")) == 0o600
        assert s.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert s.db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert s.db.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
        applied_at = [r[0] for r in s.db.execute("SELECT applied_at FROM _trit_migrations")]
        assert len(applied_at) == len(ALL_STEPS) and all(t.endswith("+00:00") for t in applied_at)
    with Store(path) as again:  # reopening applies nothing twice
        assert again.db.execute("SELECT applied_at FROM _trit_migrations").fetchall() == [(t,) for t in applied_at]


def test_default_location_is_the_data_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TRIT_HOME", str(tmp_path / "home"))
    with Store() as s:
        assert s.path == tmp_path / "home" / "data" / DEFAULT_FILE
        assert s.path.exists() and mode(s.path.parent) == 0o700


def test_empty_file_is_migrated(tmp_path):
    path = tmp_path / "history.db"
    path.touch()
    with Store(path) as s:
        assert s.schema_version == ALL_STEPS
        cid = s.create_conversation().id
        s.add_message(cid, "user", "empty files grow up")
        assert [h.conversation_id for h in s.search("grow")] == [cid]


@pytest.mark.parametrize("version", range(1, len(MIGRATIONS)))
def test_migrates_each_earlier_version_without_losing_data(tmp_path, version):
    path = tmp_path / "history.db"
    db = raw(path)
    migrate(db, MIGRATIONS[:version])
    assert [r[0] for r in db.execute("SELECT name FROM _trit_migrations")] == ALL_STEPS[:version]
    # Rows in the shape of 001, which every later version still accepts.
    db.execute("INSERT INTO conversations (title, model, system, params, created, updated, update_seq) VALUES "
               "('old chat', 'bitnet', 'be brief', '{\"temperature\": 0.5}', '2024-01-01T00:00:00+00:00', "
               "'2024-01-01T00:00:00+00:00', 1)")
    db.execute("INSERT INTO messages (conversation_id, role, content, created, model, finish_reason) VALUES "
               "(1, 'user', 'what is a platypus', '2024-01-01T00:00:00+00:00', '', NULL), "
               "(1, 'assistant', 'an egg laying mammal', '2024-01-01T00:00:01+00:00', 'bitnet', 'cancelled')")
    db.close()

    with Store(path) as s:
        assert s.schema_version == ALL_STEPS
        conversation = s.conversation(1)
        assert (conversation.title, conversation.model, conversation.system, conversation.params,
                conversation.message_count) == ("old chat", "bitnet", "be brief", {"temperature": 0.5}, 2)
        old = s.messages(1)
        assert [(m.role, m.content, m.finish_reason) for m in old] == [
            ("user", "what is a platypus", None), ("assistant", "an egg laying mammal", "cancelled")]
        assert old[1].generated_tokens is None and old[1].model == "bitnet"
        assert [h.message_id for h in s.search("platypus")] == [old[0].id]  # old rows are in the index
        new = s.add_message(1, "assistant", "it is a mammal", generated_tokens=4, decode_tok_s=12.5)
        assert new.id == 3 and new.generated_tokens == 4 and new.decode_tok_s == 12.5
        assert {h.message_id for h in s.search("mammal")} == {2, 3}
    assert fts_rows(path) == 3


def test_a_failed_migration_changes_nothing(tmp_path):
    path = tmp_path / "history.db"
    db = raw(path)
    migrate(db, MIGRATIONS[:1])

    def broken(db):
        db.execute("CREATE TABLE half_done (x)")
        db.execute("INSERT INTO conversations (created, updated) VALUES ('x', 'x')")
        raise sqlite3.OperationalError("step failed midway")

    with pytest.raises(sqlite3.OperationalError):
        migrate(db, [*MIGRATIONS[:1], ("002_broken", broken)])
    assert "half_done" not in db.table_names()
    assert db.execute("SELECT count(*) FROM conversations").fetchone()[0] == 0
    assert [r[0] for r in db.execute("SELECT name FROM _trit_migrations")] == ALL_STEPS[:1]
    db.close()
    with Store(path) as s:
        assert s.schema_version == ALL_STEPS


# ---- bad files: one clear line, nothing changed ----

def test_not_a_database_is_a_store_error_and_is_left_alone(tmp_path):
    path = tmp_path / "history.db"
    content = b"these are my notes, not a database\n" * 200
    path.write_bytes(content)
    with pytest.raises(StoreError) as e:
        Store(path)
    assert "not a usable SQLite database" in str(e.value) and str(path) in str(e.value)
    assert "\n" not in str(e.value)
    assert path.read_bytes() == content


def test_history_from_a_newer_trit_is_refused(tmp_path):
    path = tmp_path / "history.db"
    with Store(path) as s:
        s.add_message(s.create_conversation().id, "user", "keep me")
        s.db.execute("INSERT INTO _trit_migrations (name, applied_at) VALUES ('999_from_the_future', 'x')")
    with pytest.raises(StoreError, match="newer Trit.*999_from_the_future.*upgrade"):
        Store(path)
    db = raw(path)
    assert [r[0] for r in db.execute("SELECT content FROM messages")] == ["keep me"]
    assert [r[0] for r in db.execute("SELECT name FROM _trit_migrations")][-1] == "999_from_the_future"


def test_another_programs_database_is_refused(tmp_path):
    path = tmp_path / "history.db"
    raw(path)["notes"].insert({"text": "not Trit's"})
    with pytest.raises(StoreError, match="not a Trit history"):
        Store(path)
    assert raw(path).table_names() == ["notes"]


def test_a_locked_history_is_a_store_error_and_loses_nothing(tmp_path):
    path = tmp_path / "history.db"
    with Store(path, timeout=0.2) as s:
        cid = s.create_conversation().id
        s.add_message(cid, "user", "before")
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process holding the write lock
        with pytest.raises(StoreError, match="locked by another program"):
            s.add_message(cid, "user", "while locked")
        assert [m.content for m in s.messages(cid)] == ["before"]  # reading still works meanwhile
        other.execute("ROLLBACK")
        other.close()
        s.add_message(cid, "user", "after")
        assert [m.content for m in s.messages(cid)] == ["before", "after"]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write read-only files")
def test_a_read_only_history_is_a_store_error(tmp_path):
    path = tmp_path / "history.db"
    with Store(path) as s:
        cid = s.create_conversation().id
    path.chmod(0o400)
    try:
        with pytest.raises(StoreError, match="read-only|cannot open"):
            with Store(path) as s:
                s.add_message(cid, "user", "cannot be saved")
    finally:
        path.chmod(0o600)


# ---- conversations and messages ----

def test_conversation_round_trip_and_not_found(store):
    c = store.create_conversation(model="bitnet-2b", system="be brief", params={"temperature": 0.7, "seed": 1},
                                  title="  Plans  ")
    got = store.conversation(c.id)
    assert got == c
    assert (got.title, got.model, got.system, got.params, got.message_count) == (
        "Plans", "bitnet-2b", "be brief", {"temperature": 0.7, "seed": 1}, 0)
    assert got.created == got.updated and got.created.endswith("+00:00") and len(got.created) == 25
    with pytest.raises(NotFound, match=r"no conversation 999 — `trit history list`"):
        store.conversation(999)
    with pytest.raises(NotFound):
        store.add_message(999, "user", "to nowhere")
    with pytest.raises(NotFound):
        store.messages(999)

    updated = store.update_conversation(c.id, system="be thorough", params={"top_p": 0.9})
    assert (updated.system, updated.params, updated.model) == ("be thorough", {"top_p": 0.9}, "bitnet-2b")
    store.rename(c.id, "New\nname")
    assert store.conversation(c.id).title == "New name"


def test_first_user_message_becomes_the_title(store):
    cid = store.create_conversation().id
    store.add_message(cid, "system", "you are helpful")
    assert store.conversation(cid).title == ""
    long_line = "Explain   how ternary weights make matrix multiplication cheaper on ordinary laptop CPUs today"
    store.add_message(cid, "user", f"\n\n{long_line}\nand more detail here")
    title = store.conversation(cid).title
    assert title.endswith("…") and len(title) <= TITLE_LENGTH + 1
    assert title.startswith("Explain how ternary weights") and "  " not in title
    store.add_message(cid, "user", "a later question")
    assert store.conversation(cid).title == title

    short = store.create_conversation().id
    store.add_message(short, "user", "Hi there")
    assert store.conversation(short).title == "Hi there"
    store.rename(short, "")  # cleared on purpose: later messages leave it so
    store.add_message(short, "user", "Second question")
    assert store.conversation(short).title == ""
    named = store.create_conversation(title="Mine").id
    store.add_message(named, "user", "does not rename")
    assert store.conversation(named).title == "Mine"


def test_messages_keep_their_stats_and_order(store):
    cid = store.create_conversation(model="m").id
    user = store.add_message(cid, "user", "count to three")
    reply = store.add_message(cid, "assistant", "one two three", model="m", finish_reason="stop", prompt_tokens=10,
                              reused_tokens=4, generated_tokens=3, dropped_messages=0, prefill_tok_s=100.5,
                              decode_tok_s=20.25, time_to_first_token_s=0.125)
    assert [m.id for m in store.messages(cid)] == [user.id, reply.id]
    assert store.messages(cid)[1] == reply
    assert (reply.prompt_tokens, reply.reused_tokens, reply.generated_tokens, reply.dropped_messages,
            reply.prefill_tok_s, reply.decode_tok_s, reply.time_to_first_token_s, reply.finish_reason) == (
        10, 4, 3, 0, 100.5, 20.25, 0.125, "stop")
    assert user.finish_reason is None and user.prompt_tokens is None
    with pytest.raises(TypeError):
        store.add_message(cid, "assistant", "x", speed=3)
    with pytest.raises(ValueError):
        store.add_message(cid, "robot", "x")
    assert len(store.messages(cid)) == 2


def test_most_recently_updated_comes_first(store):
    assert store.last_conversation_id() is None and store.list_conversations() == []
    a = store.create_conversation().id
    b = store.create_conversation().id
    assert store.last_conversation_id() == b
    store.add_message(a, "user", "back to a")  # within the same second: order must still follow the writes
    assert store.last_conversation_id() == a
    c = store.create_conversation().id
    listed = store.list_conversations()
    assert [x.id for x in listed] == [c, a, b]
    assert [x.message_count for x in listed] == [0, 1, 0]
    assert [x.id for x in store.list_conversations(limit=1, offset=1)] == [a]
    store.rename(b, "touched")
    assert store.last_conversation_id() == b


def test_update_message_changes_text_stats_and_index(store):
    cid = store.create_conversation().id
    m = store.add_message(cid, "assistant", "partial answer about walruses", finish_reason="cancelled")
    changed = store.update_message(m.id, content="complete answer about otters", finish_reason="stop",
                                   generated_tokens=5)
    assert (changed.content, changed.finish_reason, changed.generated_tokens) == (
        "complete answer about otters", "stop", 5)
    assert store.search("walruses") == []
    assert [h.message_id for h in store.search("otters")] == [m.id]
    with pytest.raises(NotFound, match="no message 999"):
        store.update_message(999, content="x")
    with pytest.raises(TypeError):
        store.update_message(m.id, conversation_id=cid + 1)


def test_delete_messages_from_keeps_earlier_ones(store):
    cid = store.create_conversation().id
    other = store.create_conversation().id
    ids = [store.add_message(cid, role, f"turn{i} {role}").id
           for i, role in enumerate(["user", "assistant", "user", "assistant"])]
    kept = store.add_message(other, "user", "turn9 elsewhere").id
    assert store.delete_messages_from(cid, ids[2]) == 2
    assert [m.id for m in store.messages(cid)] == ids[:2]
    assert store.search("turn2") == [] and store.search("turn3") == []
    assert [h.message_id for h in store.search("turn9")] == [kept]
    with pytest.raises(NotFound):
        store.delete_messages_from(cid, kept)  # a message of another conversation
    assert len(store.messages(other)) == 1
    assert store.add_message(cid, "user", "edited").id > kept  # ids are never handed out twice


def test_deleting_conversations_cascades_to_messages_and_index(store, tmp_path):
    a = store.create_conversation().id
    b = store.create_conversation().id
    for cid in (a, b):
        store.add_message(cid, "user", f"penguin question {cid}")
        store.add_message(cid, "assistant", f"penguin answer {cid}")
    store.delete_conversation(a)
    with pytest.raises(NotFound):
        store.conversation(a)
    with pytest.raises(NotFound):
        store.delete_conversation(a)
    assert {h.conversation_id for h in store.search("penguin")} == {b}
    assert store.db.execute("SELECT count(*) FROM messages").fetchone()[0] == 2
    assert fts_rows(store.path) == 2

    store.create_conversation()
    assert store.delete_all() == 2
    assert store.list_conversations() == [] and store.search("penguin") == []
    assert store.db.execute("SELECT count(*) FROM messages").fetchone()[0] == 0
    assert fts_rows(store.path) == 0
    assert store.create_conversation().id > b


# ---- search ----

def test_search_finds_words_best_match_first(store):
    cid = store.create_conversation(title="Zoo").id
    one = store.add_message(cid, "user", "Tell me about the capybara, the largest rodent.")
    two = store.add_message(cid, "assistant", "Capybara capybara capybara: they are calm.")
    store.add_message(cid, "user", "and hamsters?")
    hits = store.search("CAPYBARA")
    assert [h.message_id for h in hits] == [two.id, one.id]
    assert (hits[0].conversation_id, hits[0].title, hits[0].role, hits[0].created) == (
        cid, "Zoo", "assistant", two.created)
    assert "[Capybara]" in hits[0].snippet
    assert [h.message_id for h in store.search("largest rodent")] == [one.id]
    assert [h.message_id for h in store.search('"the largest rodent"')] == [one.id]  # a quoted phrase
    assert store.search("rodent hamsters") == []  # every word must match
    assert len(store.search("capybara", limit=1)) == 1
    assert store.search("") == [] and store.search("   ") == []


@pytest.mark.parametrize("text, found", [
    ('"', False), ('""', False), ('"unbalanced', False), ("it's", False), ("*", False), ("capy*", False),
    ("-", False), ("-capybara", True), ("AND", False), ("capybara AND", False), ("OR NOT", False), ("(", False),
    ("capybara)", True), ("NEAR(capybara notes)", False), ("^capybara", True), ("content:capybara", False),
    ("{x}", False), ("\\", False), ("C++", True), ("🦫", True), ('capybara"s"', True), ("capybara's", True),
])
def test_search_accepts_any_text(store, text, found):
    cid = store.create_conversation().id
    store.add_message(cid, "user", "capybara's C++ notes 🦫")
    assert [h.conversation_id for h in store.search(text)] == ([cid] if found else [])


def test_search_treats_operators_as_words(store):
    cid = store.create_conversation().id
    found = store.add_message(cid, "user", "cats AND dogs").id
    store.add_message(cid, "user", "cats without the other")
    assert [h.message_id for h in store.search("cats AND dogs")] == [found]
    assert [h.message_id for h in store.search("(dogs")] == [found]


# ---- exports ----

def test_to_json_is_the_stored_shape(store):
    cid = store.create_conversation(model="bitnet", system="be brief", params={"seed": 3}).id
    store.add_message(cid, "user", "hello")
    store.add_message(cid, "assistant", "hi", model="bitnet", finish_reason="stop", generated_tokens=1)
    data = json.loads(json.dumps(store.to_json(cid)))
    assert list(data) == ["conversation", "messages"]
    assert list(data["conversation"]) == ["id", "title", "model", "system", "params", "created", "updated",
                                          "message_count"]
    assert data["conversation"]["params"] == {"seed": 3} and data["conversation"]["message_count"] == 2
    assert [list(m) for m in data["messages"]] == [MESSAGE_FIELDS, MESSAGE_FIELDS]
    assert MESSAGE_FIELDS == ["id", "conversation_id", "role", "content", "created", "model", "finish_reason",
                              "prompt_tokens", "reused_tokens", "generated_tokens", "dropped_messages",
                              "prefill_tok_s", "decode_tok_s", "time_to_first_token_s"]
    assert data["messages"][1]["generated_tokens"] == 1 and data["messages"][0]["finish_reason"] is None


def test_to_markdown(store):
    cid = store.create_conversation(model="bitnet-2b", system="Answer in one line.").id
    store.add_message(cid, "user", "Why is the sky blue?")
    store.add_message(cid, "assistant", "Rayleigh scattering.", finish_reason="stop")
    store.add_message(cid, "user", "More?")
    store.add_message(cid, "assistant", "Shorter wavelengths scat", finish_reason="cancelled")
    text = store.to_markdown(cid)
    lines = text.splitlines()
    created = store.conversation(cid).created
    assert lines[0] == "# Why is the sky blue?"
    assert lines[2] == f"*bitnet-2b · {created[:10]} {created[11:16]} UTC*"
    assert text.index("**System**") < text.index("Answer in one line.") < text.index("**You**")
    assert text.count("**You**") == 2 and text.count("**Trit**") == 2
    assert text.count("*(stopped)*") == 1 and text.index("Shorter wavelengths scat") < text.index("*(stopped)*")
    assert text.endswith("*(stopped)*\n")
    untitled = store.create_conversation().id
    assert store.to_markdown(untitled).startswith(f"# Conversation {untitled}\n")


# ---- two Trit processes ----

def test_two_processes_writing_at_once_lose_nothing(tmp_path):
    path = tmp_path / "history.db"
    per_writer = 200
    with Store(path) as s:
        shared = s.create_conversation(title="shared").id
    writers = [subprocess.Popen([sys.executable, str(WRITER), str(path), str(per_writer), tag, str(shared)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for tag in ("alpha", "beta")]
    try:
        for w in writers:
            assert w.stdout.readline().strip() == "ready", w.stderr.read()
        for w in writers:  # both start writing together
            w.stdin.write("go\n")
            w.stdin.flush()
        results = [w.communicate(timeout=60) for w in writers]
    finally:
        for w in writers:
            if w.poll() is None:
                w.kill()
    assert [w.returncode for w in writers] == [0, 0], [err for _, err in results]
    own = [int(out.split()[-1]) for out, _ in results]

    with Store(path) as s:
        shared_texts = [m.content for m in s.messages(shared)]
        assert len(shared_texts) == per_writer
        for tag, cid in zip(("alpha", "beta"), own):
            expected = [f"{tag} message {i}" for i in range(per_writer)]
            mine = [t for t in shared_texts if t.startswith(tag)] + [m.content for m in s.messages(cid)]
            assert sorted(mine) == sorted(expected)
            assert len(s.search(tag, limit=10 * per_writer)) == per_writer
        assert len(s.search("message", limit=10 * per_writer)) == 2 * per_writer
        assert s.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
