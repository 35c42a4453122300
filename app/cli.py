"""The `trit` command: a thin layer over the engine's Python API."""

from __future__ import annotations

import json
import os
import sys
from functools import wraps
from pathlib import Path

import click

from trit import __version__

from .paths import human_size, paths
from .terminal import SIGPIPE_EXIT, StopSignals, is_user_error, quiet_stdout, say


def friendly_errors(fn):
    """User mistakes and Ctrl-C end in one line on stderr, never a traceback."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            click.echo("trit: interrupted", err=True)
            sys.exit(130)
        except BrokenPipeError:  # `trit history list | head -1`: the reader has all it wanted
            quiet_stdout()
            sys.exit(SIGPIPE_EXIT)
        except OSError as e:
            click.echo(f"trit: {e.filename or ''}{': ' if e.filename else ''}{e.strerror or e}", err=True)
            sys.exit(1)
        except Exception as e:
            if not is_user_error(e):
                raise
            click.echo(f"trit: {e}", err=True)
            sys.exit(1)

    return wrapper


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="trit")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Trit: an offline, private assistant running BitNet b1.58 on your CPU.

    `trit` alone opens the chat app; `trit chat` is a conversation in the plain terminal (as `llm chat`, `ollama
    run`); the other commands script it. Without a model installed the demo model that ships inside Trit answers;
    `trit pull` downloads BitNet b1.58 2B4T.

    \b
    Examples:
      trit                                  the chat app
      trit chat                             chat in the plain terminal, turn after turn
      trit ask "What is a ternary weight?"  one answer, streamed to stdout
      trit pull                             download BitNet b1.58 2B4T (1.2 GB)
      trit pull --list                      the other models it downloads by name
      trit ask --help                       every option of a command, with examples"""
    # Every file and folder Trit makes is its user's alone: conversations, system prompts, models, partial downloads,
    # derived weights, caches, and exports too (they hold the same conversations; a file that already exists keeps
    # its mode). One umask here covers the engine's writes as well, which a library must not decide for scripts.
    os.umask(0o077)
    if ctx.invoked_subcommand is None:
        run_chat_app()


@cli.command("paths")
def paths_cmd() -> None:
    """Print where Trit keeps models, history, settings and caches (TRIT_HOME moves them all): each folder, and the
    two files you may open yourself, the history (SQLite) and the settings (config.toml).

    \b
    Examples:
      trit paths
      sqlite3 "$(trit paths | awk '$1 == "history" {print $2}')" .tables"""
    from .settings import config_path
    from .store import DEFAULT_FILE

    p = paths()
    for name, value in (("data", p.data), ("models", p.models), ("history", p.data / DEFAULT_FILE),
                        ("config", p.config), ("settings", config_path()), ("cache", p.cache)):
        click.echo(f"{name:8} {value}")


def run_chat_app() -> None:
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        click.echo(click.get_current_context().get_help())  # `trit` piped or redirected: what it can do
        return
    from .tui import run  # Textual is imported here only, so `trit ask` and scripts start without it

    click.get_current_context().exit(run())


# ---- trit ask and trit chat ---------------------------------------------------------------------------------------
# The KV cache's element type (issue 20); without it, config.toml's kv_type. A name, not a path: settings has it.
KV_OPTION = click.option("--kv", type=click.Choice(["f16", "q8", "f32"]),
                         help="The KV cache's elements: f16, q8 (int8: half the memory, measured by `trit bench "
                              "--kv-quality`) or f32 (exact) (default: kv_type in config.toml, else q8).")


