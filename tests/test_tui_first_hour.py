"""What a new user hit in the chat app in their first hour (issue 16), driven with Textual's pilot at the sizes they
used, on the real engine with a small synthetic model and a real history file."""

from __future__ import annotations

import pytest

pytest.importorskip("textual")

import test_tui  # noqa: E402
from test_tui import drive, notifications, running, started, type_text, until  # noqa: E402

from trit.app.tui.app import TritApp  # noqa: E402
from trit.app.tui.widgets.chat_view import MessageBox  # noqa: E402
from trit.app.tui.widgets.conversation_list import ConversationList  # noqa: E402
from trit.app.tui.widgets.prompt import PromptInput  # noqa: E402

# the chat app tests' fixtures: a TRIT_HOME of its own, a tiny model as the default, two saved conversations
home, tiny, small, with_tiny, stored = test_tui.home, test_tui.tiny, test_tui.small, test_tui.with_tiny, test_tui.stored


@pytest.mark.parametrize("width", [38, 39, 40])
@drive
async def test_the_app_starts_and_resizes_at_38_to_40_columns(with_tiny, width):
    app = TritApp()
    async with app.run_test(size=(width, 12)) as pilot:
        chat = await started(pilot)
        for size in ((120, 36), (width, 12), (80, 24), (width, 12)):
            await pilot.resize_terminal(*size)
            await pilot.pause(0.2)
        assert app.screen is chat and app.return_code is None
    assert app.return_code in (None, 0)


def shown(widget) -> bool:
    return widget.display and widget.region.width > 0


@pytest.mark.parametrize("size", [(80, 24), (40, 12)])
@drive
async def test_the_conversation_list_can_be_shown_when_narrow_and_opens_a_conversation(stored, size):
    app = TritApp()
    async with app.run_test(size=size) as pilot:
        chat = await started(pilot)
        sidebar, prompt = chat.query_one("#sidebar"), chat.query_one(PromptInput)
        assert not shown(sidebar)  # no room for it beside the conversation
        await pilot.press("f3")
        await pilot.pause(0.1)
        assert shown(sidebar) and isinstance(app.focused, ConversationList)
        await pilot.press("escape")  # closes it again, back to the message box
        await pilot.pause(0.1)
        assert not shown(sidebar) and app.focused is prompt
        await pilot.press("f3")
        await pilot.pause(0.1)
        listing = chat.query_one(ConversationList)
        bread = next(i for i, c in enumerate(listing.conversations) if c.id == stored["bread"])
        listing.highlighted = bread
        await pilot.press("enter")
        await until(pilot, lambda: chat.dialogue.conversation_id == stored["bread"], what="the conversation to open")
        await pilot.pause(0.1)
        assert not shown(sidebar) and shown(prompt) and app.focused is prompt


@drive
async def test_the_conversation_list_can_be_hidden_when_wide(stored):
    app = TritApp()
    async with app.run_test(size=(120, 36)) as pilot:
        chat = await started(pilot)
        sidebar = chat.query_one("#sidebar")
        assert shown(sidebar)
        await pilot.press("f3")  # the list is there but not focused: F3 goes to it
        await pilot.pause(0.1)
        assert shown(sidebar) and isinstance(app.focused, ConversationList)
        await pilot.press("f3")  # focused: F3 hides it, and the conversation takes the width
        await pilot.pause(0.1)
        assert not shown(sidebar) and chat.query_one("#main").region.width == 120
        await pilot.press("f3")
        await pilot.pause(0.1)
        assert shown(sidebar)


@drive
async def test_typing_after_opening_a_search_hit_goes_to_the_message_box(stored):
    app = TritApp()
    async with running(app) as pilot:
        chat = await started(pilot)
        await pilot.press("ctrl+f")
        await type_text(pilot, "soda")
        await until(pilot, lambda: app.screen.hits, what="search hits")
        await pilot.press("enter")
        await until(pilot, lambda: chat.dialogue.conversation_id == stored["bread"], what="the hit to open")
        assert isinstance(app.focused, MessageBox) and "soda" in app.focused.text  # the hit, to copy it
        await type_text(pilot, "More please")
        prompt = chat.query_one(PromptInput)
        assert prompt.text == "More please" and app.focused is prompt


