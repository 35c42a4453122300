"""The chat app (app/tui) driven as a person drives it: Textual's pilot presses keys in a real TritApp on the real
engine with small synthetic models, over a real history file under a temporary TRIT_HOME; and snapshots of the main
screens at 100x32 with a fixed clock and a conversation built in the store with fixed figures."""

from __future__ import annotations

import asyncio
import functools
import inspect
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

pytest.importorskip("textual")

from trit.app.service import ModelChoice  # noqa: E402
from trit.app.settings import Settings, load_settings, save_settings  # noqa: E402
from trit.app.store import Store  # noqa: E402
from trit.app.tui import actions  # noqa: E402
from trit.app.tui.app import TritApp  # noqa: E402
from trit.app.tui.screens.chat import ChatScreen  # noqa: E402
from trit.app.tui.screens.first_run import FirstRunScreen  # noqa: E402
from trit.app.tui.widgets.chat_view import MessageBox, Notice  # noqa: E402
from trit.app.tui.widgets.prompt import PromptInput  # noqa: E402
from trit.app.tui.widgets.status_line import StatusLine  # noqa: E402

SIZE = (100, 32)
NOW = datetime(2026, 3, 14, 15, 9, 26, tzinfo=timezone.utc)
WRITTEN = "2026-03-14T14:52:00+00:00"  # 17 minutes before NOW
TIMEOUT = 60.0


# ---- fixtures ------------------------------------------------------------------------------------------------------
def model_folder(tmp_path_factory, name: str, preset: str) -> Path:
    """A synthetic model in a folder with a fixed name: the status line shows the folder's name."""
    from trit.engine.tools import synthetic

    folder = tmp_path_factory.getbasetemp() / name
    if not (folder / "config.json").exists():
        synthetic.write_model(folder, preset, seed=0, overwrite=True)
    return folder


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Path:
    return model_folder(tmp_path_factory, "bitnet-tiny", "tiny")


@pytest.fixture(scope="session")
def small(tmp_path_factory) -> Path:
    return model_folder(tmp_path_factory, "bitnet-small", "small")


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """TRIT_HOME and HOME in a temporary folder; no display, so copying goes to the terminal (OSC 52)."""
    monkeypatch.setenv("TRIT_HOME", str(tmp_path / "trit"))
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    (tmp_path / "user").mkdir()
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "SSH_CONNECTION", "SSH_TTY", "WSL_DISTRO_NAME"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def configure(model: Path, **settings) -> None:
    save_settings(Settings(default_model=str(model), **{"max_tokens": 8, **settings}))


@pytest.fixture
def with_tiny(home, tiny) -> Path:
    configure(tiny)
    return tiny


def history() -> sqlite3.Connection:
    from trit.app.paths import paths

    return sqlite3.connect(paths().data / "history.db")


def rows(sql: str, *args) -> list[tuple]:
    with history() as db:
        return db.execute(sql, args).fetchall()


# ---- driving the app ------------------------------------------------------------------------------------------------
ENDED: dict[int, list] = {}  # per app (its id): the ReplyEnded messages its chat screen has handled


def running(app: TritApp):
    """app.run_test at SIZE, counting the replies the chat screen ends: finished, stopped or failed, each ends with
    the screen handling a ReplyEnded message, which run_test's message hook sees first."""
    ended = ENDED[id(app)] = []

    def hook(message) -> None:
        if isinstance(message, ChatScreen.ReplyEnded) and not any(m is message for m in ended):
            ended.append(message)  # once: the message bubbles on to the app, and the hook sees it there again

    return app.run_test(size=SIZE, message_hook=hook)


def replies_ended(pilot) -> int:
    return len(ENDED[id(pilot.app)])


def drive(test):
    """Run an async test in its own event loop (the pilot needs one; no asyncio plugin is required)."""

    @functools.wraps(test)
    def run(*args, **kwargs):
        asyncio.run(test(*args, **kwargs))

    run.__signature__ = inspect.signature(test)
    return run