def conversation_options(fn):
    """The options `trit ask` and `trit chat` share: which conversation, which model, how it samples."""
    options = [
        click.option("-s", "--system", help="System prompt (for a new conversation, or to change it when "
                                            "continuing)."),
        click.option("-t", "--saved-prompt", "saved", metavar="NAME",
                     help="A system prompt saved with `trit prompts save NAME`, as -s takes one."),
        click.option("-m", "--model", "model_name", metavar="NAME",
                     help="An installed model (`trit models`), a model folder, a .gguf file, or 'demo' (default: "
                          "the default model)."),
        click.option("--temperature", type=click.FloatRange(min=0), help="0 is greedy (default: the model's own)."),
        click.option("--top-p", type=click.FloatRange(min=0, max=1, min_open=True),
                     help="Nucleus sampling: draw from the likeliest tokens that make up this share of the "
                          "probability (default: the model's own)."),
        click.option("--max-tokens", type=click.IntRange(min=1),
                     help="Longest reply in tokens (default: max_tokens in config.toml, 1024)."),
        click.option("--seed", type=int, help="Same seed, same model, same prompt: same answer."),
        click.option("-c", "--continue", "continue_last", is_flag=True,
                     help="Continue the most recent conversation."),
        click.option("--cid", type=int, metavar="ID", help="Continue conversation ID (see `trit history list`)."),
        click.option("-n", "--no-log", is_flag=True,
                     help="Keep nothing: the questions and answers are not written to history."),
        # long only: llm has no -t for threads, and -t is a saved prompt there (a template)
        click.option("--threads", type=click.IntRange(min=1), help="Threads (default: every core)."),
        KV_OPTION,
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def system_prompt(system: str | None, saved: str | None) -> str | None:
    """-s TEXT, or the text saved under -t NAME; None when neither was given."""
    if system is not None and saved is not None:
        raise click.UsageError("give either -s or -t, not both")
    if saved is None:
        return system
    from .prompts import saved_prompt

    return saved_prompt(saved)


def open_store(continuing: bool, no_log: bool):
    """(the history, or None, and why nothing of this session can be kept, or None). --no-log on a new conversation
    opens no file at all. A history that cannot be made here now (a full disk, a read-only folder) still lets a new
    conversation be answered: that is said after."""
    from .store import Store, WriteError

    try:
        return (Store() if continuing or not no_log else None), None
    except WriteError as e:
        if continuing:
            raise
        return None, f"your question and its answer were not saved: {e}"


def open_dialogue(service, *, continue_last: bool, cid: int | None, model_name: str | None, system: str | None,
                  overrides: dict, no_log: bool, check=None):
    """The conversation to go on with (-c, --cid), with the model, system prompt and sampling given here stored
    as its own; or a new one. `check(dialogue)` may refuse it before anything is stored."""
    from .store import WriteError

    if not (continue_last or cid is not None):
        dialogue = service.new(model=model_name, system=system, params=overrides, logged=not no_log)
        if check is not None:
            check(dialogue)
        return dialogue
    dialogue = service.last(logged=not no_log) if continue_last else service.open(cid, logged=not no_log)
    if model_name:
        dialogue.model = service.model(model_name)[0].name
    if system is not None:
        dialogue.system = system
    dialogue.params.update(overrides)
    if check is not None:
        check(dialogue)
    if dialogue.logged and (model_name or system is not None or overrides):
        try:
            service.store.update_conversation(dialogue.conversation_id, system=dialogue.system,
                                              params=dialogue.params, model=dialogue.model)
        except WriteError:
            pass  # the history takes nothing now: answered all the same, and the turn says it was not kept
    return dialogue


def sampling_overrides(temperature, top_p, max_tokens, seed) -> dict:
    from trit.engine import SamplingParams

    overrides = {k: v for k, v in (("temperature", temperature), ("top_p", top_p), ("max_tokens", max_tokens),
                                   ("seed", seed)) if v is not None}
    SamplingParams(**overrides)  # out of range (nan, a negative seed): one line now, before anything is stored
    return overrides


def demo_note(service, dialogue, continuing: bool, model_name: str | None) -> str | None:
    """The line that says the demo answers only because nothing else is installed; None otherwise."""
    from .service import DEMO_NAME

    if dialogue.model == DEMO_NAME and not continuing and not model_name and not service.settings.default_model:
        return ("trit: the demo model answered (a tiny model that ships inside Trit), since no model is installed: "
                "`trit pull` downloads BitNet b1.58 2B4T")
    return None


def read_files(files: tuple[Path, ...]) -> list[tuple[str, str]]:
    """(the name as given, its text) of each -f file."""
    from .attachments import read_text_file

    return [(str(path), read_text_file(path)) for path in files]


def refuse_oversized(service, dialogue, text: str, files: list[tuple[str, str]]) -> None:
    """Files too large for the context are refused before anything is sent or stored, each counted with the model's
    tokenizer against what fits."""
    from trit.engine import InputError

    room = service.measure(dialogue, text)
    if room.fits:
        return
    sizes = ", ".join(f"{name} is {service.count_tokens(dialogue, body)} tokens" for name, body in files)
    raise InputError(f"{sizes} ({room.tokens} with the question); {max(room.room, 0)} fit in the {room.n_ctx}-token "
                     f"context beside a reply of up to {room.reply_room} (--max-tokens): nothing was sent; give a "
                     "part of it")


def read_prompt(words: tuple[str, ...], files: list[tuple[str, str]] = ()) -> tuple[str, str]:
    """The files given with -f, each under its name, then whatever was piped in (`cat notes.txt | trit ask
    "summarise"`), then the arguments, like llm; and the title for a new conversation: the question when there is
    one, not the first line of a file (the files' names when there is no question). Text that is not UTF-8 is
    refused, naming the first bad byte, rather than guessed at: the person decides how to convert it. Only blanks
    is nothing: a usage error before anything is stored or sent."""
    from trit.engine import InputError

    piped = ""
    if not sys.stdin.isatty():
        data = sys.stdin.buffer.read()
        try:
            piped = data.decode("utf-8").strip()
        except UnicodeDecodeError as e:
            raise InputError(f"what came on stdin is not UTF-8 text (byte {e.start} is 0x{data[e.start]:02x}): "
                             "convert it first, e.g. `iconv -f latin1 -t utf-8 FILE | trit ask ...`") from None
    question = " ".join(words)
    question = question if question.strip() else ""
    try:
        question.encode("utf-8")
    except UnicodeEncodeError as e:  # undecodable bytes in argv arrive as surrogates
        raise InputError(f"the question is not UTF-8 text (character {e.start + 1} is not): retype it or "
                         "convert it first") from None
    if not piped and not question and not files:
        raise click.UsageError('nothing to ask: give the question as arguments or on stdin, e.g. trit ask "Hello"')
    from .attachments import with_files

    title = (question or ", ".join(name for name, _ in files)) if piped or files else ""
    return with_files(list(files), piped, question), title


def first_code_block(text: str) -> str | None:
    """The body of the first fenced code block (``` or ~~~) in Markdown text, as llm -x prints it; None if none."""
    import re

    match = re.search(r"^[ \t]*(```+|~~~+)[^\n]*\n(.*?)^[ \t]*\1[ \t]*$", text, re.M | re.S)
    return match.group(2) if match else None


@cli.command()
@click.argument("prompt", nargs=-1)
@conversation_options
@click.option("-f", "--fragment", "files", multiple=True, metavar="FILE", type=click.Path(path_type=Path),
              help="A text file to put in the message, under its name, before the question (again for more). One "
                   "too large for the context is refused before anything is sent.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the reply as one JSON object when it ends: one of the messages `trit history show --json` "
                   "lists (content, model, token counts, speeds, conversation_id).")
@click.option("-u", "--usage", "show_usage", is_flag=True, help="Then print the tokens used on stderr.")
@click.option("-x", "--extract", is_flag=True,
              help="Print only the first fenced code block of the answer (all of it if it has none).")
@click.option("--server", metavar="URL", envvar="TRIT_SERVER", show_envvar=True,
              help="Ask a running `trit serve` at URL (e.g. http://127.0.0.1:8080/v1) instead of loading the model "
                   "here; TRIT_API_KEY is its key. Nothing is kept here: the server's --log decides.")
@friendly_errors
def ask(prompt, system, saved, model_name, temperature, top_p, max_tokens, seed, continue_last, cid, no_log, threads,
        kv, files, as_json, show_usage, extract, server) -> None:
    """Answer once and exit: the answer streams to stdout; Ctrl-C stops it and keeps what was said. Files given
    with -f come first, each under its name, then what is piped in, then the question, in one message. The options
    follow simonw's `llm` where they meet.

    \b
    Examples:
      trit ask "What is a ternary weight?"
      cat notes.txt | trit ask "Summarise this"
      trit ask -f notes.txt -f todo.md "What is left to do?"
      trit ask -c "And in one sentence?"
      trit ask -t pirate "Hello"                (a prompt saved with `trit prompts save`)
      trit ask -n -m demo "Something private"
      trit ask --json --seed 1 "Hi" | jq -r .content
      trit ask -x "A shell loop over *.txt" > loop.sh
      trit ask --server http://127.0.0.1:8080/v1 "Hi"   (a running `trit serve` answers)"""
    from .service import Service, Turn
    from .store import title_from

    if continue_last and cid is not None:
        raise click.UsageError("give either -c or --cid, not both")
    if extract and as_json:
        raise click.UsageError("give either -x or --json, not both")
    system = system_prompt(system, saved)
    attached = read_files(files)
    text, title = read_prompt(prompt, attached)
    overrides = sampling_overrides(temperature, top_p, max_tokens, seed)
    continuing = continue_last or cid is not None
    if server:
        if continuing:
            raise click.UsageError("--server asks one question: -c and --cid continue a conversation kept here")
        return ask_server(server, system, text, overrides, model_name, as_json, show_usage, extract)
    # why nothing of this turn can be kept: it is answered all the same, and that is said after
    store, unsaved = open_store(continuing, no_log)
    service = Service(store, threads=threads, kv=kv)
    try:
        dialogue = open_dialogue(service, continue_last=continue_last, cid=cid, model_name=model_name,
                                 system=system, overrides=overrides, no_log=no_log,
                                 check=lambda d: refuse_oversized(service, d, text, attached) if attached else None)
        if not continuing:
            dialogue.title = title_from(title)
        # the demo answers only because nothing else is there: said once, after the answer
        demo_by_default = demo_note(service, dialogue, continuing, model_name)
        turn, printing, reader_gone = None, not (as_json or extract), False
        with StopSignals() as stop:
            for event in service.send(dialogue, text, stop.event):
                if isinstance(event, Turn):
                    turn = event
                elif printing:
                    try:
                        click.echo(event.text, nl=False)
                        sys.stdout.flush()
                    except OSError:  # nobody reads any more: stop between two tokens and keep what was said
                        printing, reader_gone = False, True
                        quiet_stdout()
                        stop.signum = stop.signum or 13  # exit as a process that SIGPIPE ended would (141)
                        stop.event.set()
        result = turn.result
        try:
            if as_json:
                click.echo(json.dumps(turn.to_dict(), indent=2, ensure_ascii=False))
            elif extract and not reader_gone:
                block = first_code_block(result.text)
                shown = result.text if block is None else block
                if shown:
                    click.echo(shown, nl=not shown.endswith("\n"))
            elif result.text and not result.text.endswith("\n") and not reader_gone:
                click.echo()
        except OSError:
            reader_gone = True
            quiet_stdout()
        if result.dropped_messages:
            say(f"trit: the {result.dropped_messages} oldest messages were left out to fit the {result.n_ctx}-token "
                "context")
        if show_usage:
            reused = f" ({result.reused_tokens} reused from the last turn)" if result.reused_tokens else ""
            say(f"trit: tokens: {result.prompt_tokens} prompt{reused}, {result.generated_tokens} generated, "
                f"of a {result.n_ctx}-token context")
        if demo_by_default:
            say(demo_by_default)
        unsaved = unsaved or turn.unsaved
        if result.finish_reason == "cancelled" and not (reader_gone and stop.signum == 13):
            kept = f"; the partial answer is kept in conversation {turn.conversation_id}" \
                if dialogue.logged and not unsaved else ""
            say(f"trit: stopped{kept}")
        if unsaved:  # the answer was shown (or printed as JSON); a script must still learn it was not kept
            say(f"trit: {unsaved}")
        elif turn.cache_note:  # only the next turn is slower: said, and not an error
            say(f"trit: {turn.cache_note}")
        if result.finish_reason == "cancelled":
            sys.exit(stop.exit_code)
        if unsaved:
            sys.exit(1)
    finally:
        service.close()
        if store is not None:
            store.close()


def ask_server(url: str, system: str | None, text: str, overrides: dict, model_name: str | None, as_json: bool,
               show_usage: bool, extract: bool) -> None:
    """`trit ask --server URL`: the question to a running `trit serve`, the answer printed as `trit ask` prints it."""
    from .server.client import ServerReply
    from .settings import load_settings

    system = load_settings().system_prompt if system is None else system
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    reply = ServerReply(url, messages, overrides, os.environ.get("TRIT_API_KEY") or None, model_name)
    pieces = []
    for piece in reply.stream():
        pieces.append(piece)
        if not (as_json or extract):
            click.echo(piece, nl=False)
            sys.stdout.flush()
    answer, usage = "".join(pieces), reply.usage
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    if as_json:
        click.echo(json.dumps({"role": "assistant", "content": answer, "model": reply.served, "server": url,
                               "finish_reason": reply.finish_reason, "prompt_tokens": usage.get("prompt_tokens"),
                               "reused_tokens": cached, "generated_tokens": usage.get("completion_tokens")},
                              indent=2, ensure_ascii=False))
    elif extract:
        shown = first_code_block(answer) or answer
        if shown:
            click.echo(shown, nl=not shown.endswith("\n"))
    elif answer and not answer.endswith("\n"):
        click.echo()
    if show_usage:
        reused = f" ({cached} reused by the server)" if cached else ""
        say(f"trit: tokens: {usage.get('prompt_tokens')} prompt{reused}, {usage.get('completion_tokens')} generated")


@cli.command("chat")
@conversation_options
@friendly_errors
def chat_cmd(system, saved, model_name, temperature, top_p, max_tokens, seed, continue_last, cid, no_log,
             threads, kv) -> None:
    """Chat in the plain terminal, turn after turn (as `llm chat` and `ollama run` do; the chat app is `trit`
    alone). Each answer streams; the conversation is kept in the history the app shows, and the model keeps it in
    memory, so a follow-up costs only its own tokens. Ctrl-C stops an answer and keeps it (marked stopped); Ctrl-C
    at the prompt, Ctrl-D, `exit` or `quit` leave. `!multi` starts a message of several lines, `!end` sends it.
    Piped in, each line is a message.

    \b
    Examples:
      trit chat
      trit chat -c                              (go on with the most recent conversation)
      trit chat -m demo -t pirate               (a prompt saved with `trit prompts save`)
      printf 'Hello\\nAnd then?\\n' | trit chat -n"""
    from . import repl
    from .service import Service

    if continue_last and cid is not None:
        raise click.UsageError("give either -c or --cid, not both")
    system = system_prompt(system, saved)
    overrides = sampling_overrides(temperature, top_p, max_tokens, seed)
    continuing = continue_last or cid is not None
    store, unsaved = open_store(continuing, no_log)
    service = Service(store, threads=threads, kv=kv)
    try:
        dialogue = open_dialogue(service, continue_last=continue_last, cid=cid, model_name=model_name,
                                 system=system, overrides=overrides, no_log=no_log)
        if unsaved:
            say(f"trit: {unsaved}")
        code = repl.run(service, dialogue, demo_note(service, dialogue, continuing, model_name))
    finally:
        service.close()
        if store is not None:
            store.close()
    sys.exit(code)


# ---- trit prompts ---------------------------------------------------------------------------------------------------
@cli.group()
def prompts() -> None:
    """System prompts saved by name, for `trit ask -t NAME` and `trit chat -t NAME` (llm's templates, Ollama's
    SYSTEM). They are kept in prompts.toml beside config.toml, readable only by you.

    \b
    Examples:
      trit prompts save pirate "Answer as a pirate would."
      trit prompts save reviewer < reviewer.txt
      trit prompts list
      trit ask -t pirate "Where is the gold?"
    """


@prompts.command("save")
@click.argument("name")
@click.argument("text", nargs=-1)
@friendly_errors
def prompts_save(name, text) -> None:
    """Save TEXT (or what is piped in) as the system prompt NAME, replacing one of that name.

    \b
    Examples:
      trit prompts save pirate "Answer as a pirate would."
      trit prompts save reviewer < reviewer.txt"""
    from trit.engine import InputError

    from .prompts import check_name, prompts_path, save_prompt

    check_name(name)
    body = " ".join(text)
    if not body and not sys.stdin.isatty():
        data = sys.stdin.buffer.read()
        try:
            body = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"what came on stdin is not UTF-8 text (byte {e.start} is 0x{data[e.start]:02x}): "
                             "convert it first, e.g. `iconv -f latin1 -t utf-8 FILE | trit prompts save NAME`"
                             ) from None
    try:
        body.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes in argv arrive as surrogates
        raise InputError("the prompt is not UTF-8 text: retype it or convert it first") from None
    replaced = save_prompt(name, body)
    click.echo(f"{'replaced' if replaced else 'saved'} {name} in {prompts_path()}", err=True)