@pytest.mark.parametrize("size", [(80, 24), (70, 20), (40, 12)])
@drive
async def test_every_part_of_the_settings_dialog_can_be_reached_and_seen(with_tiny, size):
    app = TritApp()
    async with app.run_test(size=size) as pilot:
        await started(pilot)
        await pilot.press("ctrl+o")
        await pilot.pause(0.3)
        box = app.screen.query_one("#settings-box").content_region

        def seen(widget) -> bool:  # its whole width, and some of its height (the system prompt is taller than the
            inside = box.intersection(widget.region)  # form at 40x12)
            return inside.height > 0 and inside.width == widget.region.width

        assert seen(app.screen.query_one("#save")) and seen(app.screen.query_one("#cancel"))
        reached = set()
        for _ in range(9):
            await pilot.press("tab")
            await pilot.pause(0.1)
            reached.add(app.focused.id)
            assert seen(app.focused), f"{app.focused.id} has focus out of sight at {size}"
        assert {"system", "temperature", "top_p", "max_tokens", "seed", "as-default", "save", "cancel"} <= reached


async def first_run(pilot):
    from trit.app.tui.screens.first_run import FirstRunScreen

    await until(pilot, lambda: isinstance(pilot.app.screen, FirstRunScreen), what="the first-run screen")
    await pilot.pause(0.2)
    return pilot.app.screen


def usable(app, widget) -> bool:
    """Something a key does something on, in sight."""
    from textual.widgets import Button, Input, Select

    screen = app.screen.region
    return isinstance(widget, (Button, Input, Select)) and screen.intersection(widget.region).height > 0


@pytest.mark.parametrize("size", [(80, 24), (40, 12)])
@drive
async def test_every_tab_stop_of_the_first_run_screen_is_a_choice_and_tab_enter_chooses_the_demo(home, size):
    from trit.app.settings import load_settings

    app = TritApp()
    async with app.run_test(size=size) as pilot:
        await first_run(pilot)
        assert app.focused.id == "download"
        for _ in range(6):  # around the whole screen, more than once
            await pilot.press("tab")
            await pilot.pause(0.05)
            assert usable(app, app.focused), f"Tab reached {app.focused!r}"
        for _ in range(6):
            await pilot.press("shift+tab")
            await pilot.pause(0.05)
            assert usable(app, app.focused), f"Shift+Tab reached {app.focused!r}"
        while app.focused.id != "demo":
            await pilot.press("tab")
        await pilot.press("enter")
        await started(pilot)
    assert load_settings().default_model == "demo"


@drive
async def test_after_a_failed_download_the_keyboard_lands_on_a_choice(home, monkeypatch):
    import socket

    with socket.socket() as closed:  # a port on this computer with nothing listening: the download fails at once
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    app = TritApp()
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await first_run(pilot)
        await pilot.press("enter")  # download
        await until(pilot, lambda: screen.query_one("#first-run-message").has_class("error") and not screen.busy,
                    what="the download to fail")
        await pilot.pause(0.2)
        assert usable(app, app.focused) and app.focused.id == "download"
        await pilot.press("tab")
        assert usable(app, app.focused) and app.focused.id == "demo"


@drive
async def test_a_paste_longer_than_the_context_leaves_no_conversation_behind(with_tiny):
    from test_tui import rows

    app = TritApp()
    async with running(app) as pilot:
        chat = await started(pilot)
        text = "ternary " * 20000  # far more than the tiny model's context
        chat.prompt.text = text
        await pilot.press("enter")
        await until(pilot, lambda: not chat.generating and any("context" in n for n in notifications(app)),
                    what=lambda: f"the refusal; shown: {notifications(app)}")
        await pilot.pause(0.2)
        assert chat.prompt.text.strip() == text.strip()  # given back to shorten it
        assert not chat.chat.boxes()
        assert [c.title for c in chat.query_one(ConversationList).conversations] == []
    assert rows("SELECT COUNT(*) FROM conversations") == [(0,)]