async def until(pilot, condition, timeout: float = TIMEOUT, what="") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        shown = what() if callable(what) else what
        assert time.monotonic() < deadline, f"timed out waiting for {shown or condition}"
        await pilot.pause(0.05)


async def started(pilot) -> ChatScreen:
    """The chat screen, once the model is loaded (its context size is then known): the status line names the model
    and no longer says it is loading."""
    app = pilot.app

    def loaded() -> bool:
        shown = [str(s.render()) for s in app.screen.query(StatusLine)] if isinstance(app.screen, ChatScreen) else []
        return bool(shown and shown[0]) and "loading…" not in shown[0]

    await until(pilot, loaded, what="the model")
    await pilot.pause()
    return app.screen


async def type_text(pilot, text: str) -> None:
    await pilot.press(*["space" if c == " " else c for c in text])


async def reply_to(pilot, *keys: str) -> ChatScreen:
    """Press keys that start a reply, and wait for it to end."""
    chat = pilot.app.screen
    before = replies_ended(pilot)
    await pilot.press(*keys)
    await until(pilot, lambda: replies_ended(pilot) > before, what="the reply to end")
    await pilot.pause()
    return chat


async def send(pilot, text: str) -> ChatScreen:
    await type_text(pilot, text)
    return await reply_to(pilot, "enter")


def status(chat: ChatScreen) -> str:
    return str(chat.query_one(StatusLine).render())


def notifications(app) -> list[str]:
    return [n.message for n in app._notifications]


def build_conversation(store: Store, model: str) -> int:
    """A conversation with a code block, a reply stopped by the user and older turns left out: fixed figures."""
    c = store.create_conversation(model=model, title="Rivers of Europe")
    store.add_message(c.id, "user", "Which river flows through Vienna?")
    store.add_message(c.id, "assistant", "The **Danube** flows through Vienna.", model=model, finish_reason="stop",
                      prompt_tokens=40, reused_tokens=0, generated_tokens=9, dropped_messages=0, prefill_tok_s=900.0,
                      decode_tok_s=61.5, time_to_first_token_s=0.05)
    store.add_message(c.id, "user", "Show me how to sort them by length in Python, then in shell.")
    store.add_message(c.id, "assistant",
                      "Sort a list of pairs by the second item:\n\n```python\nrivers = [(\"Danube\", 2850), "
                      "(\"Rhine\", 1230)]\nrivers.sort(key=lambda r: r[1])\n```\n\nOr with `sort`:\n\n```sh\n"
                      "sort -t, -k2 -n rivers.csv\n```\n", model=model, finish_reason="stop", prompt_tokens=3400,
                      reused_tokens=3300, generated_tokens=61, dropped_messages=2, prefill_tok_s=850.0,
                      decode_tok_s=58.25, time_to_first_token_s=0.12)
    store.add_message(c.id, "user", "And the longest one in Asia?")
    store.add_message(c.id, "assistant", "The longest river in Asia is the", model=model, finish_reason="cancelled",
                      prompt_tokens=3480, reused_tokens=3470, generated_tokens=7, dropped_messages=2,
                      prefill_tok_s=800.0, decode_tok_s=57.0, time_to_first_token_s=0.1)
    return c.id


@pytest.fixture
def stored(with_tiny, monkeypatch) -> dict:
    """Two saved conversations written at a fixed time: one built above, one short."""
    with monkeypatch.context() as m, Store() as store:  # the clock runs again for what the tests write
        m.setattr("trit.app.store._now", lambda: WRITTEN)
        other = store.create_conversation(model=str(with_tiny.resolve()), title="Bread without yeast")
        store.add_message(other.id, "user", "How do I make soda bread?")
        store.add_message(other.id, "assistant", "Mix flour, salt, baking soda and buttermilk.",
                          model=str(with_tiny.resolve()), finish_reason="stop")
        rivers = build_conversation(store, str(with_tiny.resolve()))
    return {"rivers": rivers, "bread": other.id}