@prompts.command("list")
@click.option("--json", "as_json", is_flag=True, help='Print a JSON list: [{"name": …, "text": …}, …].')
@friendly_errors
def prompts_list(as_json) -> None:
    """The saved prompts: each name, and the beginning of its text.

    \b
    Examples:
      trit prompts list
      trit prompts list --json | jq -r '.[].name'"""
    from .prompts import saved_prompts

    saved = saved_prompts()
    if as_json:
        click.echo(json.dumps([{"name": k, "text": v} for k, v in saved.items()], indent=2, ensure_ascii=False))
        return
    if not saved:
        click.echo('no saved prompts yet: trit prompts save NAME "You are …"', err=True)
    width = max((len(k) for k in saved), default=0)
    for name, text in saved.items():
        line = one_line_of(text)
        click.echo(f"{name:{width}}  {line[:70] + '…' if len(line) > 71 else line}")


@prompts.command("show")
@click.argument("name")
@friendly_errors
def prompts_show(name) -> None:
    """Print the text saved as NAME.

    \b
    Examples:
      trit prompts show pirate"""
    from .prompts import saved_prompt

    click.echo(saved_prompt(name))


@prompts.command("rm")
@click.argument("name")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation (needed when stdin is not a terminal).")
@friendly_errors
def prompts_rm(name, yes) -> None:
    """Remove the saved prompt NAME (conversations that used it keep their copy). Asks first.

    \b
    Examples:
      trit prompts rm pirate"""
    from .prompts import remove_prompt, saved_prompt

    saved_prompt(name)  # an unknown name is said before anything is asked
    confirmed(f"Remove the saved prompt {name}", yes)
    remove_prompt(name)
    click.echo(f"removed {name}", err=True)


