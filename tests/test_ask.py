"""`trit ask` and `trit history` as a user runs them: real processes, a real history file, the real engine on a
small synthetic model, and the offline guard in every process."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time

import pytest
from network_guard import offline_env
from test_cli import trit_command


@pytest.fixture(scope="module")
def model(make_model):
    return make_model("tiny", seed=3)


@pytest.fixture
def home(tmp_path):
    return tmp_path / "home"


@pytest.fixture
def trit(home, tmp_path):
    def run(*args, stdin: str | None = None, check: bool = False):
        r = subprocess.run(trit_command() + [str(a) for a in args], input=stdin if stdin is not None else "",
                           capture_output=True, text=True, cwd=tmp_path, timeout=300,
                           env=offline_env({**os.environ, "TRIT_HOME": str(home)}))
        if check:
            assert r.returncode == 0, r.stderr
        return r

    return run


def history_json(trit, cid) -> dict:
    return json.loads(trit("history", "show", cid, "--json", check=True).stdout)


def ask_json(trit, model, *args, stdin=None) -> dict:
    r = trit("ask", "-m", model, "--max-tokens", 12, "--seed", 1, "--json", *args, stdin=stdin, check=True)
    return json.loads(r.stdout)


def test_arguments_and_stdin_make_one_prompt_and_json_has_the_logged_shape(trit, model):
    out = ask_json(trit, model, "summarise", "this", stdin="notes about tides\n")
    shown = history_json(trit, out["conversation_id"])
    assert [m["role"] for m in shown["messages"]] == ["user", "assistant"]
    assert shown["messages"][0]["content"] == "notes about tides\n\nsummarise this"
    assert shown["messages"][1] == out  # --json prints exactly the stored message
    assert out["generated_tokens"] <= 12 and out["prompt_tokens"] > 0 and out["reused_tokens"] == 0
    assert out["finish_reason"] in ("stop", "length") and out["decode_tok_s"] >= 0
    assert shown["conversation"]["title"] == "summarise this"  # the question titles it, not the piped file


def test_same_seed_same_answer(trit, model):
    a = ask_json(trit, model, "Name a river.", "--no-log")
    b = ask_json(trit, model, "Name a river.", "--no-log")
    assert a["content"] == b["content"] and a["generated_tokens"] == b["generated_tokens"]


def test_continue_and_cid_extend_the_conversation(trit, model):
    first = ask_json(trit, model, "First question")
    other = ask_json(trit, model, "Another conversation")
    cont = ask_json(trit, model, "-c", "Follow-up on the latest")
    assert cont["conversation_id"] == other["conversation_id"]
    by_id = ask_json(trit, model, "--cid", first["conversation_id"], "Back to the first")
    assert by_id["conversation_id"] == first["conversation_id"]
    roles = [(m["role"], m["content"]) for m in history_json(trit, first["conversation_id"])["messages"]]
    assert [r for r, _ in roles] == ["user", "assistant", "user", "assistant"]
    assert roles[2][1] == "Back to the first"
    # the whole earlier conversation went into the prompt
    assert by_id["prompt_tokens"] > first["prompt_tokens"] + first["generated_tokens"]


def test_no_log_writes_nothing(trit, model, home):
    r = trit("ask", "-m", model, "--max-tokens", 4, "--no-log", "Private question")
    assert r.returncode == 0, r.stderr
    assert not (home / "data" / "history.db").exists()
    ask_json(trit, model, "Logged question")
    before = history_json(trit, 1)
    r = trit("ask", "-m", model, "--max-tokens", 4, "--no-log", "-c", "Private follow-up")
    assert r.returncode == 0, r.stderr
    assert history_json(trit, 1) == before


@pytest.mark.parametrize("args, stdin, code, message", [
    ((), "", 2, "nothing to ask"),
    (("--cid", 999, "hello"), None, 1, "no conversation 999"),
    (("-c", "hello"), None, 1, "no conversation to continue"),
    (("-m", "no-such-model", "hello"), None, 1, "no-such-model"),
])
def test_mistakes_give_one_line_and_an_exit_code(trit, model, args, stdin, code, message):
    r = trit("ask", *(args if "-m" in args else ("-m", model) + args), stdin=stdin)
    assert r.returncode == code, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
    if code == 1:
        assert len(r.stderr.strip().splitlines()) == 1


def test_a_message_longer_than_the_context_is_refused_and_not_kept(trit, model, home):
    r = trit("ask", "-m", model, "words " * 5000)
    assert r.returncode == 1 and "does not fit the context" in r.stderr and "Traceback" not in r.stderr
    listed = json.loads(trit("history", "list", "--json", check=True).stdout)
    assert all(c["message_count"] == 0 for c in listed)


def stop_mid_answer(home, make_model, tmp_path, signum, close_stdout=False):
    """`trit ask` streaming a long answer, then signum (with stdout's reader gone first, if close_stdout); returns
    (exit code, what was shown, stderr, the stored reply)."""
    slow = make_model("small", seed=1)
    proc = subprocess.Popen(trit_command() + ["ask", "-m", str(slow), "--temperature", "0", "--max-tokens", "3000",
                                              "Write at length."],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path,
                            env=offline_env({**os.environ, "TRIT_HOME": str(home)}))
    try:
        shown = proc.stdout.read1(64)  # the answer has started streaming
        assert shown, proc.stderr.read().decode()
        time.sleep(0.2)
        if close_stdout:  # the terminal is gone: nobody reads what is printed any more
            proc.stdout.close()
        proc.send_signal(signum)
        rest, err = (b"", proc.stderr.read()) if close_stdout else proc.communicate(timeout=60)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert b"Traceback" not in err and b"Exception ignored" not in err, err.decode()
    r = subprocess.run(trit_command() + ["history", "show", "1", "--json"], capture_output=True, text=True,
                       env=offline_env({**os.environ, "TRIT_HOME": str(home)}), timeout=60)
    return proc.returncode, (shown + rest).decode(), err.decode(), json.loads(r.stdout)["messages"][-1]


def test_ctrl_c_stops_the_answer_and_keeps_it(make_model, home, tmp_path):
    code, shown, err, stored = stop_mid_answer(home, make_model, tmp_path, signal.SIGINT)
    assert code == 130, err
    assert "stopped" in err and "Traceback" not in err
    assert stored["finish_reason"] == "cancelled" and 0 < stored["generated_tokens"] < 3000
    assert stored["content"] and shown.rstrip("\n") == stored["content"]


def test_history_list_search_export_and_rm(trit, model, tmp_path):
    a = ask_json(trit, model, "Tell me about lighthouses")
    b = ask_json(trit, model, "Tell me about glaciers")
    listed = trit("history", "list", check=True).stdout
    assert "lighthouses" in listed and "glaciers" in listed
    assert listed.index("glaciers") < listed.index("lighthouses")  # newest first
    hits = json.loads(trit("history", "search", "glaciers", "--json", check=True).stdout)
    assert [h["conversation_id"] for h in hits] == [b["conversation_id"]]
    assert trit("history", "search", 'odd "query* (', check=True).returncode == 0
    md = tmp_path / "a.md"
    trit("history", "export", a["conversation_id"], "--format", "md", "-o", md, check=True)
    assert "lighthouses" in md.read_text()
    exported = json.loads(trit("history", "export", a["conversation_id"], "--format", "json", check=True).stdout)
    assert exported == history_json(trit, a["conversation_id"])
    assert trit("history", "rm", 12345).returncode == 1
    trit("history", "rm", a["conversation_id"], "--yes", check=True)  # no terminal to ask on: -y
    r = trit("history", "show", a["conversation_id"])
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert trit("history", "rm", "--all").returncode != 0  # asks first; no answer on stdin aborts
    trit("history", "rm", "--all", "--yes", check=True)
    assert json.loads(trit("history", "list", "--json", check=True).stdout) == []


def test_history_file_is_private(trit, model, home):
    ask_json(trit, model, "secret")
    db = home / "data" / "history.db"
    assert db.stat().st_mode & 0o777 == 0o600
    with sqlite3.connect(db) as c:  # a plain SQLite file anyone's tools can read
        assert c.execute("select count(*) from messages").fetchone()[0] == 2


def test_a_conversations_stored_sampling_settings_reach_the_model(trit, model, home, monkeypatch):
    """Every key of SamplingParams that a conversation stores is applied when it continues, and a key it does not
    know (an older spelling, `repeat_penalty`) is left out rather than ending in a traceback. The app once listed
    `repeat_penalty`, so a stored `repetition_penalty` was dropped and `repeat_penalty` raised a TypeError."""
    from trit import engine
    from trit.app.service import Service
    from trit.app.store import Store

    cid = ask_json(trit, model, "First")["conversation_id"]
    with sqlite3.connect(home / "data" / "history.db") as c:
        c.execute("update conversations set params = ? where id = ?",
                  (json.dumps({"repetition_penalty": 1.3, "top_k": 7, "repeat_penalty": 2.0}), cid))
    r = trit("ask", "-c", "--max-tokens", 4, "Next")
    assert r.returncode == 0 and r.stderr == ""

    monkeypatch.setenv("TRIT_HOME", str(home))
    store = Store()
    try:
        dialogue = Service(store).open(cid)
        with engine.load(model, threads=1) as m:
            params = Service(store).params_for(dialogue, m)
    finally:
        store.close()
    assert (params.repetition_penalty, params.top_k) == (1.3, 7)
