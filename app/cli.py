"""The `trit` command: a thin layer over the engine's Python API."""

from __future__ import annotations

import json
import os
import sys
from functools import wraps
from pathlib import Path

import click

from trit import __version__

from .paths import paths


def is_user_error(e: BaseException) -> bool:
    """Errors whose message tells the user what is wrong and what to do: shown as one line."""
    from trit.engine import EngineError

    from .settings import SettingsError

    store = sys.modules.get("trit.app.store")  # only commands that use the history import sqlite
    return isinstance(e, (EngineError, SettingsError)) or (store is not None and isinstance(e, store.StoreError))


def friendly_errors(fn):
    """User mistakes and Ctrl-C end in one line on stderr, never a traceback."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            click.echo("trit: interrupted", err=True)
            sys.exit(130)
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
    """Trit: an offline, private assistant running BitNet b1.58 on your CPU."""
    # Every file and folder Trit makes is its user's alone: conversations, system prompts, models, partial downloads,
    # derived weights, caches, and exports too (they hold the same conversations; a file that already exists keeps
    # its mode). One umask here covers the engine's writes as well, which a library must not decide for scripts.
    os.umask(0o077)
    if ctx.invoked_subcommand is None:
        if not (sys.stdin.isatty() and sys.stdout.isatty()):  # piped or redirected: the chat app needs a terminal
            click.echo(ctx.get_help())
            return
        from .tui import run  # Textual is imported here only, so `trit ask` and scripts start without it

        ctx.exit(run())


@cli.command("paths")
def paths_cmd() -> None:
    """Print where Trit keeps models, settings and caches (TRIT_HOME moves them all)."""
    p = paths()
    for name, value in (("data", p.data), ("models", p.models), ("config", p.config), ("cache", p.cache)):
        click.echo(f"{name:7} {value}")


# ---- trit ask ------------------------------------------------------------------------------------------------------
def read_prompt(words: tuple[str, ...]) -> str:
    """The arguments, after whatever was piped in (`cat notes.txt | trit ask "summarise"`), like llm. Text that is not
    UTF-8 is refused, naming the first bad byte, rather than guessed at: the person decides how to convert it."""
    from trit.engine import InputError

    parts = []
    if not sys.stdin.isatty():
        data = sys.stdin.buffer.read()
        try:
            piped = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"what came on stdin is not UTF-8 text (byte {e.start} is 0x{data[e.start]:02x}): "
                             "convert it first, e.g. `iconv -f latin1 -t utf-8 FILE | trit ask ...`") from None
        if piped.strip():
            parts.append(piped.strip())
    if words:
        question = " ".join(words)
        try:
            question.encode("utf-8")
        except UnicodeEncodeError as e:  # undecodable bytes in argv arrive as surrogates
            raise InputError(f"the question is not UTF-8 text (character {e.start + 1} is not): retype it or "
                             "convert it first") from None
        parts.append(question)
    if not parts:
        raise click.UsageError('nothing to ask: give the question as arguments or on stdin, e.g. trit ask "Hello"')
    return "\n\n".join(parts)


class StopSignals:
    """Ctrl-C, SIGTERM and SIGHUP (the terminal closed) stop the reply between two tokens, and what was said is kept,
    marked stopped; the exit code is 128 + the signal's number. A second Ctrl-C stops at once."""

    NAMES = ("SIGINT", "SIGTERM", "SIGHUP")  # SIGHUP does not exist on Windows

    def __init__(self):
        import threading

        self.event = threading.Event()
        self.signum: int | None = None

    def __enter__(self):
        import signal

        self._previous = {sig: signal.signal(sig, self._handle)
                          for sig in (getattr(signal, name, None) for name in self.NAMES) if sig is not None}
        return self

    def _handle(self, signum, frame):
        import signal

        if self.event.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = self.signum or signum
        self.event.set()

    def __exit__(self, *exc):
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or 2)


