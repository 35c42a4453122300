"""Issue 16, the command-line half: what a new user and a scripter used to `llm` or Ollama meet in `trit`, through
the installed command: the demo model never sticks silently, empty questions are usage errors, `history rm`
confirms and takes an id twice, llm's flags, help that shows every option and an example, and the README in the
order a new user reads it."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
from dataclasses import fields
from pathlib import Path

import pytest
import test_hostile_input
from hub_server import HubServer
from network_guard import offline_env
from test_cli import trit_command
from test_hostile_input import demo_copy, one_line

home, trit = test_hostile_input.home, test_hostile_input.trit  # the fixtures: TRIT_HOME, the installed trit in it
README = Path(__file__).resolve().parent.parent / "README.md"


def models_json(trit) -> list[dict]:
    r = trit("models", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def ask_json(trit, *args, stdin: bytes = b"") -> tuple[dict, str]:
    r = trit("ask", "--max-tokens", 4, "--seed", 1, "--json", *args, stdin=stdin)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout), r.stderr.decode()


def conversations(trit, *args) -> list[dict]:
    r = trit("history", "list", "--json", *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def usage_error(r: subprocess.CompletedProcess, *words: str) -> str:
    """A usage error: exit 2 and one line on stderr, as README says."""
    err = r.stderr.decode()
    assert r.returncode == 2, err
    assert err.count("\n") == 1 and err.startswith("trit: ") and "Traceback" not in err, err
    for w in words:
        assert w in err, err
    return err


# ---- bug 1: the demo sticks after a real model is installed, silently ----------------------------------------------

def test_a_fresh_install_lists_the_demo_as_the_default_in_text_and_json(trit):
    listed = models_json(trit)
    assert [(m["name"], m["default"], m["builtin"], m["backend"]) for m in listed] == [("demo", True, True, "bitnet")]
    r = trit("models")
    header, row = r.stdout.decode().splitlines()
    assert header.split()[:2] == ["NAME", "SIZE"] and row.split()[:2] == ["*", "demo"] and "built-in" in row
    assert "trit pull" in r.stderr.decode()  # what to do next, beside the table, not in it


def test_importing_a_model_while_the_demo_is_the_default_makes_it_the_default_and_says_so(trit, tmp_path):
    assert trit("models", "--default", "demo").returncode == 0  # what "Use the demo model" writes
    r = trit("import", demo_copy(tmp_path, "source"), "--name", "mine")  # not ./mine: `-m mine` would be that folder
    assert r.returncode == 0, r.stderr
    said = r.stdout.decode() + r.stderr.decode()
    assert "mine is now the default model" in said and said.count("default model") == 1, said
    assert [(m["name"], m["default"]) for m in models_json(trit)] == [("mine", True), ("demo", False)]
    assert trit("models").stdout.decode().splitlines()[1].split()[:2] == ["*", "mine"]
    answer, err = ask_json(trit, "hi")
    assert answer["model"] == "mine" and "demo" not in err


def test_a_second_model_does_not_take_a_default_the_user_chose(trit, tmp_path):
    assert trit("import", demo_copy(tmp_path, "first")).returncode == 0
    assert trit("models", "--default", "first").returncode == 0
    r = trit("import", demo_copy(tmp_path, "second"))
    assert r.returncode == 0 and b"default" not in r.stdout + r.stderr, r.stderr
    assert [m["name"] for m in models_json(trit) if m["default"]] == ["first"]


def test_pulling_a_model_while_the_demo_is_the_default_makes_it_the_default(trit, tmp_path, home):
    hub = HubServer().start()
    try:
        hub.add_repo("someone/tiny-bitnet", demo_copy(tmp_path, "served"))
        assert trit("models", "--default", "demo").returncode == 0
        r = subprocess.run(trit_command() + ["pull", "someone/tiny-bitnet"], capture_output=True, text=True,
                           cwd=tmp_path, timeout=300,
                           env=offline_env({**os.environ, "TRIT_HOME": str(home), "HF_ENDPOINT": hub.url}))
    finally:
        hub.stop()
    assert r.returncode == 0, r.stderr
    assert "tiny-bitnet is now the default model" in r.stdout + r.stderr
    assert [m["name"] for m in models_json(trit) if m["default"]] == ["tiny-bitnet"]


def test_ask_answering_with_the_demo_because_nothing_is_installed_says_so_once_on_stderr(trit):
    answer, err = ask_json(trit, "hi")
    assert answer["model"] == "demo"  # stdout is the JSON alone
    assert err.count("demo") >= 1 and len(err.strip().splitlines()) == 1 and "trit pull" in err, err
    r = trit("ask", "--max-tokens", 4, "--seed", 1, "hi")
    assert r.returncode == 0 and len(r.stderr.decode().strip().splitlines()) == 1
    _, err = ask_json(trit, "-m", "demo", "hi")  # asked for by name: nothing to say
    assert err == ""


def test_the_demo_cannot_be_removed_and_can_be_benchmarked(trit):
    one_line(trit("rm", "demo", "--yes"), "demo", "ships inside Trit")
    r = trit("bench", "demo", "--pp", 8, "--tg", 4, "-r", 1, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["tg_tok_s"] > 0


# ---- bug 5 (CLI part): an empty question is a usage error ----------------------------------------------------------

@pytest.mark.parametrize("question", ["", "   ", "\n\t"])
def test_an_empty_question_is_a_usage_error_and_nothing_is_stored(trit, home, question):
    usage_error(trit("ask", "-m", "demo", question), "nothing to ask")
    assert not (home / "data" / "history.db").exists() or conversations(trit) == []


# ---- bug 8 ----------------------------------------------------------------------------------------------------------

def test_history_rm_takes_an_id_twice_and_several_ids(trit):
    ids = [ask_json(trit, "-m", "demo", f"question {i}")[0]["conversation_id"] for i in range(3)]
    r = trit("history", "rm", "--yes", ids[0], ids[0])
    assert r.returncode == 0 and "deleted 1 conversation" in r.stderr.decode(), r.stderr
    r = trit("history", "rm", "-y", ids[1], ids[2], ids[1])
    assert r.returncode == 0 and "deleted 2 conversations" in r.stderr.decode(), r.stderr
    assert conversations(trit) == []


def test_history_search_prints_one_row_per_hit_when_a_snippet_has_newlines(trit):
    ask_json(trit, "-m", "demo", "first line\nthe zebra stripes\nlast line\n\nmore")
    ask_json(trit, "-m", "demo", "zebra\n\n\nagain")
    hits = json.loads(trit("history", "search", "zebra", "--json").stdout)
    r = trit("history", "search", "zebra")
    assert r.returncode == 0 and len(hits) >= 2
    assert len(r.stdout.decode().splitlines()) == len(hits), r.stdout.decode()


@pytest.mark.parametrize("args", [["history", "list"], ["history", "show", 1], ["ask", "-m", "demo", "hi"]])
def test_a_reader_that_goes_away_ends_trit_quietly(trit, home, tmp_path, args):
    """`… | trit ask … | head -1`: no `trit: Broken pipe`, the exit of a process SIGPIPE ended."""
    ask_json(trit, "-m", "demo", "one question")
    proc = subprocess.Popen(trit_command() + [str(a) for a in args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path,
                            env=offline_env({**os.environ, "TRIT_HOME": str(home)}))
    proc.stdout.close()  # the reader is gone before anything is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == "", err


@pytest.mark.parametrize("args", [["ask", "--no-such-flag", "hi"], ["history", "rm"], ["history", "show", "x"],
                                  ["nosuchcommand"]])
def test_usage_errors_are_one_line_and_exit_2_as_the_readme_says(trit, args):
    usage_error(trit(*args), "--help")
    text = README.read_text()
    assert "usage error" in text and "exits with 2" in text


def test_ask_json_is_one_message_as_history_show_json_lists_them_and_help_says_so(trit):
    answer, _ = ask_json(trit, "-m", "demo", "hi")
    shown = json.loads(trit("history", "show", answer["conversation_id"], "--json").stdout)
    assert shown["messages"][-1] == answer
    help_text = " ".join(trit("ask", "--help").stdout.decode().split())
    assert "the reply as one JSON object" in help_text and "one of the messages" in help_text, help_text


# ---- friction: llm's flags, the demo everywhere, paths, chat, help, confirmations ------------------------------------

def test_dash_n_is_no_log_as_in_llm(trit, home):
    r = trit("ask", "-m", "demo", "--max-tokens", 4, "-n", "Something private")
    assert r.returncode == 0 and r.stdout.strip(), r.stderr
    assert not (home / "data" / "history.db").exists()
    r = trit("ask", "-m", "demo", "--max-tokens", 3, "--seed", 1, "--json", "--no-log", "hi")
    assert r.returncode == 0 and json.loads(r.stdout)["generated_tokens"] <= 3


def test_paths_names_the_files_the_readme_sends_you_to(trit, home):
    rows = dict(line.split(None, 1) for line in trit("paths").stdout.decode().splitlines())
    assert rows["settings"] == str(home / "config" / "config.toml")
    assert rows["history"] == str(home / "data" / "history.db")
    assert rows["models"] == str(home / "data" / "models")


def test_help_says_bare_trit_opens_the_chat_app_and_trit_chat_is_its_name(trit):
    top = " ".join(trit("--help").stdout.decode().split())
    assert "`trit` alone" in top and "chat app" in top and "chat " in top
    r = trit("chat", "--help")
    assert r.returncode == 0 and "chat app" in r.stdout.decode()
    # `trit chat` is the plain-terminal conversation now (as `llm chat`): with nothing piped in, it ends at once
    r = trit("chat")
    assert r.returncode == 0 and b"Traceback" not in r.stderr, r.stderr


def every_command():
    from trit.app.cli import cli

    def walk(group, path):
        for name, command in sorted(group.commands.items()):
            yield [*path, name], command
            if hasattr(command, "commands"):
                yield from walk(command, [*path, name])

    return list(walk(cli, []))


@pytest.mark.parametrize("path, command", every_command(), ids=lambda x: " ".join(x) if isinstance(x, list) else "")
def test_every_command_explains_every_option_and_shows_an_example(trit, path, command):
    import click

    undocumented = [p.opts[0] for p in command.params if isinstance(p, click.Option) and not p.help]
    assert undocumented == []
    r = trit(*path, "--help")
    assert r.returncode == 0, r.stderr
    if not hasattr(command, "commands"):
        assert re.search(rf"^\s+trit {' '.join(path)}\b", r.stdout.decode(), re.M), r.stdout.decode()


def run_on_a_terminal(home, tmp_path, args, answer: bytes) -> subprocess.CompletedProcess:
    """The command with stdin a terminal (a pseudo-terminal) on which `answer` is typed."""
    main, child = pty.openpty()
    try:
        os.write(main, answer)
        return subprocess.run(trit_command() + [str(a) for a in args], stdin=child, capture_output=True,
                              cwd=tmp_path, timeout=120, env=offline_env({**os.environ, "TRIT_HOME": str(home)}))
    finally:
        os.close(main)
        os.close(child)


def test_history_rm_asks_on_a_terminal_and_refuses_without_one_unless_yes(trit, home, tmp_path):
    cid = ask_json(trit, "-m", "demo", "keep me")[0]["conversation_id"]
    one_line(trit("history", "rm", cid), "-y")  # a script: nothing asked, nothing deleted
    r = run_on_a_terminal(home, tmp_path, ["history", "rm", cid], b"n\n")
    assert r.returncode == 1 and b"keep me" in r.stderr, r.stderr
    assert [c["id"] for c in conversations(trit)] == [cid]
    r = run_on_a_terminal(home, tmp_path, ["history", "rm", cid], b"y\n")
    assert r.returncode == 0 and conversations(trit) == [], r.stderr
    # `trit rm MODEL` refuses a script the same way
    assert trit("import", demo_copy(tmp_path, "mine")).returncode == 0
    one_line(trit("rm", "mine"), "-y")
    assert [m["name"] for m in models_json(trit)] == ["mine", "demo"]


def test_a_piped_file_does_not_title_the_conversation_the_question_does(trit):
    answer, _ = ask_json(trit, "-m", "demo", "Summarise", stdin=b"Minutes of the meeting\nitem one\n")
    assert conversations(trit)[0]["title"] == "Summarise"
    answer, _ = ask_json(trit, "-m", "demo", stdin=b"Only piped\ntext\n")  # no question: the piped text titles it
    assert conversations(trit)[0]["title"] == "Only piped"


def test_history_list_filters_by_words_and_model_as_llm_logs_does(trit, tmp_path):
    # imported under another name than its folder's: in trit's folder, `-m mine` would name that folder
    assert trit("import", demo_copy(tmp_path, "source"), "--name", "mine").returncode == 0
    a = ask_json(trit, "-m", "demo", "about lighthouses")[0]["conversation_id"]
    b = ask_json(trit, "-m", "mine", "about glaciers")[0]["conversation_id"]
    c = ask_json(trit, "-m", "mine", "lighthouses and glaciers")[0]["conversation_id"]
    assert [x["id"] for x in conversations(trit, "-q", "lighthouses")] == [c, a]
    assert [x["id"] for x in conversations(trit, "--model", "mine")] == [c, b]
    assert [x["id"] for x in conversations(trit, "-q", "glaciers", "-m", "demo")] == []
    text = trit("history", "list", "-q", "glaciers").stdout.decode()
    assert len(text.splitlines()) == 2 and "lighthouses and glaciers" in text


def test_ask_u_prints_token_usage_on_stderr(trit):
    r = trit("ask", "-m", "demo", "--max-tokens", 4, "--seed", 1, "--json", "-u", "hi")
    answer = json.loads(r.stdout)
    err = r.stderr.decode()
    assert r.returncode == 0 and f"{answer['prompt_tokens']} prompt" in err
    assert f"{answer['generated_tokens']} generated" in err


def test_ask_x_prints_only_the_first_code_block_or_the_whole_answer_without_one(trit):
    from trit.app.cli import first_code_block

    text = "Here:\n```python\nprint(1)\n```\nand\n```sh\nls\n```\n"
    assert first_code_block(text) == "print(1)\n"
    assert first_code_block("no code here") is None
    assert first_code_block("~~~\nx = 1\n~~~") == "x = 1\n"
    plain = trit("ask", "-m", "demo", "--max-tokens", 8, "--seed", 2, "-n", "hi").stdout
    extracted = trit("ask", "-m", "demo", "--max-tokens", 8, "--seed", 2, "-n", "-x", "hi").stdout
    assert extracted == plain  # the demo writes no code: the whole answer, as llm -x does
    usage_error(trit("ask", "-m", "demo", "-x", "--json", "hi"), "-x")


# ---- the README ---------------------------------------------------------------------------------------------------

def test_readme_is_ordered_for_a_new_user_and_documents_every_setting():
    from trit.app.settings import Settings

    text = README.read_text()
    headings = [line[3:].strip() for line in text.splitlines() if line.startswith("## ")]
    order = ["Install", "The chat app", "Asking from the shell", "Models", "Settings", "Install the binary",
             "Architecture"]
    assert [h for h in headings if h in order] == order, headings
    settings = text[text.index("## Settings"):text.index("## Install the binary")]
    missing = [f.name for f in fields(Settings)
               if f.name != "extra" and f"| `{f.name}` |" not in settings and f"| `[{f.name}]` |" not in settings]
    assert missing == []
    assert "_TRIT_COMPLETE=bash_source trit" in text and "trit chat" in text


def test_shell_completion_works_as_the_readme_says(trit):
    r = subprocess.run(trit_command(), capture_output=True, text=True, timeout=60,
                       env={**os.environ, "_TRIT_COMPLETE": "bash_source"})
    assert r.returncode == 0 and "complete" in r.stdout and "_TRIT_COMPLETE" in r.stdout