async def open_conversation(pilot, cid: int) -> ChatScreen:
    chat = await started(pilot)
    await chat.open_conversation(cid)
    await pilot.pause()
    return chat


# ---- chatting -------------------------------------------------------------------------------------------------------
@drive
async def test_a_reply_streams_into_markdown_and_is_stored(with_tiny, monkeypatch):
    from textual.widgets import Markdown

    rendered_whole = []  # Markdown widgets given a whole non-empty document
    original = Markdown.update
    monkeypatch.setattr(Markdown, "update",
                        lambda self, text: (text and rendered_whole.append(self)) or original(self, text))
    app = TritApp()
    async with running(app) as pilot:
        chat = await started(pilot)
        assert "bitnet-tiny" in status(chat)
        await send(pilot, "Hello there")
        (cid, title), = rows("SELECT id, title FROM conversations")
        assert title == "Hello there"
        stored = rows("SELECT role, content, finish_reason, generated_tokens FROM messages ORDER BY id")
        assert [r[0] for r in stored] == ["user", "assistant"] and stored[0][1] == "Hello there"
        assert stored[1][2] in ("stop", "length") and 0 < stored[1][3] <= 8
        reply = chat.chat.boxes()[-1]
        assert reply.role == "assistant" and reply.markdown.source == stored[1][1]
        assert reply.markdown not in rendered_whole  # appended piece by piece, never rendered again whole
        assert "tok/s" in status(chat) and "first token" in status(chat) and "/4,096" in status(chat)
        assert chat.query_one("#conversations").highlighted_id == cid
        assert isinstance(app.focused, PromptInput) and app.focused.text == ""


@drive
async def test_escape_stops_the_reply_keeps_it_and_the_box_works_again(home, small):
    configure(small, max_tokens=3000, temperature=0.0)
    app = TritApp()
    async with running(app) as pilot:
        chat = await started(pilot)
        await type_text(pilot, "Tell me a long story")
        await pilot.press("enter")
        await until(pilot, lambda: chat.generating and chat.got_text, what="the first text")
        await reply_to(pilot, "escape")
        (content, reason, generated), = rows("SELECT content, finish_reason, generated_tokens FROM messages "
                                             "WHERE role = 'assistant'")
        assert reason == "cancelled" and content and generated < 3000
        reply = chat.chat.boxes()[-1]
        assert reply.markdown.source == content
        assert str(reply.query_one(".note").render()) == "stopped"
        # the box is usable again: the next message is sent and answered
        await type_text(pilot, "Shorter please")
        await pilot.press("enter")
        await until(pilot, lambda: chat.generating and chat.got_text, what="the second reply")
        await reply_to(pilot, "escape")
        assert [r[0] for r in rows("SELECT content FROM messages WHERE role = 'user' ORDER BY id")] == [
            "Tell me a long story", "Shorter please"]
        # quitting while a reply is written keeps it too, marked stopped
        await type_text(pilot, "One more")
        await pilot.press("enter")
        await until(pilot, lambda: chat.generating and chat.got_text, what="the third reply")
        await pilot.press("ctrl+q")
    assert rows("SELECT content <> '', finish_reason FROM messages WHERE role = 'assistant' ORDER BY id")[-1] == (
        1, "cancelled")
    app = TritApp()
    async with running(app) as pilot:
        chat = await started(pilot)
        # Esc with nothing being written brings the focus back to the message box
        await pilot.press("shift+tab")
        assert not isinstance(app.focused, PromptInput)
        await pilot.press("escape")
        assert isinstance(app.focused, PromptInput)