def quiet_stdout() -> None:
    """The reader of stdout is gone (a closed terminal, a pipe's end that left): what is still printed goes nowhere,
    so the reply can still end and be stored, and Python's exit does not complain about the flush."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def say(text: str) -> None:
    try:
        click.echo(text, err=True)
    except OSError:  # stderr is gone with the terminal
        pass


@cli.command()
@click.argument("prompt", nargs=-1)
@click.option("-s", "--system", help="System prompt (for a new conversation, or to change it when continuing).")
@click.option("-m", "--model", "model_name", metavar="NAME", help="An installed model, a model folder, or 'demo'.")
@click.option("--temperature", type=click.FloatRange(min=0), help="0 is greedy (default: the model's own).")
@click.option("--top-p", type=click.FloatRange(min=0, max=1, min_open=True))
@click.option("-n", "--max-tokens", type=click.IntRange(min=1), help="Longest reply in tokens.")
@click.option("--seed", type=int, help="Same seed, same model, same prompt: same answer.")
@click.option("-c", "--continue", "continue_last", is_flag=True, help="Continue the most recent conversation.")
@click.option("--cid", type=int, metavar="ID", help="Continue conversation ID (see `trit history list`).")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object (the shape `trit history show --json` uses).")
@click.option("--no-log", is_flag=True, help="Keep nothing: the question and answer are not written to history.")
@click.option("--threads", "-t", type=click.IntRange(min=1), help="Threads (default: every core).")
@friendly_errors
def ask(prompt, system, model_name, temperature, top_p, max_tokens, seed, continue_last, cid, as_json, no_log,
        threads) -> None:
    """Answer once and exit: the answer streams to stdout; Ctrl-C stops it and keeps what was said."""
    from trit.engine import SamplingParams

    from .service import Service, Turn
    from .store import Store, WriteError

    if continue_last and cid is not None:
        raise click.UsageError("give either -c or --cid, not both")
    text = read_prompt(prompt)
    overrides = {k: v for k, v in (("temperature", temperature), ("top_p", top_p), ("max_tokens", max_tokens),
                                   ("seed", seed)) if v is not None}
    SamplingParams(**overrides)  # out of range (nan, a negative seed): one line now, before anything is stored
    continuing = continue_last or cid is not None
    unsaved = None  # why nothing of this turn can be kept: it is answered all the same, and that is said after
    try:
        store = Store() if continuing or not no_log else None  # --no-log on a new conversation: no file at all
    except WriteError as e:  # no history can be made here now (a full disk, a read-only folder)
        if continuing:
            raise
        store, unsaved = None, f"your question and its answer were not saved: {e}"
    service = Service(store, threads=threads)
    try:
        if continuing:
            dialogue = service.last(logged=not no_log) if continue_last else service.open(cid, logged=not no_log)
            if model_name:
                dialogue.model = service.model(model_name)[0].name
            if system is not None:
                dialogue.system = system
            dialogue.params.update(overrides)
            if dialogue.logged and (model_name or system is not None or overrides):
                try:
                    store.update_conversation(dialogue.conversation_id, system=dialogue.system,
                                              params=dialogue.params, model=dialogue.model)
                except WriteError:
                    pass  # the history takes nothing now: answered all the same, and the turn says it was not kept
        else:
            dialogue = service.new(model=model_name, system=system, params=overrides, logged=not no_log)
        turn, printing = None, not as_json
        with StopSignals() as stop:
            for event in service.send(dialogue, text, stop.event):
                if isinstance(event, Turn):
                    turn = event
                elif printing:
                    try:
                        click.echo(event.text, nl=False)
                        sys.stdout.flush()
                    except OSError:  # nobody reads any more: stop between two tokens and keep what was said
                        printing = False
                        quiet_stdout()
                        stop.signum = stop.signum or 13  # exit as a process that SIGPIPE ended would (141)
                        stop.event.set()
        result = turn.result
        try:
            if as_json:
                click.echo(json.dumps(turn.to_dict(), indent=2, ensure_ascii=False))
            elif result.text and not result.text.endswith("\n"):
                click.echo()
        except OSError:
            quiet_stdout()
        if result.dropped_messages:
            say(f"trit: the {result.dropped_messages} oldest messages were left out to fit the {result.n_ctx}-token "
                "context")
        unsaved = unsaved or turn.unsaved
        if result.finish_reason == "cancelled":
            kept = f"; the partial answer is kept in conversation {turn.conversation_id}" \
                if dialogue.logged and not unsaved else ""
            say(f"trit: stopped{kept}")
        if unsaved:  # the answer was shown (or printed as JSON); a script must still learn it was not kept
            say(f"trit: {unsaved}")
        if result.finish_reason == "cancelled":
            sys.exit(stop.exit_code)
        if unsaved:
            sys.exit(1)
    finally:
        service.close()
        if store is not None:
            store.close()


# ---- trit history ---------------------------------------------------------------------------------------------------
@cli.group()
def history() -> None:
    """Conversations kept in the local history database."""


def ago(iso: str) -> str:
    from datetime import datetime, timezone

    import humanize

    return humanize.naturaltime(datetime.now(timezone.utc) - datetime.fromisoformat(iso))


@history.command("list")
@click.option("-n", "--count", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def history_list(count, as_json) -> None:
    """The most recent conversations, newest first."""
    from .store import Store

    with Store() as store:
        conversations = store.list_conversations(limit=count)
    if as_json:
        click.echo(json.dumps([c.to_dict() for c in conversations], indent=2, ensure_ascii=False))
        return
    if not conversations:
        click.echo('no conversations yet: trit ask "…" or trit starts one', err=True)
    for c in conversations:
        click.echo(f"{c.id:>5}  {ago(c.updated):>16}  {c.message_count:>3} msgs  {c.model[:24]:24}  {c.title}")


@history.command("show")
@click.argument("cid", type=int)
@click.option("--json", "as_json", is_flag=True, help="The conversation and its messages as JSON.")
@friendly_errors
def history_show(cid, as_json) -> None:
    """One conversation, whole."""
    from .store import Store

    with Store() as store:
        click.echo(json.dumps(store.to_json(cid), indent=2, ensure_ascii=False) if as_json
                   else store.to_markdown(cid))


@history.command("search")
@click.argument("text", nargs=-1, required=True)
@click.option("-n", "--count", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def history_search(text, count, as_json) -> None:
    """Messages containing these words, best match first."""
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
        click.echo(f"{h.conversation_id:>5}  {h.title[:30]:30}  {h.role:9}  {h.snippet}")


@history.command("rm")
@click.argument("cids", type=int, nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Delete every conversation.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@friendly_errors
def history_rm(cids, everything, yes) -> None:
    """Delete conversations (for good: they are not kept anywhere else)."""
    from .store import Store

    if everything == bool(cids):
        raise click.UsageError("give conversation ids, or --all")
    with Store() as store:
        if everything:
            if not yes:
                click.confirm("Delete every conversation?", abort=True)
            click.echo(f"deleted {store.delete_all()} conversations", err=True)
            return
        for cid in cids:
            store.conversation(cid)  # every id must exist before anything is deleted
        for cid in cids:
            store.delete_conversation(cid)
        click.echo(f"deleted {len(cids)} conversation{'s' if len(cids) != 1 else ''}", err=True)


@history.command("export")
@click.argument("cid", type=int)
@click.option("--format", "fmt", type=click.Choice(["md", "json"]), default="md", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True, path_type=Path),
              help="Write to this file instead of stdout.")
@friendly_errors
def history_export(cid, fmt, output) -> None:
    """A conversation as Markdown or JSON."""
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


@cli.command()
@click.argument("model", required=False, type=click.Path(path_type=Path))
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
@click.option("--repetitions", "-r", default=3, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--conversation", is_flag=True,
              help="Instead: time to first token of each turn of a 5-turn conversation of ~3000 tokens.")
@click.option("--vs", "versus", type=click.Choice(["llama.cpp"]),
              help="Then run llama.cpp (llama-cpp-python) on the same weights as GGUF TQ2_0 and TQ1_0; print the "
                   "ratios.")
@friendly_errors
def bench(model, preset, threads, head, ternary, n_prompt, n_gen, long_context, repetitions, as_json,
          conversation=False, versus=None) -> None:
    """Measure prompt processing (ppN) and generation (tgN) speed in tokens/s, against the memory bus."""
    from trit.engine.tools import bench as engine_bench

    if (model is None) == (preset is None):
        raise click.UsageError("give a model folder or --synthetic PRESET")
    if long_context and long_context <= n_gen:
        raise click.UsageError("--ctx must be larger than --tg")
    folder = synthetic_folder(preset, 0) if preset else model
    if conversation:
        c = engine_bench.run_conversation(folder, threads=threads, head=head, ternary=ternary)
        if as_json:
            click.echo(json.dumps(c.to_dict(), indent=2))
            return
        click.echo(f"model    {c.model}\nkernel   {c.kernel}, {c.threads} threads")
        click.echo("turn  prompt  reused  new  generated  first token   prefill tok/s  decode tok/s")
        for t in c.turns:
            click.echo(f"{t.turn:>4}  {t.prompt_tokens:>6}  {t.reused_tokens:>6}  {t.new_tokens:>4}  "
                       f"{t.generated_tokens:>9}  {t.time_to_first_token_s:>9.2f} s  {t.prefill_tok_s:>13.1f}  "
                       f"{t.decode_tok_s:>12.1f}")
        click.echo(f"turn {c.turns[-1].turn} with nothing cached: prefill {c.cold_last_turn_prefill_s:.2f} s")
        return
    if versus:
        from trit.engine.tools import bench_llamacpp

        bench_llamacpp.require(folder)  # one clear line now, not after Trit's own run
    r = engine_bench.run(folder, threads=threads, head=head, ternary=ternary, n_prompt=n_prompt, n_gen=n_gen,
                         repetitions=repetitions, long_context=long_context)
    vs = bench_llamacpp.run(folder, threads=r.threads, n_prompt=n_prompt, n_gen=n_gen, repetitions=repetitions,
                            log=lambda m: click.echo(m, err=True)) if versus else None
    if as_json:
        click.echo(json.dumps({**r.to_dict(), **({"vs_llama_cpp": bench_llamacpp.comparison(r, vs)} if vs else {})},
                              indent=2))
        return
    runs = lambda values: ", ".join(f"{v:.1f}" for v in values)  # noqa: E731
    click.echo(f"model    {r.model}")
    click.echo(f"kernel   {r.kernel}, {r.threads} thread{'s' if r.threads != 1 else ''}; "
               f"ternary {r.ternary}, head {r.head}")
    if n_prompt:
        click.echo(f"pp{n_prompt:<6} {r.pp_tok_s:8.1f} tok/s   (runs: {runs(r.pp_runs)})")
    if n_gen:
        click.echo(f"tg{n_gen:<6} {r.tg_tok_s:8.1f} tok/s   (runs: {runs(r.tg_runs)})")
        click.echo(f"bus      {r.bytes_per_token_mb:.0f} MB read per token; "
                   f"read bandwidth {r.read_bandwidth_gbs:.1f} GB/s; {r.bus_share:.0%} of the bus limit reached")
    if r.long_context:
        click.echo(f"tg{n_gen} after {r.long_context - n_gen} positions  {r.long_tg_tok_s:.1f} tok/s")
    click.echo(f"load to first logits  {r.load_to_first_logits_s * 1000:.0f} ms")
    click.echo(f"peak RSS {r.peak_rss_mb:.0f} MB")
    if vs:
        click.echo("\n" + bench_llamacpp.format_table(r, vs))


# ---- models: trit pull, import, models, rm ---------------------------------------------------------------------------
def human_size(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


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


def default_model_name(models) -> str:
    """The model `trit` and `trit ask` use without --model: the configured one, else the newest installed."""
    from .settings import load_settings

    return load_settings().default_model or (models[-1].name if models else "")


@cli.command()
@click.argument("repo", metavar="[REPO]", required=False)
@click.option("--file", "file", metavar="FILE.gguf",
              help="One GGUF file of the repository to install (its path in the repository).")
@click.option("--revision", metavar="REV", help="A branch, tag or commit of the repository (default: main).")
@click.option("--name", help="The name to install it under (default: the repository's name; for a GGUF file, its "
                             "name without .gguf, lower-cased).")
@friendly_errors
def pull(repo, file, revision, name) -> None:
    """Download a model from the Hugging Face Hub (default: microsoft/bitnet-b1.58-2B-4T).

    \b
      trit pull                           BitNet b1.58 2B4T (Trit's own engine)
      trit pull OWNER/REPO                a BitNet checkpoint, or the repo's one GGUF
      trit pull OWNER/REPO --file F.gguf  one GGUF file of the repo (llama.cpp)

    GGUF models (Llama, Qwen, Gemma, …) run through llama.cpp: pip install "trit[gguf]".

    Only the files Trit needs are fetched, each checked against the sha256 the hub publishes; the model is ready
    only when all of them match. An interrupted pull continues where it stopped when run again. HF_ENDPOINT selects
    another hub, HF_TOKEN authenticates. This is the only command that uses the network."""
    from trit.engine.models import download, registry

    if file and not repo:
        raise click.UsageError("--file needs the repository: trit pull OWNER/REPO --file FILE.gguf")
    command = "trit pull" + "".join(f" {flag}{value}" for flag, value in (
        ("", repo), ("--file ", file), ("--revision ", revision), ("--name ", name)) if value)
    repo = repo or download.DEFAULT_REPO
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


@cli.command("import")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--name", help="The name to install it under (default: the folder's name; for a GGUF file, its name "
                             "without .gguf, lower-cased).")
@friendly_errors
def import_cmd(path, name) -> None:
    """Install a model from this machine (no network): a folder with a BitNet b1.58 checkpoint in the Hugging Face
    packed format (config.json, model.safetensors, tokenizer.json, ...) or a copy of a pulled model's folder; or a
    GGUF file (Llama, Qwen, Gemma, … — run by llama.cpp: pip install "trit[gguf]"). It is checked, hashed and copied
    into Trit's models folder."""
    from trit.engine.models import importing

    bar = TransferBar(name or path.name)
    try:
        m = importing.import_model(path, paths().models, name=name, progress=bar)
    finally:
        bar.close()
    click.echo(f"{m.name} is ready ({model_kind(m)}): {human_size(m.size_bytes)}, from {path}, in {m.path}")


@cli.command("models")
@click.option("--default", "make_default", metavar="NAME", help="Make NAME the model Trit uses by default.")
@click.option("--verify", "check", is_flag=True, help="Hash every file again and compare with what was installed.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@friendly_errors
def models_cmd(make_default, check, as_json) -> None:
    """List the installed models; the default one is marked with *."""
    from trit.engine.kinds import BITNET
    from trit.engine.models import registry

    from .settings import load_settings, save_settings

    folder = paths().models
    if make_default:
        from .service import DEMO_NAME, demo_model

        if make_default == DEMO_NAME and demo_model() is not None:
            name = DEMO_NAME  # the model that ships inside Trit, not an installed one
        else:
            name = registry.locate(folder, make_default).name
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
    default = default_model_name(models)
    if as_json:
        click.echo(json.dumps([{**m.to_dict(), "default": m.name == default} for m in models], indent=2))
    elif not models:
        click.echo("no models installed — `trit pull` downloads BitNet b1.58 2B4T (1.2 GB), "
                   "`trit import PATH` installs one from this machine (a model folder or a .gguf file); "
                   "until then the demo model that ships inside Trit answers (`-m demo`)")
    else:
        # QUANT: how the weights are stored — BitNet's ternary, or the GGUF's file type (Q4_K_M, …)
        rows = [("", "NAME", "SIZE", "BACKEND", "QUANT", "SOURCE", "REVISION", "VERIFIED")] + [
            ("*" if m.name == default else "", m.name, human_size(m.size_bytes), m.backend,
             m.file_type or ("ternary" if m.backend == BITNET else "-"), m.source, m.short_revision or "-",
             "yes" if m.verified else "NO") for m in models]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            click.echo("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
    if damaged:
        sys.exit(1)


@cli.command("rm")
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@friendly_errors
def rm_cmd(name, yes) -> None:
    """Remove an installed model (or the kept data of an unfinished pull of that name)."""
    from trit.engine.models import registry

    from .settings import load_settings, save_settings

    folder = paths().models
    try:
        m = registry.locate(folder, name)
        what = f"{m.name} ({human_size(m.size_bytes)}, {m.source})"
    except registry.ModelNotFound:
        if not registry.partial_folder(folder, name).is_dir():
            raise
        what = f"the unfinished download of {name}"
    if not yes and not click.confirm(f"remove {what}?", default=False, err=True):
        click.echo("nothing removed", err=True)
        sys.exit(1)
    registry.remove(folder, name)
    settings = load_settings()
    if settings.default_model == name:
        settings.default_model = ""
        save_settings(settings)
        click.echo(f"removed {what}; it was the default model, so the default is now the newest installed one")
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
    keep_huggingface_hub_offline()
    cli()
