"""Where Trit keeps things, when that place turns hostile (issue 17): a full disk, a read-only data folder, files
others could read, a turn killed with kill -9, another process holding the history's write lock. Through the installed
`trit`, as a user meets it: reads still work, a write that fails says what is full or read-only and where, and nothing
already saved is lost."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import test_hostile_input
from network_guard import offline_env
from test_ask import stop_mid_answer
from test_chat_repl import shown as conversation_json
from test_cli import trit_command
from test_hostile_input import one_line

from trit.assets import DEMO_MODEL

home, trit = test_hostile_input.home, test_hostile_input.trit  # the fixtures: TRIT_HOME, and the installed trit in it


class Namespace:
    """A user and mount namespace of the test's own, held open by a sleeping process: a tmpfs or a read-only bind
    mounted in it is seen by every command the test runs inside (nsenter) and by nothing else on the machine.
    `unshare --user --map-root-user` needs no root where the kernel allows unprivileged user namespaces."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.holder = subprocess.Popen(["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private",
                                        "sleep", "3600"], stderr=subprocess.PIPE)
        ours = os.readlink("/proc/self/ns/mnt")
        deadline = time.monotonic() + 10
        while os.readlink(f"/proc/{self.holder.pid}/ns/mnt") == ours:  # until unshare has made the namespace
            if self.holder.poll() is not None or time.monotonic() > deadline:
                raise OSError(f"unshare failed: {self.holder.stderr.read().decode().strip()}")
            time.sleep(0.01)

    def run(self, *argv, stdin: bytes = b"", check: bool = False) -> subprocess.CompletedProcess:
        r = subprocess.run(["nsenter", "-t", str(self.holder.pid), "-U", "-m", "--preserve-credentials",
                            f"--wd={self.tmp_path}", *map(str, argv)], input=stdin, capture_output=True, timeout=300,
                           env=offline_env({**os.environ, "TRIT_HOME": str(self.tmp_path / "home")}))
        if check:
            assert r.returncode == 0, r.stderr.decode()
        return r

    def trit(self, *args, stdin: bytes = b"") -> subprocess.CompletedProcess:
        return self.run(*trit_command(), *args, stdin=stdin)

    def fill(self, folder: Path, size: str = "2m") -> None:
        """A small tmpfs over `folder`, holding what it held, then filled to the last byte."""
        disk = self.tmp_path / "disk"
        disk.mkdir()
        self.run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", disk, check=True)
        self.run("cp", "-a", f"{folder}/.", disk, check=True)
        self.run("mount", "--bind", disk, folder, check=True)
        self.run("dd", "if=/dev/zero", f"of={folder}/filler", "bs=4k")  # ends with "No space left on device"

    def read_only(self, folder: Path) -> None:
        self.run("mount", "--bind", folder, folder, check=True)
        self.run("mount", "-o", "remount,bind,ro", folder, check=True)

    def close(self) -> None:
        self.holder.kill()
        self.holder.wait()


@pytest.fixture
def namespace(tmp_path):
    if not (shutil.which("unshare") and shutil.which("nsenter")) or not Path("/proc/self/ns/mnt").exists():
        pytest.skip("needs unshare and nsenter (util-linux) and Linux namespaces")
    try:
        ns = Namespace(tmp_path)
    except OSError as e:
        pytest.skip(f"cannot make a user and mount namespace here: {e}")
    probe = tmp_path / "probe"
    probe.mkdir()
    if ns.run("mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", probe).returncode != 0:
        ns.close()
        pytest.skip("cannot mount a tmpfs in a user namespace here")
    ns.run("umount", probe)
    yield ns
    ns.close()


def installed_copy_of_the_demo(trit, tmp_path, name="mine"):
    folder = tmp_path / name
    shutil.copytree(DEMO_MODEL, folder)
    (folder / "trit-demo.json").unlink()
    r = trit("import", folder)
    assert r.returncode == 0, r.stderr
    return name


def ask_json(trit, *args) -> dict:
    r = trit("ask", "--max-tokens", 6, "--seed", 1, "--json", *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)




def seed_history(trit) -> tuple[int, dict]:
    """One conversation of two turns with the demo model, and what `history show --json` says of it."""
    cid = ask_json(trit, "-m", "demo", "Tell me about lighthouses")["conversation_id"]
    ask_json(trit, "-c", "And glaciers?")
    return cid, conversation_json(trit, cid)


# ---- item 12: a read-only data folder, a full disk ----