@drive
async def test_a_slow_start_says_it_is_reading_and_a_message_sent_meanwhile_waits(with_tiny, monkeypatch):
    from trit.app.service import Service

    configure(with_tiny, temperature=0.0)  # a sampled reply of the random model can be empty; the greedy one is not

    reply = Service.reply
    go = threading.Event()  # a long prefill: no text until the test has sent its second message

    def slow_reply(self, dialogue, cancel=None):
        go.wait(TIMEOUT)
        yield from reply(self, dialogue, cancel)

    monkeypatch.setattr(Service, "reply", slow_reply)
    monkeypatch.setattr("trit.app.tui.screens.chat.replying.WAITING_AFTER_S", 0.2)
    app = TritApp()
    async with running(app) as pilot:
        chat = await started(pilot)
        await type_text(pilot, "Hi")
        await pilot.press("enter")
        await until(pilot, lambda: chat.reply_box is not None and chat.reply_box.query_one(".waiting").display)
        assert str(chat.reply_box.query_one(".waiting").render()) == "reading your message…"
        box = chat.reply_box
        await type_text(pilot, "Next")  # sent while the reply is written: it waits, then goes out
        await pilot.press("enter")
        assert chat.pending == "Next" and chat.prompt.text == ""
        go.set()
        await until(pilot, lambda: replies_ended(pilot) >= 1)  # the waiting message's reply may have ended too
        assert not box.query_one(".waiting").display and box.markdown.source
        await until(pilot, lambda: replies_ended(pilot) == 2, what="the waiting message's reply")
        assert [r[0] for r in rows("SELECT content FROM messages WHERE role = 'user' ORDER BY id")] == ["Hi", "Next"]


@drive
async def test_regenerate_and_edit_the_last_message(with_tiny):
    app = TritApp()
    async with running(app) as pilot:
        chat = await started(pilot)
        await send(pilot, "Hi")
        (first_id,), = rows("SELECT id FROM messages WHERE role = 'assistant'")
        await reply_to(pilot, "ctrl+r")
        stored = rows("SELECT id, role, content FROM messages ORDER BY id")
        assert [r[1] for r in stored] == ["user", "assistant"] and stored[1][0] != first_id
        assert len(chat.chat.boxes()) == 2
        await pilot.press("ctrl+up")
        assert chat.editing and chat.prompt.text == "Hi"
        await pilot.press("backspace", "backspace")
        await send(pilot, "Hello again")
        stored = rows("SELECT role, content FROM messages ORDER BY id")
        assert [r[0] for r in stored] == ["user", "assistant"] and stored[0][1] == "Hello again"
        assert [b.role for b in chat.chat.boxes()] == ["user", "assistant"]
        assert chat.chat.boxes()[0].text == "Hello again"


@drive
async def test_incognito_writes_nothing(with_tiny):
    app = TritApp()
    async with running(app) as pilot:
        chat = await started(pilot)
        await pilot.press("ctrl+t")
        assert chat.has_class("incognito") and "INCOGNITO" in status(chat)
        assert "nothing of this conversation is written to disk" in str(chat.query_one("#chat-title").render())
        await send(pilot, "secret plans")
        assert len(chat.dialogue.messages) == 2 and chat.dialogue.conversation_id is None
        assert rows("SELECT count(*) FROM messages") == [(0,)] and rows("SELECT count(*) FROM conversations") == [(0,)]
    from trit.app.paths import paths

    files = [p for p in paths().data.parent.rglob("*") if p.is_file()]
    assert files and not any(b"secret plans" in p.read_bytes() for p in files)