@drive
async def test_notices_show_config_words_in_brackets_as_written(home, tiny):
    from test_tui import configure

    configure(tiny, keys={"no_such_action": "ctrl+b"})
    app = TritApp()
    async with app.run_test(size=(100, 32), notifications=True) as pilot:
        await started(pilot)
        await until(pilot, lambda: any("no_such_action" in n for n in notifications(app)))
        await pilot.pause(0.3)
        from textual.widgets._toast import Toast

        shown = [str(t.render()) for screen in app.screen_stack for t in screen.query(Toast)]
        assert any("config.toml [keys]: no action called no_such_action" in s for s in shown), shown


@drive
async def test_also_for_new_conversations_keeps_the_seed(with_tiny):
    from textual.widgets import Checkbox, Input

    from trit.app.settings import load_settings

    app = TritApp()
    async with running(app) as pilot:
        chat = await started(pilot)
        await pilot.press("ctrl+o")
        await pilot.pause(0.2)
        dialog = app.screen
        dialog.query_one("#seed", Input).value = "7"
        dialog.query_one("#temperature", Input).value = "0.5"
        dialog.query_one("#as-default", Checkbox).value = True
        await pilot.press("ctrl+s")
        await until(pilot, lambda: app.screen is chat, what="the dialog to close")
        assert chat.dialogue.params == {"seed": 7, "temperature": 0.5}
        await pilot.press("ctrl+n")
        await pilot.pause(0.2)
        _, model = app.service.model(chat.dialogue.model)
        params = app.service.params_for(chat.dialogue, model)
        assert (params.seed, params.temperature) == (7, 0.5)  # a new conversation starts with them
    settings = load_settings()
    assert (settings.seed, settings.temperature) == (7, 0.5)


@drive
async def test_the_context_warning_and_the_notice_in_the_conversation_agree(stored):
    from textual.widgets import Static

    from trit.app.tui.widgets.chat_view import Notice

    app = TritApp()
    async with running(app) as pilot:
        chat = await started(pilot)
        await chat.open_conversation(stored["rivers"])  # 2 oldest messages left out, 3487 tokens in the context
        await pilot.pause(0.2)
        warning = chat.query_one("#context-warning", Static)
        notices = [str(n.render()) for n in chat.query(Notice)]
        assert warning.display and notices
        assert "2 oldest messages are left out" in str(warning.render())
        assert all("2 oldest messages are left out" in n for n in notices)


@drive
async def test_two_messages_sent_at_once_get_one_reply_each_in_turn(with_tiny):
    from test_tui import replies_ended

    app = TritApp()
    async with running(app) as pilot:
        chat = await started(pilot)
        chat.prompt.post_message(PromptInput.Submitted("one"))  # two Enters faster than the first reply starts
        chat.prompt.post_message(PromptInput.Submitted("two"))
        await until(pilot, lambda: replies_ended(pilot) >= 2 and not chat.generating, what="both replies")
        await pilot.pause(0.3)
        roles = [(m.role, m.content if m.role == "user" else "") for m in chat.dialogue.messages]
        assert roles == [("user", "one"), ("assistant", ""), ("user", "two"), ("assistant", "")]
        assert [b.role for b in chat.chat.boxes()] == ["user", "assistant", "user", "assistant"]


@drive
async def test_search_finds_words_by_their_beginning_as_you_type(stored):
    app = TritApp()
    async with running(app) as pilot:
        await started(pilot)
        await pilot.press("ctrl+f")
        await type_text(pilot, "Dan")  # of "Danube"
        await until(pilot, lambda: app.screen.hits, what="a hit for the beginning of a word")
        assert {h.conversation_id for h in app.screen.hits} == {stored["rivers"]}
        await type_text(pilot, "ube Vien")
        await until(pilot, lambda: app.screen.hits and all("Vienna" in h.snippet for h in app.screen.hits),
                    what="hits with both words")


