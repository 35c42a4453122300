"""Issue 16, "missing next to the anchors", command-line side: `trit chat` as a plain-terminal conversation (`llm
chat`, `ollama run`), system prompts saved by name (`-t NAME`, as llm's templates), and `trit ask -f FILE` (llm's
fragments). Through the installed `trit`: piped stdin, and a pseudo-terminal where a person would type."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import stat
import time

import pytest
import test_hostile_input
from network_guard import offline_env
from test_cli import trit_command
from test_hostile_input import conversations, one_line

home, trit = test_hostile_input.home, test_hostile_input.trit  # the fixtures: TRIT_HOME, the installed trit in it

DEMO = ("-m", "demo", "--seed", "1", "--max-tokens", "6")


def shown(trit, cid) -> dict:
    r = trit("history", "show", cid, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def no_traceback(r):
    assert b"Traceback" not in r.stderr, r.stderr.decode()


# ---- saved system prompts ------------------------------------------------------------------------------------------
def test_prompts_are_saved_listed_shown_and_removed_in_a_private_file(trit, home):
    r = trit("prompts", "save", "pirate", "Answer as a pirate would.")
    assert r.returncode == 0, r.stderr
    assert trit("prompts", "save", "terse", stdin=b"Answer in one line.\nNo lists.\n").returncode == 0
    listed = trit("prompts", "list").stdout.decode()
    assert "pirate" in listed and "Answer as a pirate would." in listed and "terse" in listed
    assert json.loads(trit("prompts", "list", "--json").stdout) == [
        {"name": "pirate", "text": "Answer as a pirate would."},
        {"name": "terse", "text": "Answer in one line.\nNo lists."}]
    assert trit("prompts", "show", "terse").stdout.decode() == "Answer in one line.\nNo lists.\n"
    (saved,) = (home / "config").glob("prompts*")
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600  # a system prompt may say things about its user
    one_line(trit("prompts", "rm", "pirate"), "-y")  # no terminal to ask on: nothing deleted
    assert trit("prompts", "rm", "pirate", "-y").returncode == 0
    assert [p["name"] for p in json.loads(trit("prompts", "list", "--json").stdout)] == ["terse"]


def test_ask_t_and_chat_t_use_the_saved_prompt_as_the_system_prompt(trit):
    assert trit("prompts", "save", "pirate", "Answer as a pirate would.").returncode == 0
    r = trit("ask", *DEMO, "-t", "pirate", "hi")
    assert r.returncode == 0, r.stderr
    r = trit("chat", *DEMO, "-t", "pirate", stdin=b"hello\n")
    assert r.returncode == 0, r.stderr
    systems = [shown(trit, c["id"])["conversation"]["system"] for c in conversations(trit)]
    assert systems == ["Answer as a pirate would."] * 2


def test_threads_is_long_only_as_llm_has_no_t_for_it(trit):
    r = trit("ask", *DEMO, "--threads", "1", "-n", "hi")
    assert r.returncode == 0, r.stderr
    one_line(trit("ask", *DEMO, "-t", "2", "hi"), "no saved prompt '2'")  # -t is a prompt's name now


def test_an_unknown_prompt_name_is_one_line_listing_the_names(trit):
    one_line(trit("ask", *DEMO, "-t", "pirate", "hi"), "no saved prompt 'pirate'", "trit prompts save")
    for name in ("terse", "formal"):
        assert trit("prompts", "save", name, "Be " + name).returncode == 0
    for command in (("ask", "hi"), ("chat",)):
        one_line(trit(*command, *DEMO, "-t", "pirat"), "'pirat'", "formal, terse")
    one_line(trit("prompts", "show", "pirat"), "formal, terse")
    assert conversations(trit) == []


@pytest.mark.parametrize("args, words", [(("save", "../x", "text"), "name"), (("save", "x", " "), "empty"),
                                         (("ask", "-s", "a", "-t", "x", "hi"), "either")])
def test_prompt_mistakes_are_one_line(trit, args, words):
    if args[0] == "ask":
        assert trit("prompts", "save", "x", "text").returncode == 0
        r = trit(*args)
    else:
        r = trit("prompts", *args)
    assert r.returncode in (1, 2) and words in r.stderr.decode(), r.stderr
    assert len(r.stderr.decode().strip().splitlines()) == 1
    no_traceback(r)


def test_a_damaged_prompts_file_is_one_line_naming_it_and_is_left_alone(trit, home):
    folder = home / "config"
    folder.mkdir(parents=True)
    (folder / "prompts.toml").write_bytes(b"pirate = 3\n")
    one_line(trit("ask", *DEMO, "-t", "pirate", "hi"), str(folder / "prompts.toml"), "pirate")
    one_line(trit("prompts", "save", "terse", "Be terse"), str(folder / "prompts.toml"))
    assert (folder / "prompts.toml").read_bytes() == b"pirate = 3\n"


# ---- trit ask -f FILE ------------------------------------------------------------------------------------------------
def test_files_come_before_the_question_each_with_its_name(trit, tmp_path):
    (tmp_path / "tides.txt").write_text("High water at 6:12.\n")
    (tmp_path / "moon.md").write_text("# Moon\nFull on Friday.\n")
    r = trit("ask", *DEMO, "-f", "tides.txt", "--fragment", "moon.md", "When", "to", "sail?")
    assert r.returncode == 0, r.stderr
    (c,) = conversations(trit)
    assert c["title"] == "When to sail?"
    assert shown(trit, c["id"])["messages"][0]["content"] == \
        "tides.txt:\n\nHigh water at 6:12.\n\nmoon.md:\n\n# Moon\nFull on Friday.\n\nWhen to sail?"


def test_a_file_alone_is_a_question(trit, tmp_path):
    (tmp_path / "q.txt").write_text("What is a ternary weight?\n")
    r = trit("ask", *DEMO, "-f", "q.txt")
    assert r.returncode == 0, r.stderr
    assert conversations(trit)[0]["title"] == "q.txt"


def test_a_file_that_is_not_utf8_is_refused_naming_it_and_the_byte(trit, tmp_path):
    (tmp_path / "good.txt").write_text("fine\n")
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9\n")
    one_line(trit("ask", *DEMO, "-f", "good.txt", "-f", "latin1.txt", "hi"), "latin1.txt", "not UTF-8", "byte 3",
             "0xe9")
    assert conversations(trit) == []


@pytest.mark.parametrize("what", ["folder", "fifo", "missing"])
def test_a_file_that_cannot_be_read_as_text_is_one_line(trit, tmp_path, what):
    path = tmp_path / "thing"
    if what == "folder":
        path.mkdir()
    elif what == "fifo":
        if not hasattr(os, "mkfifo"):
            pytest.skip("no named pipes here")
        os.mkfifo(path)  # opening it would wait for a writer forever
    r = trit("ask", *DEMO, "-f", "thing", "hi")
    assert r.returncode in (1, 2) and "thing" in r.stderr.decode(), r.stderr
    assert len(r.stderr.decode().strip().splitlines()) == 1
    no_traceback(r)
    assert conversations(trit) == []


def test_a_file_too_large_for_the_context_is_refused_before_anything_is_sent_or_stored(trit, tmp_path):
    from trit.assets import DEMO_MODEL
    from trit.engine.runtime.tokenizer import Tokenizer

    text = "".join(f"line {i} of a long log file\n" for i in range(800))
    (tmp_path / "log.txt").write_text(text)
    tokens = len(Tokenizer.from_folder(DEMO_MODEL).encode(text))
    assert tokens > 4096
    assert trit("ask", *DEMO, "first").returncode == 0
    before = shown(trit, 1)
    for continuing in ((), ("-c",)):
        line = one_line(trit("ask", *DEMO, *continuing, "-f", "log.txt", "Summarise"), "log.txt",
                        f"{tokens} tokens", "4096")
        fit = int(re.search(r"(\d+) fit", line).group(1))
        assert 4096 - 6 - 40 < fit < 4096 - 6  # the reply's room (--max-tokens) and the template's frame are kept
    assert conversations(trit) == [before["conversation"] | {"message_count": 2}]
    assert shown(trit, 1) == before


# ---- trit chat, piped ------------------------------------------------------------------------------------------------
def test_chat_piped_keeps_one_conversation_and_a_follow_up_costs_only_its_new_tokens(trit):
    r = trit("chat", *DEMO, stdin=b"Who is Mr Darcy?\nAnd his friend?\n")
    assert r.returncode == 0, r.stderr
    (c,) = conversations(trit)
    messages = shown(trit, c["id"])["messages"]
    assert [(m["role"], m["content"]) for m in messages[::2]] == [("user", "Who is Mr Darcy?"),
                                                                  ("user", "And his friend?")]
    first, second = messages[1], messages[3]
    assert first["content"] and first["content"] in r.stdout.decode() and second["content"] in r.stdout.decode()
    # the KV cache kept across turns: the whole first turn is reused, only the follow-up is prefilled
    assert second["reused_tokens"] >= first["prompt_tokens"] + first["generated_tokens"] - 1 > 0, second
    assert c["title"] == "Who is Mr Darcy?"


def test_chat_continues_with_c_and_cid_and_no_log_keeps_nothing(trit):
    assert trit("ask", *DEMO, "first").returncode == 0
    assert trit("ask", *DEMO, "second").returncode == 0
    assert trit("chat", *DEMO, "-c", stdin=b"more of the second\n").returncode == 0
    assert trit("chat", *DEMO, "--cid", "1", stdin=b"more of the first\n").returncode == 0
    before = conversations(trit)
    assert [c["message_count"] for c in before] == [4, 4]
    r = trit("chat", *DEMO, "-n", "-c", stdin=b"private\n")
    assert r.returncode == 0 and r.stdout.strip(), r.stderr
    r = trit("chat", *DEMO, "-n", stdin=b"private too\n")
    assert r.returncode == 0 and r.stdout.strip(), r.stderr
    assert conversations(trit) == before


def test_chat_multi_line_input_between_multi_and_end(trit):
    r = trit("chat", *DEMO, stdin=b"!multi\nfirst line\n\nthird line\n!end\nexit\nnot sent\n")
    assert r.returncode == 0, r.stderr
    (c,) = conversations(trit)
    assert [m["content"] for m in shown(trit, c["id"])["messages"] if m["role"] == "user"] == \
        ["first line\n\nthird line"]


def test_chat_refuses_a_line_that_is_not_utf8_or_too_long_in_one_line_and_carries_on(trit):
    r = trit("chat", *DEMO, stdin=b"caf\xe9\n" + b"words " * 5000 + b"\n\nhello\n")
    assert r.returncode == 0, r.stderr
    no_traceback(r)
    errors = [line for line in r.stderr.decode().splitlines() if line.startswith("trit: ")]
    assert len(errors) == 2, r.stderr
    assert "not UTF-8" in errors[0] and "byte 3" in errors[0] and "0xe9" in errors[0]
    assert "does not fit the context" in errors[1]
    (c,) = conversations(trit)
    assert [m["content"] for m in shown(trit, c["id"])["messages"] if m["role"] == "user"] == ["hello"]


def test_chat_with_nothing_piped_in_leaves_and_stores_nothing(trit):
    r = trit("chat", *DEMO)
    assert r.returncode == 0, r.stderr
    assert conversations(trit) == []


# ---- trit chat in a terminal -----------------------------------------------------------------------------------------
def read_until(fd: int, wanted: bytes, timeout: float, seen: bytearray, after: int = 0) -> None:
    """Read what the terminal shows into `seen` until `wanted` appears past `after`."""
    end = time.monotonic() + timeout
    while seen.find(wanted, after) < 0:
        left = end - time.monotonic()
        assert left > 0, f"{wanted!r} not shown in {timeout} s; last shown: {bytes(seen[-2000:])!r}"
        if select.select([fd], [], [], min(left, 0.5))[0]:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the process left and the terminal closed
                break
            if not chunk:
                break
            seen += chunk


def in_terminal(home, tmp_path, *args, stdout_to=None):
    """`trit chat ARGS` in a pseudo-terminal (its stdout into the file stdout_to, if given); (pid, terminal)."""
    import pty

    env = offline_env({**os.environ, "TRIT_HOME": str(home), "TERM": "xterm-256color"})
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(tmp_path)
        if stdout_to is not None:
            out = os.open(stdout_to, os.O_WRONLY | os.O_CREAT, 0o600)
            os.dup2(out, 1)
        argv = trit_command() + ["chat", *args]
        os.execvpe(argv[0], argv, env)
    return pid, fd


def wait_exit(pid: int, fd: int, seen: bytearray, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        assert time.monotonic() < deadline, f"trit chat did not leave; last shown: {bytes(seen[-2000:])!r}"
        if select.select([fd], [], [], 0.05)[0]:
            try:
                seen += os.read(fd, 65536)
            except OSError:
                pass


def end_terminal(pid: int, fd: int) -> None:
    """Kill what still runs in the pseudo-terminal (nothing, when the test went well) and close it."""
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass
    if fd >= 0:
        os.close(fd)


pty_only = pytest.mark.skipif(os.name != "posix", reason="pseudo-terminals are POSIX")


@pty_only
def test_in_a_terminal_ctrl_c_stops_the_answer_keeps_it_and_a_second_ctrl_c_leaves(home, tmp_path, make_model,
                                                                                   trit):
    slow = make_model("small", seed=1)
    pid, fd = in_terminal(home, tmp_path, "-m", str(slow), "--temperature", "0", "--max-tokens", "3000")
    seen = bytearray()
    try:
        read_until(fd, b"> ", 60, seen)
        os.write(fd, b"Write at length.\r")
        start = len(seen)
        read_until(fd, b"Write at length.\r\n", 30, seen, after=start)
        answer_starts, deadline = len(seen), time.monotonic() + 60
        while len(seen) < answer_starts + 40:  # some of the answer shown (the model loads first)
            assert time.monotonic() < deadline, bytes(seen)
            if select.select([fd], [], [], 0.5)[0]:
                seen += os.read(fd, 65536)
        os.write(fd, b"\x03")  # Ctrl-C: the terminal sends SIGINT
        read_until(fd, b"stopped", 30, seen, after=start)
        read_until(fd, b"\n> ", 30, seen, after=seen.find(b"stopped", start))  # and the conversation goes on
        # A SIGINT that lands after the prompt is drawn but before CPython's readline waits for a key is noticed only
        # at the next key (its select() is not interrupted): a person never types that fast, a test can. So: a pause
        # as a person's, and the Ctrl-C again if that moment was still missed on a loaded machine.
        for _ in range(3):
            time.sleep(0.5)
            os.write(fd, b"\x03")
            try:
                code = wait_exit(pid, fd, seen, timeout=5)
                break
            except AssertionError:
                continue
        else:
            code = wait_exit(pid, fd, seen)
    finally:
        end_terminal(pid, fd)
    assert code == 130, bytes(seen)
    assert b"Traceback" not in seen, bytes(seen)
    (c,) = conversations(trit)
    reply = shown(trit, c["id"])["messages"][-1]
    assert reply["finish_reason"] == "cancelled" and 0 < reply["generated_tokens"] < 3000, reply


@pty_only
@pytest.mark.parametrize("leave, code", [(b"exit\r", 0), (b"quit\r", 0), (b"\x04", 0)],
                         ids=["exit", "quit", "ctrl-d"])
def test_in_a_terminal_two_turns_then_leave(home, tmp_path, trit, leave, code):
    pid, fd = in_terminal(home, tmp_path, *DEMO)
    seen = bytearray()
    try:
        read_until(fd, b"> ", 60, seen)
        for question in (b"Who is Mr Darcy?", b"words " * 5000, b"And his friend?"):
            mark = len(seen)
            os.write(fd, question + b"\r")
            read_until(fd, b"\n> ", 60, seen, after=mark)  # answered (or refused), and asked for the next
        os.write(fd, leave)
        status = wait_exit(pid, fd, seen)
    finally:
        end_terminal(pid, fd)
    assert status == code, bytes(seen)
    assert b"Traceback" not in seen and b"does not fit the context" in seen, bytes(seen)
    (c,) = conversations(trit)
    messages = shown(trit, c["id"])["messages"]
    assert [m["content"] for m in messages if m["role"] == "user"] == ["Who is Mr Darcy?", "And his friend?"]
    assert messages[3]["reused_tokens"] > 0


@pty_only
def test_in_a_terminal_with_answers_to_a_file_a_line_that_is_not_utf8_is_refused(home, tmp_path, trit):
    """Typed bytes reach Trit as they are when it does not edit the line itself (readline, on a terminal, drops
    what is not UTF-8 as it is typed, and shows the line without it)."""
    pid, fd = in_terminal(home, tmp_path, *DEMO, stdout_to=tmp_path / "answers.txt")
    seen = bytearray()
    try:
        read_until(fd, b"> ", 60, seen)
        for question in (b"caf\xe9", b"Who is Mr Darcy?"):
            mark = len(seen)
            os.write(fd, question + b"\n")
            read_until(fd, b"> ", 60, seen, after=mark + len(question) + 1)
        os.write(fd, b"\x04")
        status = wait_exit(pid, fd, seen)
    finally:
        end_terminal(pid, fd)
    assert status == 0 and b"Traceback" not in seen, bytes(seen)
    assert b"not UTF-8 text (byte 3 is 0xe9)" in seen, bytes(seen)
    (c,) = conversations(trit)
    messages = shown(trit, c["id"])["messages"]
    assert [m["content"] for m in messages if m["role"] == "user"] == ["Who is Mr Darcy?"]
    assert messages[1]["content"] in (tmp_path / "answers.txt").read_text()