# ---- trit history ---------------------------------------------------------------------------------------------------
@cli.group()
def history() -> None:
    """Conversations kept in the local history database (`trit paths` shows the file).

    \b
    Examples:
      trit history list -q lighthouse
      trit history show 12 --json
      trit history search "tide tables"
      trit history export 12 -o tides.md
      trit history rm 12"""


def ago(iso: str) -> str:
    from datetime import datetime, timezone

    import humanize

    return humanize.naturaltime(datetime.now(timezone.utc) - datetime.fromisoformat(iso))


def one_line_of(text: str) -> str:
    """Text on one row of a listing: newlines and runs of blanks become one space."""
    return " ".join(text.split())


def confirmed(question: str, yes: bool) -> None:
    """Go on only when the person agreed: -y/--yes, or "y" typed on a terminal. A script (no terminal on stdin) is
    not asked but told, in one line, to add -y: a deletion is never made by whatever happens to be piped in."""
    from trit.engine import InputError

    if yes:
        return
    if not sys.stdin.isatty():
        raise InputError(f"{question[0].lower()}{question[1:]}: stdin is not a terminal to ask on, so nothing was "
                         "deleted; add -y to do it without asking")
    if not click.confirm(f"{question}?", default=False, err=True):
        click.echo("trit: nothing was deleted", err=True)
        sys.exit(1)


@history.command("list")
@click.option("-n", "--count", default=20, show_default=True, type=click.IntRange(min=1),
              help="How many conversations to list.")
@click.option("-q", "--query", metavar="WORDS", help="Only conversations with a message holding all these words.")
@click.option("-m", "--model", metavar="NAME", help="Only conversations with this model (as `trit models` names it).")
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON list: id, title, model, system, params, created, updated, message_count.")
@friendly_errors
def history_list(count, query, model, as_json) -> None:
    """The most recent conversations, newest first: id, when, messages, model, title.

    \b
    Examples:
      trit history list -n 5
      trit history list -q "tide tables" -m demo
      trit history list --json | jq '.[0].id'"""
    from .store import Store

    with Store() as store:
        conversations = store.list_conversations(limit=count, query=query, model=model)
    if as_json:
        click.echo(json.dumps([c.to_dict() for c in conversations], indent=2, ensure_ascii=False))
        return
    if not conversations:
        click.echo("no conversation matches" if query or model else
                   'no conversations yet: trit ask "…" or trit starts one', err=True)
    for c in conversations:
        click.echo(f"{c.id:>5}  {ago(c.updated):>16}  {c.message_count:>3} msgs  {c.model[:24]:24}  "
                   f"{one_line_of(c.title)}")


@history.command("show")
@click.argument("cid", type=int)
@click.option("--json", "as_json", is_flag=True,
              help="The conversation and its messages as JSON: {\"conversation\": {…}, \"messages\": [{…}, …]}.")
@friendly_errors
def history_show(cid, as_json) -> None:
    """One conversation, whole, as Markdown (or JSON).

    \b
    Examples:
      trit history show 12
      trit history show 12 --json | jq -r '.messages[-1].content'"""
    from .store import Store

    with Store() as store:
        click.echo(json.dumps(store.to_json(cid), indent=2, ensure_ascii=False) if as_json
                   else store.to_markdown(cid))


@history.command("search")
@click.argument("text", nargs=-1, required=True)
@click.option("-n", "--count", default=20, show_default=True, type=click.IntRange(min=1),
              help="How many messages to list.")
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON list: conversation_id, message_id, title, role, snippet, created.")
@friendly_errors
def history_search(text, count, as_json) -> None:
    """Messages containing these words, best match first: conversation id, title, role, the words around the match
    (matches in [brackets]), one row each.

    \b
    Examples:
      trit history search lighthouse
      trit history search "tide tables" --json"""
    from dataclasses import asdict

    from .store import Store

    with Store() as store:
        hits = store.search(" ".join(text), limit=count)
    if as_json:
        click.echo(json.dumps([asdict(h) for h in hits], indent=2, ensure_ascii=False))
        return
    if not hits:
        click.echo("no message matches", err=True)
    for h in hits:
        click.echo(f"{h.conversation_id:>5}  {one_line_of(h.title)[:30]:30}  {h.role:9}  {one_line_of(h.snippet)}")


