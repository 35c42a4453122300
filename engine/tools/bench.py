"""Speed and memory of the engine on one model: prompt processing (ppN) and generation (tgN), llama-bench style.

pp: N prompt tokens evaluated as one request in a fresh context (the chunked batch path), logits for the last.
tg: N tokens evaluated one at a time in a fresh context, logits for each (the decode path, sampling excluded).
Decoding reads every weight once per token, so tg is also reported against the bus: bytes read per token, the read
bandwidth measured right after each tg run (this machine's, in the same conditions), and the share of it reached.
Token ids are random: speed does not depend on them.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from trit.engine.locate import load
from trit.engine.runtime import native
from trit.engine.runtime.model import DEFAULT_HEAD


@dataclass
class BenchResult:
    model: str
    head: str
    ternary: str
    kernel: str
    threads: int
    n_prompt: int
    n_gen: int
    repetitions: int
    load_to_first_logits_s: float
    pp_tok_s: float = 0.0
    tg_tok_s: float = 0.0
    pp_runs: list[float] = field(default_factory=list)
    tg_runs: list[float] = field(default_factory=list)
    bytes_per_token_mb: float = 0.0   # read by one decoding step, averaged over the tg positions
    read_bandwidth_gbs: float = 0.0   # median of the measurements taken after each tg run
    bus_share: float = 0.0            # median over runs of bytes/token x tok/s / bandwidth
    long_context: int = 0             # --ctx: positions filled before decoding n_gen more
    long_tg_tok_s: float = 0.0
    peak_rss_mb: float = 0.0
    # energy: user + sys CPU seconds of every thread per generated token (median over the tg runs, each listed)
    cpu_s_per_token: float = 0.0
    cpu_runs: list[float] = field(default_factory=list)
    kv: str = native.DEFAULT_KV       # the KV cache's element type

    def to_dict(self) -> dict:
        return asdict(self)


def reset_peak_rss() -> None:
    """Linux lets a process restart its high-water mark, so the peak belongs to the work measured."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import resource  # Unix only
    except ImportError:  # Windows: the peak working set
        import psutil

        return getattr(psutil.Process().memory_info(), "peak_wset", 0) / (1 << 20)
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 / 1024 if sys.platform == "darwin" else kb / 1024  # macOS reports bytes


class Session:
    """Trit's side of `run`, one round (a pp run and a tg run) at a time, so that another engine's runs can alternate
    with Trit's in one process's lifetime (tools/bench_bitnetcpp.py): the model is loaded once."""

    def __init__(self, folder: str | Path, *, threads: int | None = None, head: str = DEFAULT_HEAD,
                 ternary: str = "auto", n_prompt: int = 512, n_gen: int = 128, seed: int = 0,
                 kv: str = native.DEFAULT_KV):
        reset_peak_rss()
        t0 = time.perf_counter()
        self.model = model = load(folder, threads=threads, head=head, ternary=ternary, kv=kv)
        with model.context(1) as ctx:
            ctx.eval([0])
        first = time.perf_counter() - t0
        self.rng = np.random.default_rng(seed)
        self.vocab = model.config.vocab_size
        decode_speed(model, self.rng.integers(0, self.vocab, 16), 16)  # warm-up, as llama-bench does
        self.result = r = BenchResult(str(folder), head, model.ternary, native.active_kernel(), model.threads,
                                      n_prompt, n_gen, 0, first, kv=kv)
        if n_gen:
            r.bytes_per_token_mb = float(np.mean([model.bytes_per_token(p) for p in range(n_gen)])) / 1e6
        self.bandwidths, self.shares, self.peaks = [], [], []

    def round(self) -> None:
        model, r, rng = self.model, self.result, self.rng
        r.repetitions += 1
        if r.n_prompt:
            ids = rng.integers(0, self.vocab, r.n_prompt)
            with model.context(r.n_prompt) as ctx:
                t = time.perf_counter()
                ctx.eval(ids, logits="last")
                r.pp_runs.append(r.n_prompt / (time.perf_counter() - t))
        if r.n_gen:
            speed, cpu_s = decode_speed(model, rng.integers(0, self.vocab, r.n_gen), r.n_gen, cpu=True)
            r.tg_runs.append(speed)
            r.cpu_runs.append(cpu_s / r.n_gen)
            # the buffer read here would count as the model's memory: note the peak first, restart it after
            self.peaks.append(peak_rss_mb())
            self.bandwidths.append(model.read_bandwidth())
            self.shares.append(r.bytes_per_token_mb * 1e6 * speed / (self.bandwidths[-1] * 1e9))
            reset_peak_rss()

    def finish(self, long_context: int = 0) -> BenchResult:
        model, r = self.model, self.result
        if long_context:
            with model.context(long_context) as ctx:
                ctx.eval(self.rng.integers(0, self.vocab, long_context - r.n_gen), logits=None)
                r.long_context = long_context
                r.long_tg_tok_s = decode_speed(model, self.rng.integers(0, self.vocab, r.n_gen), r.n_gen, ctx)
        r.peak_rss_mb = max(self.peaks + [peak_rss_mb()])
        if self.bandwidths:
            r.read_bandwidth_gbs, r.bus_share = statistics.median(self.bandwidths), statistics.median(self.shares)
        r.pp_tok_s = statistics.median(r.pp_runs) if r.pp_runs else 0.0
        r.tg_tok_s = statistics.median(r.tg_runs) if r.tg_runs else 0.0
        r.cpu_s_per_token = statistics.median(r.cpu_runs) if r.cpu_runs else 0.0
        model.close()
        return r