@drive
async def test_page_keys_in_the_message_box_scroll_the_conversation_and_esc_clears_a_draft(stored):
    app = TritApp()
    async with app.run_test(size=(80, 24)) as pilot:
        chat = await started(pilot)
        await chat.open_conversation(stored["rivers"])
        await pilot.pause(0.3)
        view = chat.chat
        assert view.max_scroll_y > 0 and view.scroll_y == view.max_scroll_y and app.focused is chat.prompt
        await pilot.press("pageup")
        await until(pilot, lambda: view.scroll_y < view.max_scroll_y, what="the conversation to scroll up")
        await pilot.press("pagedown", "pagedown")
        await until(pilot, lambda: view.scroll_y == view.max_scroll_y, what="the conversation to scroll down")
        await type_text(pilot, "a draft")
        await pilot.press("escape")
        assert chat.prompt.text == ""
        await pilot.press("ctrl+z")
        assert chat.prompt.text == "a draft"


async def models_dialog(pilot):
    from trit.app.tui.screens.models import ModelsScreen

    await pilot.press("f4")
    await until(pilot, lambda: isinstance(pilot.app.screen, ModelsScreen), what="the models dialog")
    return pilot.app.screen


async def import_in(pilot, dialog, folder) -> None:
    """Type a folder in the models dialog and wait for its import to end."""
    from textual.widgets import Input

    dialog.query_one("#import-path", Input).focus()
    await type_text(pilot, str(folder))
    await pilot.press("enter")
    await until(pilot, lambda: folder.name in [r.name for r in dialog.rows] and not dialog.transfer.busy,
                what=lambda: f"the import; said: {dialog.transfer.said}")


@drive
async def test_models_are_imported_chosen_and_made_default_from_inside_the_app(home, tiny, small):
    """F4: import a second model with its progress, talk to it in this conversation, make it the default."""
    from test_tui import configure, replies_ended, rows
    from textual.widgets import OptionList

    from trit.app.service import default_model_name
    from trit.app.settings import load_settings

    configure(tiny)
    app = TritApp()
    async with running(app) as pilot:
        chat = await started(pilot)
        await type_text(pilot, "hello")
        await pilot.press("enter")
        await until(pilot, lambda: replies_ended(pilot) >= 1, what="the first reply")
        dialog = await models_dialog(pilot)
        assert [r.name for r in dialog.rows] == [chat.dialogue.model, "demo"]  # a folder of its own, and the demo
        await import_in(pilot, dialog, small)
        listing = dialog.query_one("#model-list", OptionList)
        assert app.focused is listing and dialog.highlighted == "bitnet-small"
        assert default_model_name(app.settings) == str(tiny)  # a default the user chose stays
        await pilot.press("ctrl+d")  # the default for new conversations
        await pilot.pause(0.1)
        await pilot.press("enter")  # and this conversation's model
        await until(pilot, lambda: app.screen is chat, what="the dialog to close")
        assert chat.dialogue.model == "bitnet-small"
        await type_text(pilot, "again")
        await pilot.press("enter")
        await until(pilot, lambda: replies_ended(pilot) >= 2, what="the reply of the new model")
        assert chat.dialogue.messages[-1].model == "bitnet-small"
        assert rows("SELECT model FROM conversations") == [("bitnet-small",)]
        assert "bitnet-small" in str(chat.query_one("#status").render())
    assert load_settings().default_model == "bitnet-small"


@pytest.mark.parametrize("size", [(40, 12), (80, 24)])
@drive
async def test_the_status_line_keeps_the_context_meter_when_narrow(stored, size):
    app = TritApp()
    async with app.run_test(size=size) as pilot:
        chat = await started(pilot)
        await chat.open_conversation(stored["rivers"])
        await pilot.pause(0.3)
        line = chat.query_one("#status")
        shown = str(line.render())
        assert "context" in shown and len(shown) <= line.content_size.width, shown
        assert "bitnet-tiny" in shown


def test_a_first_token_in_milliseconds_is_not_shown_as_zero_seconds():
    from trit.app.tui.widgets.status_line import StatusLine

    line = StatusLine()
    line.show_speed(60.0, 0.004)
    assert "first token 4 ms" in str(line.render())
    line.show_speed(60.0, 1.5)
    assert "first token 1.50 s" in str(line.render())