@history.command("rm")
@click.argument("cids", type=int, nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Delete every conversation.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation (needed when stdin is not a terminal).")
@friendly_errors
def history_rm(cids, everything, yes) -> None:
    """Delete conversations, for good: they are not kept anywhere else. Asks first, as `trit rm` does.

    \b
    Examples:
      trit history rm 12
      trit history rm 12 13 14 --yes
      trit history rm --all"""
    from .store import Store

    if everything == bool(cids):
        raise click.UsageError("give conversation ids, or --all")
    with Store() as store:
        if everything:
            confirmed("Delete every conversation", yes)
            click.echo(f"deleted {store.delete_all()} conversations", err=True)
            return
        cids = list(dict.fromkeys(cids))  # an id given twice is deleted once
        found = [store.conversation(cid) for cid in cids]  # every id must exist before anything is deleted
        what = f"conversation {found[0].id} ({one_line_of(found[0].title) or 'untitled'}, " \
               f"{found[0].message_count} messages)" if len(found) == 1 else \
               f"{len(found)} conversations ({', '.join(str(c.id) for c in found)})"
        confirmed(f"Delete {what}", yes)
        for cid in cids:
            store.delete_conversation(cid)
        click.echo(f"deleted {len(cids)} conversation{'s' if len(cids) != 1 else ''}", err=True)


@history.command("export")
@click.argument("cid", type=int)
@click.option("--format", "fmt", type=click.Choice(["md", "json"]), default="md", show_default=True,
              help="Markdown, or JSON as `trit history show --json` prints it.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True, path_type=Path),
              help="Write to this file instead of stdout.")
@friendly_errors
def history_export(cid, fmt, output) -> None:
    """A conversation as Markdown or JSON.

    \b
    Examples:
      trit history export 12 -o tides.md
      trit history export 12 --format json > tides.json"""
    from .store import Store

    with Store() as store:
        text = store.to_markdown(cid) if fmt == "md" else json.dumps(store.to_json(cid), indent=2, ensure_ascii=False)
    if output is None:
        click.echo(text)
    else:
        output.write_text(text + "\n", encoding="utf-8")
        click.echo(f"wrote {output}", err=True)


def synthetic_folder(preset: str, seed: int) -> Path:
    """A random model of a preset's shape, written once into the cache and reused."""
    from trit.engine.tools import synthetic

    if preset not in synthetic.PRESETS:
        raise click.BadParameter(f"unknown preset {preset!r}; choose from {', '.join(synthetic.PRESETS)}")
    folder = paths().cache / "synthetic" / f"{preset}-seed{seed}"
    if not (folder / "config.json").exists():
        click.echo(f"writing a random {preset} model to {folder} (once)…", err=True)
        synthetic.write_model(folder, preset, seed=seed, overwrite=True)
    return folder


def model_path(name: str) -> Path:
    """What a MODEL argument names: a folder or file that exists, else an installed model or the demo, as `trit ask
    -m` takes them."""
    from .service import choose_model
    from .settings import Settings

    if Path(name).expanduser().exists():
        return Path(name).expanduser()
    return choose_model(name, Settings()).path


@cli.command()
@click.argument("model", required=False)
@click.option("--synthetic", "preset", metavar="PRESET",
              help="Benchmark a random model of this shape: tiny, small, 2b4t.")
@click.option("--threads", "-t", type=click.IntRange(min=1), help="Threads (default: every core).")
@click.option("--head", type=click.Choice(["bf16", "q8", "q4"]), default="q4", show_default=True,
              help="Output head: the exact bf16 embedding, or an 8- or 4.5-bit copy derived once (best logits exact).")
@click.option("--ternary", type=click.Choice(["auto", "tq2", "t5"]), default="auto", show_default=True,
              help="Ternary weights: the checkpoint's 2-bit packing, a derived 1.6-bit copy, or what the CPU runs "
                   "best.")
@click.option("--pp", "n_prompt", default=512, show_default=True, type=click.IntRange(min=0), help="Prompt tokens.")
@click.option("--tg", "n_gen", default=128, show_default=True, type=click.IntRange(min=0), help="Generated tokens.")
@click.option("--ctx", "long_context", default=0, type=click.IntRange(min=0),
              help="Also decode --tg tokens after filling this many positions (memory of a full conversation).")
@click.option("--repetitions", "-r", default=3, show_default=True, type=click.IntRange(min=1),
              help="Runs of each measurement; the median is reported, every run is listed.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--conversation", is_flag=True,
              help="Instead: time to first token of each turn of a 5-turn conversation of ~3000 tokens.")
@click.option("--warm", is_flag=True,
              help="With --conversation: the last turn in a new process, with the cache the earlier turns saved to "
                   "disk (as `trit ask -c` finds it) and without; and the time each save took.")
@click.option("--vs", "versus", type=click.Choice(["llama.cpp", "bitnet.cpp"]),
              help="Then run llama.cpp (llama-cpp-python) on the same weights as GGUF TQ2_0 and TQ1_0, or bitnet.cpp "
                   "as I2_S with an f16 and a q4_0 embedding, its runs alternated with Trit's; print the ratios.")
@click.option("--bitnet-cpp", "bitnet_cpp", metavar="BUILD_DIR", envvar="TRIT_BITNET_CPP",
              help="With --vs bitnet.cpp: its build folder, holding bin/llama-bench and bin/llama-quantize "
                   "(env TRIT_BITNET_CPP).")
@KV_OPTION
@click.option("--document", "document_tokens", default=2300, show_default=True, type=click.IntRange(min=1),
              help="With --conversation: the first turn's document in tokens (about 4000: turn 2 at depth 4000).")
@click.option("--kv-quality", is_flag=True,
              help="Instead: what the f16 and q8 caches cost against an exact f32 one on held-out text (the demo's "
                   "heldout.txt): KL, top-1 agreement and perplexity.")
@friendly_errors
def bench(model, preset, threads, head, ternary, n_prompt, n_gen, long_context, repetitions, as_json,
          conversation=False, warm=False, versus=None, bitnet_cpp=None, kv=None, document_tokens=2300,
          kv_quality=False) -> None:
    """Measure prompt processing (ppN) and generation (tgN) speed in tokens/s, against the memory bus. MODEL is an
    installed model's name, 'demo', a model folder or a .gguf file.

    \b
    Examples:
      trit bench demo
      trit bench --synthetic 2b4t --threads 2
      trit bench bitnet-b1.58-2B-4T --json
      trit bench --synthetic 2b4t --conversation
      trit bench --synthetic 2b4t --conversation --warm
      trit bench --synthetic 2b4t --threads 2 --vs bitnet.cpp --bitnet-cpp ~/bitnet.cpp/build
      trit bench --synthetic 2b4t --threads 2 --ctx 4096 --kv q8
      trit bench demo --kv-quality"""
    from trit.engine.tools import bench as engine_bench

    if (model is None) == (preset is None):
        raise click.UsageError("give a model (a name from `trit models`, 'demo' or a folder) or --synthetic PRESET")
    if long_context and long_context <= n_gen:
        raise click.UsageError("--ctx must be larger than --tg")
    if warm and not conversation:
        raise click.UsageError("--warm goes with --conversation")
    if bitnet_cpp and versus != "bitnet.cpp" and \
            click.get_current_context().get_parameter_source("bitnet_cpp") == click.core.ParameterSource.COMMANDLINE:
        raise click.UsageError("--bitnet-cpp goes with --vs bitnet.cpp")
    if versus == "bitnet.cpp":
        from trit.engine.tools import bench_bitnetcpp

        build = bench_bitnetcpp.find_build(bitnet_cpp)  # one clear line before any model is written or loaded
    folder = synthetic_folder(preset, 0) if preset else model_path(model)
    from trit.engine.runtime.native import DEFAULT_KV

    kv = kv or DEFAULT_KV
    if kv_quality:
        bench_kv_quality(folder, threads, as_json)
        return
    if warm:
        bench_warm(folder, threads, head, ternary, as_json, kv)
        return
    if conversation:
        c = engine_bench.run_conversation(folder, threads=threads, head=head, ternary=ternary, kv=kv,
                                          document_tokens=document_tokens)
        if as_json:
            click.echo(json.dumps(c.to_dict(), indent=2))
            return
        click.echo(f"model    {c.model}\nkernel   {c.kernel}, {c.threads} threads; KV cache {kv}")
        click.echo("turn  prompt  reused  new  generated  first token   prefill tok/s  decode tok/s")
        for t in c.turns:
            click.echo(f"{t.turn:>4}  {t.prompt_tokens:>6}  {t.reused_tokens:>6}  {t.new_tokens:>4}  "
                       f"{t.generated_tokens:>9}  {t.time_to_first_token_s:>9.2f} s  {t.prefill_tok_s:>13.1f}  "
                       f"{t.decode_tok_s:>12.1f}")
        click.echo(f"turn {c.turns[-1].turn} with nothing cached: prefill {c.cold_last_turn_prefill_s:.2f} s")
        return
    if versus == "bitnet.cpp":
        r, peer = bench_bitnetcpp.run(folder, build, threads=threads, head=head, ternary=ternary, n_prompt=n_prompt,
                                      n_gen=n_gen, rounds=repetitions, long_context=long_context,
                                      log=lambda m: click.echo(m, err=True))
        if as_json:
            click.echo(json.dumps({**r.to_dict(), "vs_bitnet_cpp": bench_bitnetcpp.comparison(r, peer)}, indent=2))
        else:
            click.echo(bench_bitnetcpp.format_table(r, peer, build))
        return
    if versus:
        from trit.engine.tools import bench_llamacpp

        bench_llamacpp.require(folder)  # one clear line now, not after Trit's own run
    r = engine_bench.run(folder, threads=threads, head=head, ternary=ternary, n_prompt=n_prompt, n_gen=n_gen,
                         repetitions=repetitions, long_context=long_context, kv=kv)
    vs = bench_llamacpp.run(folder, threads=r.threads, n_prompt=n_prompt, n_gen=n_gen, repetitions=repetitions,
                            log=lambda m: click.echo(m, err=True)) if versus else None
    if as_json:
        click.echo(json.dumps({**r.to_dict(), **({"vs_llama_cpp": bench_llamacpp.comparison(r, vs)} if vs else {})},
                              indent=2))
        return
    runs = lambda values: ", ".join(f"{v:.1f}" for v in values)  # noqa: E731
    click.echo(f"model    {r.model}")
    click.echo(f"kernel   {r.kernel}, {r.threads} thread{'s' if r.threads != 1 else ''}; "
               f"ternary {r.ternary}, head {r.head}, KV cache {r.kv}")
    if n_prompt:
        click.echo(f"pp{n_prompt:<6} {r.pp_tok_s:8.1f} tok/s   (runs: {runs(r.pp_runs)})")
    if n_gen:
        click.echo(f"tg{n_gen:<6} {r.tg_tok_s:8.1f} tok/s   (runs: {runs(r.tg_runs)})")
        click.echo(f"cpu      {r.cpu_s_per_token:.4f} CPU-seconds per generated token (user+sys, all threads; runs: "
                   f"{', '.join(f'{c:.4f}' for c in r.cpu_runs)})")
        click.echo(f"bus      {r.bytes_per_token_mb:.0f} MB read per token; "
                   f"read bandwidth {r.read_bandwidth_gbs:.1f} GB/s; {r.bus_share:.0%} of the bus limit reached")
    if r.long_context:
        click.echo(f"tg{n_gen} after {r.long_context - n_gen} positions  {r.long_tg_tok_s:.1f} tok/s")
    click.echo(f"load to first logits  {r.load_to_first_logits_s * 1000:.0f} ms")
    click.echo(f"peak RSS {r.peak_rss_mb:.0f} MB")
    if vs:
        click.echo("\n" + bench_llamacpp.format_table(r, vs))


def bench_kv_quality(folder: Path, threads, as_json: bool) -> None:
    from trit.assets import DEMO_HELDOUT
    from trit.engine import load
    from trit.engine.tools import fidelity

    with load(folder, threads=threads) as model:
        ids = model.tokenizer.encode(DEMO_HELDOUT.read_text(encoding="utf-8"))[:4096]
    rows = fidelity.kv_quality(folder, ids, threads=threads)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"model    {folder}\nheld-out {rows[0]['positions']} positions of {DEMO_HELDOUT.name}, windows of "
               "1024, the exact bf16 head; against the f32 cache")
    click.echo("kv    mean KL (nats)  top-1 agreement  perplexity")
    for r in rows:
        click.echo(f"{r['kv']:<4}  {r['kl_nats']:>14.2e}  {r['top1_agreement']:>15.4f}  {r['perplexity']:>10.4f}")