def run(folder: str | Path, *, threads: int | None = None, head: str = DEFAULT_HEAD, ternary: str = "auto",
        n_prompt: int = 512, n_gen: int = 128, repetitions: int = 3, long_context: int = 0,
        seed: int = 0, kv: str = native.DEFAULT_KV) -> BenchResult:
    session = Session(folder, threads=threads, head=head, ternary=ternary, n_prompt=n_prompt, n_gen=n_gen, seed=seed,
                      kv=kv)
    for _ in range(repetitions):
        session.round()
    return session.finish(long_context)


def decode_speed(model, ids, n: int, ctx=None, cpu: bool = False):
    """Tokens/s of n one-token steps, in a fresh context unless one is given. With cpu, also the CPU seconds (user +
    sys, every thread of the process) they took: taken inside the wall-clock window, so that it is at most threads x
    the wall time."""
    own = ctx is None
    ctx = ctx or model.context(n)
    try:
        t = time.perf_counter()
        c = time.process_time()
        for tok in ids[:n]:
            ctx.eval([tok], logits="last")
        cpu_s = time.process_time() - c
        speed = n / (time.perf_counter() - t)
        return (speed, cpu_s) if cpu else speed
    finally:
        if own:
            ctx.close()


# ---- a conversation, turn by turn --------------------------------------------------------------------------------
DOCUMENT = ("The committee met on a grey morning to review the harbour accounts. Each ledger listed cargo, tolls, "
            "repairs to the breakwater and the wages of the pilots who guided ships past the northern shoals. ")
FOLLOW_UPS = ["Which costs rose the most?", "Summarise the pilots' wages in one sentence.",
              "What should the committee do first?", "List three risks for next year."]


@dataclass
class ConversationTurn:
    turn: int
    prompt_tokens: int
    reused_tokens: int
    new_tokens: int
    generated_tokens: int
    time_to_first_token_s: float
    prefill_tok_s: float
    decode_tok_s: float


@dataclass
class ConversationBench:
    model: str
    kernel: str
    threads: int
    turns: list[ConversationTurn]
    cold_last_turn_prefill_s: float  # the last turn's prompt prefilled with nothing cached: what reuse saves

    def to_dict(self) -> dict:
        return asdict(self)