# ---- conversations --------------------------------------------------------------------------------------------------
@drive
async def test_new_rename_search_export_delete(stored, home, monkeypatch):
    monkeypatch.chdir(home / "user")  # the export is offered where trit was started
    app = TritApp()
    async with running(app) as pilot:
        chat = await started(pilot)
        listing = chat.query_one("#conversations")
        assert [c.title for c in listing.conversations] == ["Rivers of Europe", "Bread without yeast"]
        # search across conversations, open the hit
        await pilot.press("ctrl+f")
        await type_text(pilot, "soda")
        await until(pilot, lambda: app.screen.hits, what="search hits")
        await pilot.press("enter")
        await until(pilot, lambda: chat.dialogue.conversation_id == stored["bread"], what="the hit to open")
        assert isinstance(app.focused, MessageBox) and "soda" in app.focused.text
        # rename
        await pilot.press("f2")
        await pilot.press(*["backspace"] * 30)
        await type_text(pilot, "Soda bread")
        await pilot.press("enter")
        assert rows("SELECT title FROM conversations WHERE id = ?", stored["bread"]) == [("Soda bread",)]
        assert str(chat.query_one("#chat-title").render()) == "Soda bread"
        # export to a Markdown file in the home folder
        await pilot.press("ctrl+s")
        await pilot.press("enter")
        exported = home / "user" / "soda-bread.md"
        await until(pilot, exported.exists, what="the export")
        text = exported.read_text()
        assert text.startswith("# Soda bread") and "buttermilk" in text
        assert any(str(exported) in n for n in notifications(app))
        # delete, confirmed: really gone
        await pilot.press("f8")
        await pilot.press("y")
        await until(pilot, lambda: chat.dialogue.conversation_id is None, what="the deletion")
        assert rows("SELECT count(*) FROM conversations WHERE id = ?", stored["bread"]) == [(0,)]
        assert rows("SELECT count(*) FROM messages WHERE conversation_id = ?", stored["bread"]) == [(0,)]
        assert [c.title for c in listing.conversations] == ["Rivers of Europe"]
        # delete from the list, declined: kept
        listing.focus()
        listing.highlighted = 0
        await pilot.press("delete")
        await pilot.press("n")
        assert rows("SELECT count(*) FROM conversations") == [(1,)]
        # a new conversation
        await pilot.press("ctrl+n")
        await send(pilot, "A new one")
        assert [c.title for c in listing.conversations] == ["A new one", "Rivers of Europe"]


@drive
async def test_copy_a_message_and_a_code_block(stored):
    app = TritApp()
    async with running(app) as pilot:
        chat = await open_conversation(pilot, stored["rivers"])
        boxes = chat.chat.boxes()
        boxes[3].focus()
        await pilot.press("ctrl+g")
        assert app.clipboard == boxes[3].text
        await pilot.press("ctrl+l")  # two blocks: a picker
        await pilot.press("down", "enter")
        assert app.clipboard == "sort -t, -k2 -n rivers.csv\n"
        chat.focus_prompt()
        await pilot.press("ctrl+g")  # from the message box: the last reply
        assert app.clipboard == "The longest river in Asia is the"


@drive
async def test_stored_figures_notices_and_settings(stored):
    app = TritApp()
    async with running(app) as pilot:
        chat = await open_conversation(pilot, stored["rivers"])
        notices = [str(n.render()) for n in chat.query(Notice)]
        assert len(notices) == 1 and "the 2 oldest messages are left out" in notices[0]  # said once
        assert "⚠ context 3,487/4,096 (85%)" in status(chat) and "57.0 tok/s" in status(chat)
        await pilot.press("ctrl+o")
        await pilot.press("tab")  # from the system prompt to the temperature
        await type_text(pilot, "0.25")
        await pilot.press("tab", "tab")
        await type_text(pilot, "zero")  # an integer field refuses letters
        await type_text(pilot, "16")
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert chat.dialogue.params == {"temperature": 0.25, "max_tokens": 16}
        assert Store().conversation(stored["rivers"]).params == {"temperature": 0.25, "max_tokens": 16}
        await pilot.press("ctrl+o")
        await pilot.press("tab")
        await type_text(pilot, "5")  # temperature 0.255 is fine; top_p 7 is not
        await pilot.press("tab")
        await type_text(pilot, "7")
        await pilot.press("ctrl+s")
        assert "Top p" in str(app.screen.query_one("#settings-error").render())
        await pilot.press("escape")
        assert chat.dialogue.params == {"temperature": 0.25, "max_tokens": 16}


