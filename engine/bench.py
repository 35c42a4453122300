"""Speed and memory of the engine on one model: prompt processing (ppN) and generation (tgN), llama-bench style.

pp: N prompt tokens evaluated as one request in a fresh context (the chunked batch path), logits for the last.
tg: N tokens evaluated one at a time in a fresh context, logits for each (the decode path, sampling excluded).
Token ids are random: speed does not depend on them.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import native
from .model import load


@dataclass
class BenchResult:
    model: str
    head: str
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
    peak_rss_mb: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 / 1024 if sys.platform == "darwin" else kb / 1024  # macOS reports bytes


def run(folder: str | Path, *, threads: int | None = None, head: str = "bf16", n_prompt: int = 512, n_gen: int = 128,
        repetitions: int = 3, seed: int = 0) -> BenchResult:
    t0 = time.perf_counter()
    model = load(folder, threads=threads, head=head)
    with model.context(1) as ctx:
        ctx.eval([0])
    first = time.perf_counter() - t0
    rng = np.random.default_rng(seed)
    vocab = model.config.vocab_size
    result = BenchResult(str(folder), head, native.active_kernel(), model.threads, n_prompt, n_gen, repetitions, first)
    for _ in range(repetitions):
        if n_prompt:
            ids = rng.integers(0, vocab, n_prompt)
            with model.context(n_prompt) as ctx:
                t = time.perf_counter()
                ctx.eval(ids, logits="last")
                result.pp_runs.append(n_prompt / (time.perf_counter() - t))
        if n_gen:
            ids = rng.integers(0, vocab, n_gen)
            with model.context(n_gen) as ctx:
                t = time.perf_counter()
                for tok in ids:
                    ctx.eval([tok], logits="last")
                result.tg_runs.append(n_gen / (time.perf_counter() - t))
    result.pp_tok_s = statistics.median(result.pp_runs) if result.pp_runs else 0.0
    result.tg_tok_s = statistics.median(result.tg_runs) if result.tg_runs else 0.0
    result.peak_rss_mb = peak_rss_mb()
    model.close()
    return result