def bench_warm(folder: Path, threads, head, ternary, as_json: bool, kv: str) -> None:
    from trit.engine.tools import bench as engine_bench

    cache_file = paths().cache / "bench" / "conversation.kv"
    try:
        w = engine_bench.run_warm_conversation(folder, cache_file, threads=threads, head=head, ternary=ternary,
                                               kv=kv)
    finally:
        cache_file.unlink(missing_ok=True)
    if as_json:
        click.echo(json.dumps(w.to_dict(), indent=2))
        return
    click.echo(f"model    {w.model}\nkernel   {w.kernel}, {w.threads} threads")
    for i, s in enumerate(w.saves, 1):
        click.echo(f"turn {i} saved: {s['positions']} positions, {s['bytes_written'] / 1e6:.1f} MB written in "
                   f"{s['seconds']:.3f} s (file {s['file_bytes'] / 1e6:.1f} MB)")
    for name, t in (("with the saved cache", w.warm), ("without", w.cold)):
        click.echo(f"turn {t.turn} in a new process, {name}: first token after {t.time_to_first_token_s:.2f} s "
                   f"({t.prompt_tokens} prompt tokens, {t.reused_tokens} reused)")
    click.echo(f"reading the saved cache: {w.load_s:.2f} s")


# ---- models: trit pull, import, models, rm ---------------------------------------------------------------------------
class TransferBar:
    """A progress bar on stderr for a pull or an import: bytes, speed and time left (tqdm). Messages printed while
    it runs go above it."""

    def __init__(self, label: str):
        self.label, self.bar = label, None

    def __call__(self, p) -> None:  # engine.models.registry.Progress
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=p.total, initial=p.done, desc=self.label, unit="B", unit_scale=True,
                            unit_divisor=1000, file=sys.stderr, dynamic_ncols=True, mininterval=0.25,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}B/{total_fmt}B "
                                       "[{elapsed}<{remaining}, {rate_fmt}{postfix}]")
        self.bar.set_postfix_str(p.filename, refresh=False)
        self.bar.update(p.done - self.bar.n)

    def log(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(f"trit: {message}", file=sys.stderr)
        else:
            click.echo(f"trit: {message}", err=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def model_kind(m) -> str:
    """What runs an installed model, for messages: "bitnet", or "llama.cpp, llama Q4_K_M" for a GGUF."""
    details = " ".join(x for x in (m.architecture, m.file_type) if x)
    return f"{m.backend}, {details}" if details else m.backend


def default_before_install() -> str | None:
    """The default model before a pull or an import; None when config.toml cannot be read (the install goes ahead
    all the same, and leaves the default alone)."""
    from .service import default_model_name
    from .settings import SettingsError, load_settings

    try:
        return default_model_name(load_settings())
    except SettingsError:
        return None


def adopt_installed(name: str, was: str | None) -> None:
    """One line when the model just installed became the default (see service.adopt_installed). A config.toml that
    cannot be written does not undo the install: that is said in one line, and the default stays as it was."""
    from . import service
    from .settings import SettingsError

    if was is None:
        return
    try:
        line = service.adopt_installed(name, was)
    except SettingsError as e:
        say(f"trit: {name} is installed but not made the default model: {e}")
        return
    if line:
        click.echo(line)


def catalogue_rows(installed_sources: set[str]) -> list[tuple[str, ...]]:
    from trit.engine.models import catalogue

    return [("NAME", "PARAMS", "DOWNLOAD", "CONTEXT", "KV AT FULL CONTEXT", "FAMILY", "LICENCE", "REPO", "")] + [
        (e.name, catalogue.format_parameters(e.parameters), human_size(e.download_bytes), f"{e.context // 1024}K",
         human_size(e.full_context_kv_bytes), e.family, e.licence, e.repo,
         "installed" if f"hf:{e.repo}" in installed_sources else "")
        for e in catalogue.CATALOGUE]


def print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())


def show_catalogue(as_json: bool) -> None:
    """The models Trit pulls by name, with what each one costs, and whether it is installed already."""
    from trit.engine.models import catalogue, registry

    try:
        sources = {m.source for m in registry.installed(paths().models)}
    except OSError:  # the catalogue is worth showing even when the models folder cannot be read
        sources = set()
    if as_json:
        click.echo(json.dumps([{**e.to_dict(), "installed": f"hf:{e.repo}" in sources}
                               for e in catalogue.CATALOGUE], indent=2))
        return
    print_table(catalogue_rows(sources))
    click.echo("download sizes are computed from each model's shapes; a pull shows the hub's exact size as it starts. "
               "A conversation that fills the context takes the KV column in memory beside the weights", err=True)


@cli.command()
@click.argument("repo", metavar="[NAME | REPO]", required=False)
@click.option("--file", "file", metavar="FILE.gguf",
              help="One GGUF file of the repository to install (its path in the repository).")
@click.option("--revision", metavar="REV", help="A branch, tag or commit of the repository (default: main).")
@click.option("--name", help="The name to install it under (default: the repository's name; for a GGUF file, its "
                             "name without .gguf, lower-cased).")
@click.option("--list", "show_list", is_flag=True,
              help="List the models Trit pulls by name, with their download size, and download nothing.")
@friendly_errors
def pull(repo, file, revision, name, show_list) -> None:
    """Download a model from the Hugging Face Hub (default: microsoft/bitnet-b1.58-2B-4T), by its name in Trit's
    catalogue (`trit pull --list`) or by its repository.

    \b
      trit pull                           BitNet b1.58 2B4T (Trit's own engine)
      trit pull --list                    the models Trit knows by name, with sizes
      trit pull falcon-e-3b               one of them: tiiuae/Falcon-E-3B-Instruct
      trit pull OWNER/REPO                a BitNet checkpoint, or the repo's one GGUF
      trit pull OWNER/REPO --file F.gguf  one GGUF file of the repo (llama.cpp)
      trit pull OWNER/REPO --revision v2 --name mine

    GGUF models (Llama, Qwen, Gemma, …) run through llama.cpp: pip install "trit[gguf]".

    A repository of a family Trit does not run is refused after its config.json, before any weights. Only the
    files Trit needs are fetched, each checked against the sha256 the hub publishes; the model is ready only when
    all of them match. An interrupted pull continues where it stopped when run again. HF_ENDPOINT selects another
    hub, HF_TOKEN authenticates. This is the only command that uses the network. When the demo was the default
    model, the model pulled becomes it."""
    from trit.engine.models import catalogue, download, registry

    if show_list:
        if repo or file or revision or name:
            raise click.UsageError("--list downloads nothing: give it no model, --file, --revision or --name")
        show_catalogue(as_json=False)
        return
    if file and not repo:
        raise click.UsageError("--file needs the repository: trit pull OWNER/REPO --file FILE.gguf")
    command = "trit pull" + "".join(f" {flag}{value}" for flag, value in (
        ("", repo), ("--file ", file), ("--revision ", revision), ("--name ", name)) if value)
    repo, entry = catalogue.resolve(repo or download.DEFAULT_REPO)
    if entry is not None and not file:  # what it costs, before the hub is asked anything
        say(f"{entry.name}: {entry.repo} — {entry.family}, {catalogue.format_parameters(entry.parameters)} "
            f"parameters, about {human_size(entry.download_bytes)}")
    was = default_before_install()
    bar = TransferBar(name or (registry.gguf_name(file) if file else download.default_name(repo)))
    try:
        m = download.pull(repo, paths().models, revision=revision, name=name, file=file, progress=bar, log=bar.log)
    except KeyboardInterrupt:
        bar.close()
        click.echo(f"trit: interrupted — what was downloaded is kept; run `{command}` again to continue", err=True)
        sys.exit(130)
    finally:
        bar.close()
    click.echo(f"{m.name} is ready ({model_kind(m)}): {human_size(m.size_bytes)}, {m.source} at {m.short_revision}, "
               f"in {m.path}")
    adopt_installed(m.name, was)


@cli.command("import")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--name", help="The name to install it under (default: the folder's name; for a GGUF file, its name "
                             "without .gguf, lower-cased).")
@friendly_errors
def import_cmd(path, name) -> None:
    """Install a model from this machine (no network): a folder with a BitNet b1.58 checkpoint in the Hugging Face
    packed format (config.json, model.safetensors, tokenizer.json, ...) or a copy of a pulled model's folder; or a
    GGUF file (Llama, Qwen, Gemma, … — run by llama.cpp: pip install "trit[gguf]"). It is checked, hashed and copied
    into Trit's models folder. When the demo was the default model, the model imported becomes it.

    \b
    Examples:
      trit import ~/Downloads/bitnet-b1.58-2B-4T
      trit import Llama-3.2-1B-Instruct-Q4_K_M.gguf --name llama"""
    from trit.engine.models import importing

    was = default_before_install()
    bar = TransferBar(name or path.name)
    try:
        m = importing.import_model(path, paths().models, name=name, progress=bar)
    finally:
        bar.close()
    click.echo(f"{m.name} is ready ({model_kind(m)}): {human_size(m.size_bytes)}, from {path}, in {m.path}")
    adopt_installed(m.name, was)


def demo_row(default: str) -> dict | None:
    """The demo model as `trit models --json` lists it, after the installed ones: it ships inside Trit, so it has no
    install time, source or checksums of its own; None when this installation has no demo."""
    from .service import DEMO_NAME, demo_model

    demo = demo_model()
    if demo is None:
        return None
    size = sum(f.stat().st_size for f in demo.path.rglob("*") if f.is_file())
    from trit.engine.models.catalogue import family_of_folder

    return {"name": DEMO_NAME, "path": str(demo.path), "size_bytes": size, "source": "built-in", "revision": None,
            "verified": None, "backend": "bitnet", "family": family_of_folder(demo.path), "architecture": None,
            "file_type": None, "context_length": None, "installed": None, "builtin": True,
            "default": default == DEMO_NAME}


def model_family(m) -> str:
    """An installed model's family: what its config.json is (bitnet, …), or a GGUF's architecture."""
    from trit.engine.kinds import BITNET
    from trit.engine.models.catalogue import family_of_folder

    return family_of_folder(m.path) if m.backend == BITNET else (m.architecture or "?")


@cli.command("models")
@click.option("--default", "make_default", metavar="NAME",
              help="Make NAME (an installed model, or 'demo') the model Trit uses without -m.")
@click.option("--verify", "check", is_flag=True, help="Hash every file again and compare with what was installed.")
@click.option("--available", is_flag=True, help="List the models `trit pull NAME` downloads instead (as "
                                                 "`trit pull --list`).")
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON list, one object per model with \"family\", \"default\" (the one `trit ask` uses) "
                   "and \"builtin\" (the demo).")