# ---- the first run --------------------------------------------------------------------------------------------------
@drive
async def test_first_run_without_a_model_offers_a_choice_and_imports_a_folder(home, tiny):
    app = TritApp()
    async with running(app) as pilot:
        await until(pilot, lambda: isinstance(app.screen, FirstRunScreen), what="the first-run screen")
        screen = app.screen
        folder = screen.query_one("#folder")
        folder.focus()
        await type_text(pilot, str(home))  # a folder that is not a model: one line, the screen stays
        await pilot.press("enter")
        await until(pilot, lambda: not screen.busy and str(screen.query_one("#first-run-message").render()))
        message = str(screen.query_one("#first-run-message").render())
        assert "\n" not in message and "Traceback" not in message and screen.query_one("#first-run-message").has_class(
            "error")
        folder.value = str(tiny)
        await pilot.press("enter")
        chat = await started(pilot)
        assert "bitnet-tiny" in status(chat)
        from trit.app.paths import paths
        from trit.engine.models import registry

        assert [m.name for m in registry.installed(paths().models)] == ["bitnet-tiny"]


@drive
async def test_first_run_downloads_from_a_hub_and_says_what_failed_in_one_line(home, tiny, monkeypatch):
    from hub_server import HubServer

    from trit.engine.models import download

    server = HubServer().start()
    try:
        server.add_repo(download.DEFAULT_REPO, tiny)
        monkeypatch.setenv("HF_ENDPOINT", server.url)  # the stand-in hub on 127.0.0.1
        server.status["info"] = [404]
        app = TritApp()
        async with running(app) as pilot:
            await until(pilot, lambda: isinstance(app.screen, FirstRunScreen))
            screen = app.screen
            await pilot.press("enter")  # the download button has the focus
            await until(pilot, lambda: screen.query_one("#first-run-message").has_class("error"))
            message = str(screen.query_one("#first-run-message").render())
            assert "\n" not in message and download.DEFAULT_REPO in message
            await until(pilot, lambda: not screen.query_one("#download").disabled, what="the buttons back")
            await pilot.click("#download")  # the hub answers this time
            await until(pilot, lambda: screen.busy or app.screen is not screen, what="the download to start")
            # leaves the first-run screen, or says why not (shown if it times out)
            await until(pilot, lambda: app.screen is not screen or
                        screen.query_one("#first-run-message").has_class("error"),
                        what=lambda: str(screen.query_one("#first-run-message").render()))
            assert app.screen is not screen, str(screen.query_one("#first-run-message").render())
            chat = await started(pilot)
            assert download.default_name(download.DEFAULT_REPO) in status(chat)
    finally:
        server.stop()


# ---- keys, palette, themes, errors ----------------------------------------------------------------------------------
@drive
async def test_keys_come_from_config_and_every_action_is_in_the_palette(home, tiny):
    configure(tiny, keys={"new_incognito": "ctrl+b"}, theme="nord")
    app = TritApp()
    async with running(app) as pilot:
        chat = await started(pilot)
        assert app.theme == "nord"
        await pilot.press("ctrl+b")
        assert not chat.dialogue.logged
        titles = {c.title for c in app.get_system_commands(chat)}
        assert {a.title for a in actions.ALL if a.id != "newline"} <= titles
        await pilot.press("f1")
        await pilot.pause()
        assert ("^b", "New incognito conversation") in [row[:2] for row in app.screen.rows]
        await pilot.press("escape")
        app.theme = "gruvbox"
        await pilot.pause()
    assert load_settings().theme == "gruvbox"


