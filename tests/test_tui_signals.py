"""The chat app as a process in a real terminal (a pseudo-terminal): SIGTERM, or SIGHUP when the terminal is closed,
while a reply streams keeps what was written, marked stopped, as Esc and Ctrl+Q do (issue 17, item 6)."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time

import pytest
from network_guard import offline_env
from test_chat_repl import end_terminal, read_until
from test_cli import trit_command

pytestmark = pytest.mark.skipif(os.name != "posix", reason="pseudo-terminals and SIGHUP are POSIX")


@pytest.fixture
def home(tmp_path):
    return tmp_path / "home"


def stop_app_mid_reply(home, make_model, tmp_path, signum: int, close_terminal: bool) -> tuple[int, dict]:
    """The chat app streaming a long reply, then signum (after closing the terminal first, if close_terminal);
    returns (exit status, the stored reply)."""
    import pty

    slow = make_model("small", seed=1)
    env = offline_env({**os.environ, "TRIT_HOME": str(home), "TERM": "xterm-256color", "COLUMNS": "100",
                       "LINES": "30"})
    config = home / "config"
    config.mkdir(parents=True)
    (config / "config.toml").write_text(f'default_model = "{slow}"\ntemperature = 0.0\nmax_tokens = 3000\n')
    pid, fd = pty.fork()
    if pid == 0:  # the child: the app, in the pseudo-terminal
        os.chdir(tmp_path)
        argv = trit_command()
        os.execvpe(argv[0], argv, env)
    try:
        seen = bytearray()
        read_until(fd, b"Enter sends", 60, seen)  # the message box, ready
        os.write(fd, b"Write at length.\r")
        read_until(fd, b"Esc stops", 60, seen)  # the message box says so while a reply is written
        time.sleep(2)  # some text written
        if close_terminal:
            os.close(fd)
            fd = -1
        os.kill(pid, signum)
        deadline = time.monotonic() + 60
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            assert time.monotonic() < deadline, "the app did not leave within 60 s of the signal"
            if fd >= 0 and select.select([fd], [], [], 0.2)[0]:
                try:
                    os.read(fd, 65536)  # keep the terminal drained so the app never blocks writing to it
                except OSError:
                    pass
            else:
                time.sleep(0.05)
    finally:
        end_terminal(pid, fd)
    r = subprocess.run(trit_command() + ["history", "show", "1", "--json"], capture_output=True, text=True,
                       env=offline_env({**os.environ, "TRIT_HOME": str(home)}), timeout=60)
    assert r.returncode == 0, r.stderr
    return status, json.loads(r.stdout)["messages"][-1]


@pytest.mark.parametrize("signum, close_terminal", [(signal.SIGTERM, False), (signal.SIGHUP, True)],
                         ids=["SIGTERM", "terminal-closed"])
def test_a_signal_mid_reply_keeps_what_was_written(home, make_model, tmp_path, signum, close_terminal):
    status, stored = stop_app_mid_reply(home, make_model, tmp_path, signum, close_terminal)
    assert stored["role"] == "assistant" and stored["content"], stored
    assert stored["finish_reason"] == "cancelled" and 0 < stored["generated_tokens"] < 3000, stored
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 128 + signum, status