def run_conversation(folder: str | Path, *, threads: int | None = None, head: str = DEFAULT_HEAD,
                     ternary: str = "auto", document_tokens: int = 2300, reply_tokens: int = 96,
                     seed: int = 0, kv: str = native.DEFAULT_KV) -> ConversationBench:
    """Five turns: a long document with a question, then four short follow-ups, each answered with reply_tokens
    tokens (the model's own replies go back into the conversation, as in a real chat). Reports every turn's time to
    first token, and the last turn's again in a fresh cache."""
    from trit.engine.runtime.chat import Chat

    model = load(folder, threads=threads, head=head, ternary=ternary, kv=kv)
    tokenizer = model.tokenizer
    sentence = len(tokenizer.encode(DOCUMENT))
    document = DOCUMENT * max(1, document_tokens // sentence)
    messages = [{"role": "system", "content": "You are a careful assistant."},
                {"role": "user", "content": document + "\n\nWhat does this record say?"}]
    # the random ids of a synthetic model's reply can include the end-of-turn token: ignore it so every turn
    # generates reply_tokens (the timings do not depend on the words)
    params = model.default_params(seed=seed, max_tokens=reply_tokens)
    chat = Chat(model, tokenizer)
    stop_ids, tokenizer.stop_ids = tokenizer.stop_ids, frozenset()
    turns = []
    try:
        for i, question in enumerate([None] + FOLLOW_UPS):
            if question is not None:
                messages.append({"role": "user", "content": question})
            result = list(chat.stream(messages, params))[-1]
            turns.append(ConversationTurn(i + 1, result.prompt_tokens, result.reused_tokens,
                                          result.prompt_tokens - result.reused_tokens, result.generated_tokens,
                                          result.time_to_first_token_s, result.prefill_tok_s, result.decode_tok_s))
            messages.append({"role": "assistant", "content": result.text})
        last_messages = messages[:-1]
        chat.context.close()
        cold = Chat(model, tokenizer)
        t = time.perf_counter()
        ids, text, _ = cold.fit(last_messages, reply_tokens)
        cold.prefill(ids, text=text)
        cold_s = time.perf_counter() - t
        cold.context.close()
    finally:
        tokenizer.stop_ids = stop_ids
    r = ConversationBench(str(folder), native.active_kernel(), model.threads, turns, cold_s)
    model.close()
    return r


@dataclass
class WarmBench:
    model: str
    kernel: str
    threads: int
    saves: list[dict]  # after each of turns 1..4: positions in the file, bytes written, seconds
    warm: ConversationTurn  # the last turn in a fresh model (a new process) with the saved cache
    cold: ConversationTurn  # the same turn with nothing saved
    load_s: float  # of warm's time to first token: reading the file into the context

    def to_dict(self) -> dict:
        return asdict(self)


def run_warm_conversation(folder: str | Path, cache_file: Path, *, threads: int | None = None,
                          head: str = DEFAULT_HEAD, ternary: str = "auto", document_tokens: int = 2300,
                          reply_tokens: int = 96, seed: int = 0, kv: str = native.DEFAULT_KV) -> WarmBench:
    """run_conversation's dialogue, its cache saved to `cache_file` after each of the first four turns (as `trit ask`
    and `trit ask -c` do); then the fifth turn as a new process meets it — a model loaded anew — with the saved cache,
    and without it. The file is in the OS's page cache, as it is right after the previous turn wrote it."""
    from trit.engine.formats import kv_file
    from trit.engine.runtime.chat import Chat

    def turn(chat, messages, params, saved=None):
        r = list(chat.stream(messages, params, saved=saved))[-1]
        return r, ConversationTurn(len(messages) // 2, r.prompt_tokens, r.reused_tokens,
                                   r.prompt_tokens - r.reused_tokens, r.generated_tokens, r.time_to_first_token_s,
                                   r.prefill_tok_s, r.decode_tok_s)

    cache_file.unlink(missing_ok=True)
    model = load(folder, threads=threads, head=head, ternary=ternary, kv=kv)
    tokenizer = model.tokenizer
    document = DOCUMENT * max(1, document_tokens // len(tokenizer.encode(DOCUMENT)))
    messages = [{"role": "system", "content": "You are a careful assistant."},
                {"role": "user", "content": document + "\n\nWhat does this record say?"}]
    params = model.default_params(seed=seed, max_tokens=reply_tokens)
    stop_ids, tokenizer.stop_ids = tokenizer.stop_ids, frozenset()  # every turn replies in full (run_conversation)
    saves = []
    try:
        chat = Chat(model, tokenizer)
        for question in FOLLOW_UPS:  # turns 1 to 4, each saved; the last question is turn 5
            result, _ = turn(chat, messages, params)
            before = cache_file.stat().st_size if cache_file.exists() else 0
            t = time.perf_counter()
            chat.save(cache_file)
            saves.append({"positions": len(chat.context.tokens), "bytes_written": cache_file.stat().st_size - before,
                          "file_bytes": cache_file.stat().st_size, "seconds": round(time.perf_counter() - t, 4)})
            messages += [{"role": "assistant", "content": result.text}, {"role": "user", "content": question}]
        chat.context.close()
        model.close()
        model = load(folder, threads=threads, head=head, ternary=ternary, kv=kv)
        model._tokenizer, tokenizer.stop_ids = tokenizer, frozenset()
        stamp = kv_file.stamp(model)
        with model.context() as ctx:  # the file's read alone, for the share of the first token's wait it takes
            t = time.perf_counter()
            kv_file.load(cache_file, ctx, stamp)
            load_s = time.perf_counter() - t
        _, warm = turn(Chat(model, tokenizer), messages, params, saved=cache_file)
        _, cold = turn(Chat(model, tokenizer), messages, params)
    finally:
        tokenizer.stop_ids = stop_ids
    r = WarmBench(str(folder), native.active_kernel(), model.threads, saves, warm, cold, load_s)
    model.close()
    return r