@friendly_errors
def models_cmd(make_default, check, available, as_json) -> None:
    """List the models: the installed ones, then the demo that ships inside Trit. The one `trit` and `trit ask` use
    without -m is marked with *: the one chosen with --default, else the newest installed, else the demo. FAMILY
    is the kind of model: bitnet for BitNet b1.58, or a GGUF's architecture.

    \b
    Examples:
      trit models
      trit models --available             the models `trit pull NAME` downloads
      trit models --default bitnet-b1.58-2B-4T
      trit models --json | jq -r '.[] | select(.default) | .name'
      trit models --verify"""
    from trit.engine.kinds import BITNET
    from trit.engine.models import registry

    from .service import DEMO_NAME, default_model_name, demo_model
    from .settings import load_settings, save_settings

    if available:
        if make_default or check:
            raise click.UsageError("--available lists the catalogue: it goes with --json only")
        show_catalogue(as_json)
        return
    folder = paths().models
    if make_default:
        try:
            name = registry.locate(folder, make_default).name
        except registry.ModelNotFound:
            if make_default != DEMO_NAME or demo_model() is None:
                raise
            name = DEMO_NAME  # the model that ships inside Trit, not an installed one
        settings = load_settings()
        settings.default_model = name
        save_settings(settings)
        click.echo(f"{name} is the default model")
        return
    damaged = []
    if check:
        for m in registry.installed(folder):
            bad = registry.verify(m)
            click.echo(f"{m.name}: " + (f"damaged: {', '.join(bad)} — run `trit rm {m.name}` and install it again"
                                        if bad else "every file matches"), err=True)
            damaged += [m.name] if bad else []
    models = registry.installed(folder)
    default = default_model_name(load_settings())
    demo = demo_row(default) if DEMO_NAME not in {m.name for m in models} else None  # an installed "demo" wins
    families = {m.name: model_family(m) for m in models}
    if as_json:
        click.echo(json.dumps([{**m.to_dict(), "family": families[m.name], "builtin": False,
                                "default": m.name == default} for m in models] + ([demo] if demo else []), indent=2))
    else:
        # QUANT: how the weights are stored — BitNet's ternary, or the GGUF's file type (Q4_K_M, …)
        rows = [("", "NAME", "SIZE", "BACKEND", "FAMILY", "QUANT", "SOURCE", "REVISION", "VERIFIED")] + [
            ("*" if m.name == default else "", m.name, human_size(m.size_bytes), m.backend, families[m.name],
             m.file_type or ("ternary" if m.backend == BITNET else "-"), m.source, m.short_revision or "-",
             "yes" if m.verified else "NO") for m in models]
        if demo:
            rows.append(("*" if demo["default"] else "", DEMO_NAME, human_size(demo["size_bytes"]), BITNET,
                         demo["family"], "ternary", "built-in", "-", "-"))
        print_table(rows)
        if not models:
            click.echo("no models installed — `trit pull` downloads BitNet b1.58 2B4T (1.2 GB), `trit pull --list` "
                       "shows the others, `trit import PATH` installs one from this machine (a model folder or a .gguf "
                       "file); until then the demo model that ships inside Trit answers", err=True)
    if damaged:
        sys.exit(1)


