"""`trit chat`: a conversation in the plain terminal, as `llm chat` and `ollama run` have it. One Service for the whole
session, so the model stays loaded and its KV cache holds the conversation: a follow-up prefills only its own tokens.
Each turn is Service.send, as in `trit ask` and the chat app, so the history is the same one they show.

Typed on a terminal: line editing (readline), `!multi` … `!end` for a message of several lines, `exit`, `quit` or
Ctrl-D to leave; Ctrl-C stops an answer and keeps it, Ctrl-C at the prompt leaves. Piped in: each line is a message,
no prompts are shown, and the answers alone go to stdout.
"""

from __future__ import annotations

import signal
import sys

import click

from .service import Dialogue, Service, Turn
from .terminal import SIGPIPE_EXIT, StopSignals, is_user_error, quiet_stdout, say

PROMPT, MORE = "> ", "… "
SIGPIPE = SIGPIPE_EXIT - 128  # signal.SIGPIPE, which Windows lacks
LEAVE = ("exit", "quit")
MULTI, END = "!multi", "!end"
HELP = f"{LEAVE[0]}, {LEAVE[1]} or Ctrl-D leaves; {MULTI} starts a message of several lines, {END} sends it; " \
       "Ctrl-C stops an answer"


class Lines:
    """Lines typed or piped in, as text. Bytes that are not UTF-8 come through as surrogates (see not_utf8), so one
    bad line is refused without ending the session."""

    def __init__(self):
        self.terminal = sys.stdin.isatty()
        self.editing = self.terminal and sys.stdout.isatty()
        if self.editing:
            try:
                import readline  # noqa: F401  (input() then edits the line and recalls earlier ones with ↑)
            except ImportError:  # Windows
                pass
        if self.terminal:
            sys.stdin.reconfigure(errors="surrogateescape")  # input() decodes with these

    def read(self, prompt: str) -> str:
        """The next line, without its newline; EOFError at the end (Ctrl-D), KeyboardInterrupt on Ctrl-C."""
        if self.editing:
            return input(prompt)
        if self.terminal:  # stdout goes to a file: the prompt goes where the person looks
            sys.stderr.write(prompt)
            sys.stderr.flush()
        raw = sys.stdin.buffer.readline()
        if not raw:
            raise EOFError
        return raw.decode("utf-8", "surrogateescape").rstrip("\r\n")


def not_utf8(text: str) -> str | None:
    """Where a line read with surrogateescape stops being UTF-8 ("byte 3 is 0xe9"), or None when it is UTF-8."""
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "surrogateescape")
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as e:
            return f"byte {e.start} is 0x{raw[e.start]:02x}"
        return "it holds characters that cannot be written"  # lone surrogates typed as such


def read_message(lines: Lines) -> str:
    """One message: a line, or the lines between !multi and !end (joined with newlines)."""
    line = lines.read(PROMPT if lines.terminal else "")
    if line.strip() != MULTI:
        return line
    parts = []
    while True:
        try:
            line = lines.read(MORE if lines.terminal else "")
        except EOFError:
            say(f"trit: the message begun with {MULTI} was not sent: it had no {END}")
            raise
        if line.strip() == END:
            return "\n".join(parts)
        parts.append(line)


def run(service: Service, dialogue: Dialogue, note: str | None = None) -> int:
    """The session, until the person leaves; returns the exit code (0, or 128 + the signal that ended it)."""
    lines = Lines()
    if lines.terminal:
        where = f", conversation {dialogue.conversation_id}" + (f" ({dialogue.title})" if dialogue.title else "") \
            if dialogue.conversation_id is not None else ""
        say(f"Chatting with {dialogue.model}{where}{'' if dialogue.logged else ', keeping nothing'}\n{HELP}")
    if note:
        say(note)
    while True:
        try:
            text = read_message(lines)
        except EOFError:
            if lines.terminal:
                say("")  # Ctrl-D leaves the cursor after the prompt
            return 0
        except KeyboardInterrupt:
            if lines.terminal:
                say("")
            return 128 + signal.SIGINT
        if not text.strip():
            continue
        if text.strip() in LEAVE:
            return 0
        bad = not_utf8(text)
        if bad:
            say(f"trit: that message is not UTF-8 text ({bad}); nothing was sent: retype it")
            continue
        code = answer(service, dialogue, text)
        if code is not None:
            return code


def answer(service: Service, dialogue: Dialogue, text: str) -> int | None:
    """One turn, streamed to stdout. None to go on; an exit code when the session must end (a second Ctrl-C, SIGTERM,
    the terminal closed, stdout's reader gone). A message that cannot be answered (too long for the context, a model
    that does not load) is one line, and the session goes on."""
    turn = None
    gone = False
    with StopSignals() as stop:
        try:
            for event in service.send(dialogue, text, stop.event):
                if isinstance(event, Turn):
                    turn = event
                elif not gone:
                    try:
                        click.echo(event.text, nl=False)
                        sys.stdout.flush()
                    except OSError:  # nobody reads any more: stop between two tokens, keep what was said, leave
                        gone = True
                        quiet_stdout()
                        stop.signum = stop.signum or SIGPIPE
                        stop.event.set()
        except KeyboardInterrupt:  # a second Ctrl-C: the reply is kept as far as it went (Service.reply)
            say("\ntrit: stopped; the partial answer is kept" if dialogue.logged else "\ntrit: stopped")
            return stop.exit_code
        except Exception as e:
            if not is_user_error(e):
                raise
            say(f"trit: {e}")
            return None
    result = turn.result
    if not gone:
        try:
            click.echo()
            sys.stdout.flush()
        except OSError:
            quiet_stdout()
            return 128 + SIGPIPE
    if result.dropped_messages:
        say(f"trit: the {result.dropped_messages} oldest messages were left out to fit the {result.n_ctx}-token "
            "context")
    if turn.unsaved:
        say(f"trit: {turn.unsaved}")
    if result.finish_reason == "cancelled" and stop.signum != SIGPIPE:
        kept = f"; the partial answer is kept in conversation {turn.conversation_id}" \
            if dialogue.logged and not turn.unsaved else ""
        say(f"trit: stopped{kept}")
    if stop.signum is not None and stop.signum != signal.SIGINT:  # SIGTERM, the terminal closed, stdout gone
        return stop.exit_code
    return None