@drive
async def test_export_goes_where_trit_was_started_and_reads_as_the_app_shows_it(stored, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    app = TritApp()
    async with running(app) as pilot:
        chat = await started(pilot)
        await chat.open_conversation(stored["rivers"])
        await pilot.press("ctrl+s")
        await pilot.pause(0.2)
        await pilot.press("enter")
        exported = work / "rivers-of-europe.md"
        await until(pilot, exported.exists, what="the export in the folder trit was started in")
    text = exported.read_text()
    assert "**Trit**" in text and "**Assistant**" not in text
    assert text.rstrip().endswith("*(stopped)*")  # the last reply was stopped, as the app marks it


@drive
async def test_the_app_opens_the_conversation_last_used(stored):
    app = TritApp()
    async with running(app) as pilot:
        chat = await started(pilot)
        assert chat.dialogue.conversation_id == stored["rivers"] and app.focused is chat.prompt
        await pilot.press("ctrl+n")
        await pilot.pause(0.1)
        assert chat.dialogue.conversation_id is None and not chat.chat.boxes()


@drive
async def test_a_model_installed_from_the_app_replaces_the_demo_as_the_default(home, small):
    """The first run chose the demo; importing a real model in F4 makes it the default, as `trit import` does."""
    from test_tui import configure

    from trit.app.settings import load_settings

    configure("demo")
    app = TritApp()
    async with running(app) as pilot:
        await started(pilot)
        await import_in(pilot, await models_dialog(pilot), small)
        assert any("New conversations now use bitnet-small" in n for n in notifications(app))
    assert load_settings().default_model == "bitnet-small"


@pytest.mark.parametrize("size", [(80, 24), (40, 12)])
@drive
async def test_the_models_dialog_shows_its_list_on_a_small_terminal(with_tiny, size):
    app = TritApp()
    async with app.run_test(size=size) as pilot:
        await started(pilot)
        dialog = await models_dialog(pilot)
        await pilot.pause(0.2)
        box = dialog.query_one("#models-box").content_region
        listing = dialog.query_one("#model-list")
        assert box.intersection(listing.region).height >= 2 and app.focused is listing


@drive
async def test_a_text_file_is_attached_to_the_next_message_and_counted_first(with_tiny, tmp_path):
    from test_tui import replies_ended
    from textual.widgets import Input

    notes = tmp_path / "notes.txt"
    notes.write_text("The Danube flows through Vienna.\n")
    huge = tmp_path / "huge.txt"
    huge.write_text("ternary " * 20000)
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"caf\xe9\n")
    app = TritApp()
    async with running(app) as pilot:
        chat = await started(pilot)

        async def attach(path) -> str:
            await pilot.press("f5")
            await pilot.pause(0.2)
            entry = app.screen.query_one("#entry", Input)
            entry.value = str(path)
            await pilot.press("enter")
            await pilot.pause(0.3)
            refused = app.screen is not chat and str(app.screen.query_one("#entry-error").render())
            if refused:
                await pilot.press("escape")
                await pilot.pause(0.1)
            return refused

        assert "huge.txt is" in await attach(huge) and "tokens" in await attach(huge)
        assert "not UTF-8" in await attach(latin)
        assert "cannot read" in await attach(tmp_path / "missing.txt")
        assert not await attach(notes)
        assert "notes.txt" in str(chat.query_one("#attachments").render())
        await type_text(pilot, "Summarise")
        await pilot.press("enter")
        await until(pilot, lambda: replies_ended(pilot) >= 1, what="the reply")
        sent = chat.dialogue.messages[-2]
        assert sent.role == "user" and sent.content == "notes.txt:\n\nThe Danube flows through Vienna.\n\nSummarise"
        assert not chat.attachments and not chat.query_one("#attachments").display


@drive
async def test_a_saved_prompt_is_chosen_in_the_conversation_settings(with_tiny):
    from textual.widgets import Select

    from trit.app.prompts import save_prompt

    save_prompt("pirate", "Answer as a pirate would.")
    app = TritApp()
    async with running(app) as pilot:
        chat = await started(pilot)
        await pilot.press("ctrl+o")
        await pilot.pause(0.2)
        app.screen.query_one("#saved-prompt", Select).value = "pirate"
        await pilot.pause(0.1)
        await pilot.press("ctrl+s")
        await until(pilot, lambda: app.screen is chat, what="the dialog to close")
        assert chat.dialogue.system == "Answer as a pirate would."
