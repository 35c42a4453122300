"""What a person does to conversations from the chat screen: start one, open one (from the list or a search hit),
rename, delete, export, change its settings or its model, write the last reply again, edit the last message, copy a
message or a code block. The binding table in app/tui/actions.py names these actions ("rename" runs action_rename),
so the keys, the command palette and the help screen reach them by those names."""

from __future__ import annotations

import os
import re
from pathlib import Path

from textual.widgets import OptionList, Static

from ....attachments import read_text_file, with_files
from ....settings import SAMPLING_SETTINGS
from ....store import StoreError
from ...clipboard import copy
from ...reply_runner import USER_ERRORS
from ...widgets.chat_view import MessageBox, code_blocks
from ...widgets.conversation_list import ConversationList
from ...widgets.prompt import PromptInput
from ...widgets.status_line import model_label
from ..code_picker import CodePickerScreen
from ..confirm import ConfirmScreen
from ..models import ModelsScreen
from ..search import SearchScreen
from ..settings import ConversationSettings, SettingsScreen
from ..text_entry import TextEntryScreen

BUSY = "A reply is being written — Esc stops it first."


class ConversationActions:
    """Mixed into ChatScreen: it shows what these change (show, show_title, refresh_list) and writes replies
    (start_reply)."""

    async def action_new_chat(self) -> None:
        if self.generating:
            self.app.notify(BUSY, severity="warning")
            return
        await self.start_new(logged=self.store is not None)

    async def action_new_incognito(self) -> None:
        if self.generating:
            self.app.notify(BUSY, severity="warning")
            return
        await self.start_new(logged=False)
        self.app.notify("Incognito: this conversation is kept in memory only, never written to disk.")

    async def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        if not isinstance(event.option_list, ConversationList):
            return
        cid = int(event.option.id)
        if self.dialogue is not None and cid == self.dialogue.conversation_id:
            self.close_list()
            self.focus_prompt()
            return
        if self.generating:
            self.app.notify(BUSY, severity="warning")
            return
        await self.open_conversation(cid)

    def action_search(self) -> None:
        if self.store is None:
            self.app.notify("There is no saved history to search this time.", severity="warning")
            return

        async def opened(hit) -> None:
            if hit is None:
                return
            if self.generating:
                self.app.notify(BUSY, severity="warning")
                return
            await self.open_conversation(*hit)

        self.app.push_screen(SearchScreen(self.store, self.app.now), opened)

    def action_rename(self) -> None:
        d = self.dialogue
        if d is None:
            return

        def renamed(title: str | None) -> None:
            if not title:
                return
            if d.conversation_id is not None and d.logged:
                try:
                    self.store.rename(d.conversation_id, title)
                except StoreError as e:
                    self.error(e)
                    return
            d.title = " ".join(title.split())
            self.show_title()
            self.refresh_list()

        self.app.push_screen(TextEntryScreen("Rename conversation", d.title,
                                             "Enter renames · Esc cancels"), renamed)

    def action_delete(self) -> None:
        if self.dialogue is None:  # no conversation could be started (the history or the model failed): nothing shown
            self.app.notify("Nothing to delete: no conversation is open.")
            return
        if self.dialogue.conversation_id is None:
            if self.dialogue.messages:  # an unsaved (incognito) conversation: nothing on disk to delete
                self.ask_delete(None, "this incognito conversation", len(self.dialogue.messages))
            else:
                self.app.notify("Nothing to delete: this conversation is empty.")
            return
        self.ask_delete(self.dialogue.conversation_id, self.dialogue.title or "Untitled",
                        len(self.dialogue.messages))

    def action_delete_highlighted(self) -> None:
        listing = self.query_one(ConversationList)
        cid = listing.highlighted_id
        if cid is None:
            return
        c = listing.conversation(cid)
        self.ask_delete(cid, c.title or "Untitled", c.message_count)

    def ask_delete(self, cid: int | None, title: str, count: int) -> None:
        if self.generating and (cid is None or cid == self.dialogue.conversation_id):
            self.app.notify(BUSY, severity="warning")
            return

        async def answered(yes: bool | None) -> None:
            if not yes:
                return
            if cid is not None:
                try:
                    self.store.delete_conversation(cid)
                except StoreError as e:
                    self.error(e)
                    return
                self.app.notify(f"Deleted “{title}”.")
            if cid is None or cid == self.dialogue.conversation_id:
                await self.start_new(logged=self.store is not None)
            else:
                self.refresh_list()

        what = f"{count} message{'s' if count != 1 else ''}"
        detail = (f"Its {what} are removed from this computer for good; there is no other copy." if cid is not None
                  else f"Its {what} are forgotten now.")
        self.app.push_screen(ConfirmScreen(f"Delete “{title}”?", detail, "Delete"), answered)

    def action_export(self) -> None:
        d = self.dialogue
        if d is None or not d.logged:
            self.app.notify("An incognito conversation is never written to disk, so it is not exported.",
                            severity="warning")
            return
        if d.conversation_id is None:
            self.app.notify("Nothing to export yet.")
            return
        # where `trit` was started, as a shell user expects of a file a command writes; home if that is not writable
        folder = Path.cwd() if os.access(Path.cwd(), os.W_OK) else Path.home()
        suggestion = unique_path(folder / f"{slug(d.title) or 'conversation'}.md")

        def check(path: str) -> str | None:
            target = Path(path).expanduser()
            if target.is_dir():
                return f"{target} is a folder: add a file name"
            if not target.parent.is_dir():
                return f"there is no folder {target.parent}"
            return None

        def chosen(path: str | None) -> None:
            if not path:
                return
            target = Path(path).expanduser()
            try:
                text = self.store.to_markdown(d.conversation_id)
                target.write_text(text, encoding="utf-8")
            except StoreError as e:
                self.error(e)
                return
            except OSError as e:
                self.error(f"cannot write {target}: {e.strerror or e}")
                return
            self.app.notify(f"Saved to {target}", title="Exported")

        self.app.push_screen(TextEntryScreen("Export to Markdown", str(suggestion),
                                             "Enter saves (an existing file is replaced) · Esc cancels", check),
                             chosen)

    def action_settings(self) -> None:
        d = self.dialogue
        if d is None:
            return
        settings = self.app_service.settings

        def saved(result: ConversationSettings | None) -> None:
            if result is None:
                return
            d.system, d.params = result.system, result.params
            if d.conversation_id is not None and d.logged:
                try:
                    self.store.update_conversation(d.conversation_id, system=d.system, params=d.params)
                except StoreError as e:
                    self.error(e)
                    return
            if result.as_default:
                settings.system_prompt = result.system
                for name in SAMPLING_SETTINGS:
                    if name in result.params:
                        setattr(settings, name, result.params[name])
                if self.app.save_settings():
                    self.app.notify("Saved for this conversation and as the default for new ones.")
                return
            self.app.notify("Saved for this conversation.")

        self.app.push_screen(SettingsScreen(d.system, d.params, settings, d.model, d.logged), saved)

    def action_attach(self) -> None:
        d = self.dialogue
        if d is None:
            return

        def check(path: str) -> str | None:
            source = Path(path).expanduser()
            try:
                text = read_text_file(source)
                room = self.app_service.measure(d, with_files(self.attachments + [(source.name, text)], ""))
            except OSError as e:
                return f"cannot read {source}: {e.strerror or e}"
            except USER_ERRORS as e:
                return " ".join(str(e).split())
            if not room.fits:
                return (f"{source.name} is {self.app_service.count_tokens(d, text):,} tokens; with what is attached, "
                        f"{max(room.room, 0):,} fit in the {room.n_ctx:,}-token context beside a reply: attach a part")
            self.pending_attachment = (source.name, text)
            return None

        def attached(path: str | None) -> None:
            if path and self.pending_attachment is not None:
                self.show_attachments(self.attachments + [self.pending_attachment])
            self.pending_attachment = None
            self.focus_prompt()

        self.pending_attachment = None
        start = str(Path.cwd()) + os.sep
        self.app.push_screen(TextEntryScreen("Attach a text file", start, "Enter attaches it to your next message "
                                             "· Esc cancels", check), attached)

    def show_attachments(self, files: list[tuple[str, str]]) -> None:
        self.attachments = files
        line = self.query_one("#attachments", Static)
        line.display = bool(files)
        line.update("Attached: " + ", ".join(name for name, _ in files) + "  ·  Esc in an empty box removes them")

    def action_models(self) -> None:
        if self.generating:
            self.app.notify(BUSY, severity="warning")
            return
        d = self.dialogue
        if d is None:
            return

        def chosen(name: str | None) -> None:
            if name and name != d.model:
                d.model = name
                if d.conversation_id is not None and d.logged:
                    try:
                        self.store.update_conversation(d.conversation_id, model=name)
                    except StoreError as e:
                        self.error(e)
                self.app.notify(f"This conversation now talks to {model_label(name)}.")
            self.show_status()
            self.load_model()

        self.app.push_screen(ModelsScreen(d.model, self.app.settings), chosen)

    async def action_regenerate(self) -> None:
        if self.generating:
            self.app.notify(BUSY, severity="warning")
            return
        d = self.dialogue
        if d is None or not d.messages:
            self.app.notify("There is no reply to write again yet.")
            return
        with self.reply_claimed():
            boxes = self.chat.boxes()
            if boxes and boxes[-1].role == "assistant":
                await self.chat.remove_from(boxes[-1])
        service = self.app_service
        await self.start_reply(lambda cancel: service.regenerate(d, cancel))

    async def on_prompt_input_edit_last_requested(self, event: PromptInput.EditLastRequested) -> None:
        await self.action_edit_last()

    async def action_edit_last(self) -> None:
        if self.generating:
            self.app.notify(BUSY, severity="warning")
            return
        d = self.dialogue
        last = next((m for m in reversed(d.messages) if m.role == "user"), None) if d else None
        if last is None:
            self.app.notify("There is no message of yours to edit yet.")
            return
        self.editing = True  # Enter now sends it again in place of the old one (Replying.submit)
        self.prompt.text = last.content
        self.prompt.move_cursor(self.prompt.document.end)
        self.prompt.border_title = "Editing your last message · Enter sends it again · Esc cancels"
        self.focus_prompt()

    def copy_target(self) -> MessageBox | None:
        focused = self.focused
        if isinstance(focused, MessageBox):
            return focused
        boxes = self.chat.boxes()
        return next((b for b in reversed(boxes) if b.role == "assistant" and b.text), boxes[-1] if boxes else None)

    def action_copy_message(self) -> None:
        box = self.copy_target()
        if box is None or not box.text:
            self.app.notify("There is no message to copy yet.")
            return
        where = copy(self.app, box.text)
        self.app.notify(f"Copied the {'reply' if box.role == 'assistant' else 'message'} to {where}.")

    def action_copy_code(self) -> None:
        box = self.copy_target()
        blocks = code_blocks(box.text) if box is not None else []
        if not blocks:
            self.app.notify("No code block in this message." if box else "There is no message yet.")
            return

        def picked(index: int | None) -> None:
            if index is not None:
                language, code = blocks[index]
                where = copy(self.app, code)
                self.app.notify(f"Copied the {language + ' ' if language else ''}code block to {where}.")

        if len(blocks) == 1:
            picked(0)
        else:
            self.app.push_screen(CodePickerScreen(blocks), picked)


def slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:60]


def unique_path(path: Path) -> Path:
    """The path, or the first of name-2, name-3 … that is free: the export never suggests a file that exists."""
    candidate, n = path, 2
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        n += 1
    return candidate