@drive
async def test_problems_are_one_line_notifications(home, tiny):
    from trit.app.paths import paths

    paths().config.mkdir(parents=True)
    (paths().config / "config.toml").write_text("default_model = [oops\n")
    app = TritApp()
    async with running(app) as pilot:
        # default settings, no model: the first run, and a line saying what is wrong with the file
        await until(pilot, lambda: isinstance(app.screen, FirstRunScreen)
                    and any("not valid TOML" in n for n in notifications(app)),
                    what=lambda: f"the first run and the TOML notification; shown: {notifications(app)}")
    assert (paths().config / "config.toml").read_text() == "default_model = [oops\n"  # never written over
    configure(tiny.parent / "no-such-model")  # a default model that is not there: the first run, saying why
    app = TritApp()
    async with running(app) as pilot:
        await until(pilot, lambda: isinstance(app.screen, FirstRunScreen))
        message = app.screen.query_one("#first-run-message")
        assert "no-such-model" in str(message.render()) and message.has_class("error")


@drive
async def test_a_history_that_cannot_be_written_gives_the_message_back(with_tiny, monkeypatch):
    from trit.app.store import StoreError

    def refuse(self, *args, **kwargs):
        raise StoreError("history.db is read-only; make it and its folder writable by you and try again")

    app = TritApp()
    async with running(app) as pilot:
        chat = await started(pilot)
        monkeypatch.setattr(Store, "add_message", refuse)
        await send(pilot, "Keep this")
        assert chat.prompt.text == "Keep this" and chat.chat.boxes() == []
        assert any("read-only" in n and "\n" not in n for n in notifications(app))


def test_the_command_line_stays_free_of_textual_and_trit_without_a_terminal_prints_help(home):
    code = "import sys, trit.app.cli; assert 'textual' not in sys.modules, 'textual imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=home.parent)
    r = subprocess.run([sys.executable, "-m", "trit.app"], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       cwd=home.parent, timeout=60)
    assert r.returncode == 0 and "Usage:" in r.stdout and "ask" in r.stdout


# ---- snapshots ------------------------------------------------------------------------------------------------------
def frozen_app() -> TritApp:
    return TritApp(clock=lambda: NOW)


async def steady(pilot) -> None:
    """No blinking cursor in a snapshot: it is drawn or not depending on the moment."""
    from textual.widgets import Input, TextArea

    for screen in pilot.app.screen_stack:
        for widget in screen.query("TextArea, Input"):
            if isinstance(widget, (TextArea, Input)):
                widget.cursor_blink = False
    # and every Markdown block laid out: the scrollbar depends on the height of what is above the view
    chat = next((s for s in pilot.app.screen_stack if isinstance(s, ChatScreen)), None)
    seen, same = None, 0
    while chat is not None and same < 10:
        await pilot.wait_for_scheduled_animations()
        await pilot.pause(0.05)
        now = (chat.chat.virtual_size, chat.chat.scroll_y, chat.chat.max_scroll_y,
               [b.size for b in chat.chat.boxes()])
        same = same + 1 if now == seen else 0
        seen = now
    await pilot.pause(0.1)


def test_snapshot_chat(stored, snap_compare):
    async def run_before(pilot):
        await open_conversation(pilot, stored["rivers"])
        await steady(pilot)

    assert snap_compare(frozen_app(), terminal_size=SIZE, run_before=run_before)


def test_snapshot_help(with_tiny, snap_compare):
    async def run_before(pilot):
        await started(pilot)
        await pilot.press("f1")
        await steady(pilot)

    assert snap_compare(frozen_app(), terminal_size=SIZE, run_before=run_before)


def test_snapshot_settings(stored, snap_compare):
    async def run_before(pilot):
        await open_conversation(pilot, stored["bread"])
        await pilot.press("ctrl+o")
        await steady(pilot)

    assert snap_compare(frozen_app(), terminal_size=SIZE, run_before=run_before)


def test_snapshot_first_run(home, tiny, monkeypatch, snap_compare):
    monkeypatch.setattr("trit.app.tui.screens.first_run.demo_model",
                        lambda: ModelChoice("demo", tiny, demo=True))  # as an installation that ships it

    async def run_before(pilot):
        await until(pilot, lambda: isinstance(pilot.app.screen, FirstRunScreen))
        await steady(pilot)

    assert snap_compare(frozen_app(), terminal_size=SIZE, run_before=run_before)