def test_everything_that_only_reads_works_in_a_read_only_data_folder(trit, namespace, home, tmp_path):
    mine = installed_copy_of_the_demo(trit, tmp_path)
    cid, before = seed_history(trit)
    namespace.read_only(home)
    ns = namespace.trit

    listed = ns("history", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [c["id"] for c in json.loads(listed.stdout)] == [cid]
    shown = ns("history", "show", cid, "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout) == before, shown.stderr
    assert b"lighthouses" in ns("history", "show", cid).stdout
    found = ns("history", "search", "glaciers", "--json")
    assert found.returncode == 0 and json.loads(found.stdout)[0]["conversation_id"] == cid, found.stderr
    assert ns("history", "export", cid, "--format", "md").returncode == 0
    models = ns("models", "--json")
    assert models.returncode == 0 and [m["name"] for m in json.loads(models.stdout)] == [mine, "demo"], models.stderr
    assert ns("paths").returncode == 0
    for args in (["-m", mine], ["-m", "demo"], ["-c"]):
        r = ns("ask", "--no-log", "--max-tokens", 4, *args, "hello")
        assert r.returncode == 0 and r.stdout.strip(), (args, r.stderr)


def test_writes_in_a_read_only_data_folder_say_so_and_change_nothing(trit, namespace, home):
    cid, before = seed_history(trit)
    assert trit("models", "--default", "demo").returncode == 0
    config = (home / "config" / "config.toml").read_bytes()
    namespace.read_only(home)
    ns = namespace.trit

    r = ns("ask", "-c", "--max-tokens", 6, "--seed", 1, "A third question")
    assert r.stdout.strip(), r.stderr  # the answer is printed all the same
    one_line(r, "not saved", "read-only", str(home))
    one_line(ns("history", "rm", "--yes", cid), "read-only", "history.db")
    one_line(ns("history", "rm", "--all", "--yes"), "read-only", "history.db")
    one_line(ns("models", "--default", "demo"), "read-only", "config.toml")

    assert conversation_json(trit, cid) == before
    assert (home / "config" / "config.toml").read_bytes() == config
    assert not list(home.rglob("*.tmp"))


def test_a_full_disk_keeps_reads_working_and_every_write_says_the_disk_is_full(trit, namespace, home):
    cid, before = seed_history(trit)
    assert trit("models", "--default", "demo").returncode == 0
    config = (home / "config" / "config.toml").read_bytes()
    namespace.fill(home)
    ns = namespace.trit

    listed = ns("history", "list", "--json")
    assert listed.returncode == 0 and [c["id"] for c in json.loads(listed.stdout)] == [cid], listed.stderr
    shown = ns("history", "show", cid, "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout) == before, shown.stderr

    r = ns("ask", "--max-tokens", 6, "--seed", 1, "A new question")
    assert r.stdout.strip(), r.stderr  # the answer is printed, then one line says it was not kept
    one_line(r, "not saved", "full", str(home))
    r = ns("ask", "-c", "--max-tokens", 6, "--seed", 1, "--json", "A third question")
    assert json.loads(r.stdout)["content"], r.stderr
    one_line(r, "not saved", "full")
    one_line(ns("models", "--default", "mine"), "mine")  # not installed: that is what is said
    one_line(ns("models", "--default", "demo"), "full", "config.toml")
    found = namespace.run("find", home, "-name", "*.tmp", check=True).stdout
    assert found == b"", found

    namespace.run("rm", home / "filler", check=True)  # space again: the history is whole and takes new turns
    assert namespace.run("cat", home / "config" / "config.toml", check=True).stdout == config
    shown = ns("history", "show", cid, "--json")
    assert json.loads(shown.stdout) == before, shown.stderr
    r = ns("ask", "-c", "--max-tokens", 4, "Once more")
    assert r.returncode == 0, r.stderr
    assert [c["id"] for c in json.loads(ns("history", "list", "--json").stdout)] == [cid]
    assert len(json.loads(ns("history", "show", cid, "--json").stdout)["messages"]) == 6


# ---- item 7: everything Trit writes is its user's alone ----

def test_every_file_and_folder_trit_writes_is_readable_by_its_user_only(trit, home, tmp_path):
    mine = installed_copy_of_the_demo(trit, tmp_path)  # the models folder, its files and the weights derived there
    ask_json(trit, "-m", mine, "hello")
    assert trit("models", "--default", mine).returncode == 0
    export = tmp_path / "export.md"
    assert trit("history", "export", 1, "-o", export).returncode == 0
    written = [home, *home.rglob("*"), export]
    assert len(written) > 10
    loose = [f"{oct(stat.S_IMODE(p.stat().st_mode))} {p}" for p in written if stat.S_IMODE(p.stat().st_mode) & 0o077]
    assert loose == []


def test_an_existing_export_keeps_the_mode_its_owner_gave_it(trit, tmp_path):
    ask_json(trit, "-m", "demo", "hello")
    shared = tmp_path / "shared.md"
    shared.write_text("old")
    shared.chmod(0o644)
    assert trit("history", "export", 1, "-o", shared).returncode == 0
    assert "hello" in shared.read_text() and stat.S_IMODE(shared.stat().st_mode) == 0o644


# ---- item 13: a turn killed with kill -9 shows as interrupted ----

def test_a_turn_killed_mid_answer_shows_as_interrupted_and_can_be_continued(make_model, home, tmp_path, trit):
    code, shown, _, stored = stop_mid_answer(home, make_model, tmp_path, signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert stored["finish_reason"] == "interrupted"
    assert stored["content"] and shown.startswith(stored["content"])  # saved as it is written
    assert 0 < stored["generated_tokens"] < 3000
    text = trit("history", "show", 1).stdout.decode()
    assert "*(interrupted)*" in text

    slow = make_model("small", seed=1)
    r = trit("ask", "-c", "-m", slow, "--max-tokens", 4, "--json", "Go on")
    assert r.returncode == 0, r.stderr
    follow_up = json.loads(r.stdout)
    assert follow_up["prompt_tokens"] > stored["generated_tokens"]  # the model read the partial answer
    roles = [(m["role"], m["finish_reason"]) for m in conversation_json(trit, 1)["messages"]]
    assert roles == [("user", None), ("assistant", "interrupted"), ("user", None), ("assistant", "length")]


def test_a_reply_being_written_by_a_live_process_is_not_called_interrupted(make_model, home, tmp_path):
    slow = make_model("small", seed=1)
    env = offline_env({**os.environ, "TRIT_HOME": str(home)})
    proc = subprocess.Popen(trit_command() + ["ask", "-m", str(slow), "--temperature", "0", "--max-tokens", "3000",
                                              "Write at length."], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, cwd=tmp_path)
    try:
        assert proc.stdout.read1(64)
        r = subprocess.run(trit_command() + ["history", "show", "1", "--json"], capture_output=True, env=env,
                           timeout=60)
        assert json.loads(r.stdout)["messages"][-1]["finish_reason"] == "in_progress", r.stderr
    finally:
        proc.kill()
        proc.wait()


def test_the_chat_app_shows_an_interrupted_reply_as_interrupted(tmp_path, monkeypatch):
    pytest.importorskip("textual")
    import asyncio

    from test_tui import open_conversation, running, started

    from trit.app.settings import Settings, save_settings
    from trit.app.store import Store
    from trit.app.tui.app import TritApp

    monkeypatch.setenv("TRIT_HOME", str(tmp_path / "home"))
    save_settings(Settings(default_model="demo"))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    with Store() as store:  # what a `trit ask` killed mid-answer leaves: a reply being written whose writer is gone
        cid = store.create_conversation(model="demo").id
        store.add_message(cid, "user", "Tell me a story")
        draft = store.begin_reply(cid, "demo", writer_pid=int(gone.stdout))
        assert store.save_draft(draft.id, "Once upon a time", 4)

    async def notes() -> list[str]:
        async with running(TritApp()) as pilot:
            await started(pilot)
            chat = await open_conversation(pilot, cid)
            return [str(box.query_one(".note").render()) for box in chat.chat.boxes() if box.role == "assistant"]

    assert asyncio.run(notes()) == ["interrupted"]


# ---- item 17: another process holds the history's write lock when the answer is saved ----

HOLD_LOCK = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=0)
while True:
    try:
        conn.execute("BEGIN IMMEDIATE")
        break
    except sqlite3.OperationalError:  # trit was stopped while saving: the test lets it go on a moment
        print("busy", flush=True)
        sys.stdin.readline()
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""


def test_an_answer_waits_for_another_process_holding_the_write_lock(make_model, home, tmp_path, trit):
    """The answer ends while another process holds BEGIN IMMEDIATE for longer than the 5 s a write waited."""
    slow = make_model("small", seed=1)
    env = offline_env({**os.environ, "TRIT_HOME": str(home)})
    proc = subprocess.Popen(trit_command() + ["ask", "-m", str(slow), "--temperature", "0", "--max-tokens", "300",
                                              "Write at length."], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, cwd=tmp_path)
    holder = None
    try:
        first = proc.stdout.read1(16)  # the question is stored and the answer streaming
        assert first, proc.stderr.read().decode()
        proc.send_signal(signal.SIGSTOP)  # held still until the lock is taken, so the answer surely ends under it
        holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(home / "data" / "history.db"), "8"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        while holder.stdout.readline() == b"busy\n":
            proc.send_signal(signal.SIGCONT)
            time.sleep(0.005)
            proc.send_signal(signal.SIGSTOP)
            holder.stdin.write(b"again\n")
            holder.stdin.flush()
        assert holder.poll() is None, "the lock holder did not get the lock"
        proc.send_signal(signal.SIGCONT)
        rest, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
        if holder is not None:
            holder.kill()
    assert proc.returncode == 0, err.decode()
    stored = conversation_json(trit, 1)["messages"][-1]
    assert stored["finish_reason"] in ("length", "stop") and stored["generated_tokens"] > 0
    assert stored["content"] and (first + rest).decode().strip() == stored["content"].strip()