# ---- trit serve ---------------------------------------------------------------------------------------------------
@cli.command()
@click.option("-m", "--model", "model_name", metavar="NAME",
              help="An installed model, a model folder, a .gguf file, or 'demo' (default: the default model).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="The address to listen on. Anything but loopback needs an API key.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(min=0, max=65535),
              help="The TCP port to listen on (0: any free one, said on stderr).")
@click.option("--api-key", metavar="KEY", envvar="TRIT_API_KEY", show_envvar=True,
              help="Require `Authorization: Bearer KEY` (TRIT_API_KEY keeps it out of `ps`).")
@click.option("--cors", multiple=True, metavar="ORIGIN",
              help="A web origin whose pages may call the server (e.g. http://localhost:3000); repeatable. Without "
                   "it, any request from a web page is refused.")
@click.option("--log", "keep_log", is_flag=True, help="Keep the conversations in the history (default: nothing kept).")
@click.option("--verbose", is_flag=True, help="Show each request's last message in the log lines on stderr.")
@click.option("--threads", type=click.IntRange(min=1), help="Threads (default: every core).")
@KV_OPTION
@friendly_errors
def serve(model_name, host, port, api_key, cors, keep_log, verbose, threads, kv) -> None:
    """Serve the model to other tools over an OpenAI-compatible API (/v1/chat/completions, /v1/models, /health) on
    this machine. Requests from web pages and other hosts are refused unless allowed; nothing is written to the
    history unless --log. One line per request on stderr; Ctrl-C stops.

    \b
    Examples:
      trit serve
      trit serve -m demo --port 8081
      TRIT_API_KEY=secret trit serve --host 0.0.0.0
      curl -s localhost:8080/v1/chat/completions -H 'Content-Type: application/json' \\
        -d '{"model": "demo", "messages": [{"role": "user", "content": "Hi"}]}'"""
    from .server import ServeOptions
    from .server import serve as run

    sys.exit(run(ServeOptions(model_name, host, port, api_key or None, tuple(cors), keep_log, verbose, threads, kv)))


@cli.command("rm")
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (needed when stdin is not a terminal).")
@friendly_errors
def rm_cmd(name, yes) -> None:
    """Remove an installed model (or the kept data of an unfinished pull of that name). Asks first.

    \b
    Examples:
      trit rm bitnet-b1.58-2B-4T
      trit rm llama --yes"""
    from trit.engine.models import registry

    from .service import DEMO_NAME
    from .settings import load_settings, save_settings

    folder = paths().models
    try:
        m = registry.locate(folder, name)
        what = f"{m.name} ({human_size(m.size_bytes)}, {m.source})"
    except registry.ModelNotFound:
        if name == DEMO_NAME:
            raise registry.ModelNotFound("demo ships inside Trit and cannot be removed; "
                                         "`trit models --default NAME` makes another model the one used") from None
        if not registry.partial_folder(folder, name).is_dir():
            raise
        what = f"the unfinished download of {name}"
    confirmed(f"Remove {what}", yes)
    registry.remove(folder, name)
    settings = load_settings()
    if settings.default_model == name:
        settings.default_model = ""
        save_settings(settings)
        click.echo(f"removed {what}; it was the default model, so the default is now the newest installed one "
                   "(the demo when none is)")
    else:
        click.echo(f"removed {what}")


def keep_huggingface_hub_offline() -> None:
    """Trit uses huggingface_hub only for its helpers (hub URLs, request headers, the model-info schema); `trit pull`
    sends its requests through a client of its own (engine/models/download.py). For huggingface_hub itself, and for
    whatever Trit starts, every command is offline: without these, building the pull's headers fetches the hub's
    AI-agent registry (/api/agent-harnesses) and caches it in ~/.cache/huggingface, outside Trit's folders. Set
    before anything imports huggingface_hub, which reads them once."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"


def main() -> None:
    """The `trit` command. A usage error (an unknown option, a missing argument) is one line and exit 2, as every
    other mistake is one line (exit 1): click's four lines of usage are what --help is for."""
    keep_huggingface_hub_offline()
    try:
        code = cli.main(prog_name="trit", standalone_mode=False)
    except click.UsageError as e:
        where = e.ctx.command_path if e.ctx is not None else "trit"
        click.echo(f"trit: {e.format_message()} (`{where} --help` shows how)", err=True)
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.Abort as e:  # Ctrl-C, or the end of input at a prompt
        interrupted = isinstance(e.__context__, KeyboardInterrupt)
        click.echo("trit: interrupted" if interrupted else "trit: nothing was done", err=True)
        sys.exit(130 if interrupted else 1)
    sys.exit(code if isinstance(code, int) else 0)
