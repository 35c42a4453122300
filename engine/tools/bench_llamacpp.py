"""llama.cpp on the same weights as Trit, measured the way tools/bench.py measures Trit: `trit bench --vs llama.cpp`.

The checkpoint is converted once to GGUF TQ2_0 and TQ1_0 (formats/gguf_export.py; cached in the model folder's trit/),
then each file runs in llama-cpp-python (an optional extra: pip install "trit[gguf]") in a child process of its
own, so that its peak RSS is its own:
- pp: N random prompt tokens evaluated at once (Llama.eval, n_batch = n_ubatch >= N), logits for the last;
- tg: N random tokens evaluated one at a time, logits for each;
each repetition on an emptied KV cache (position 0, as a fresh context), the median reported. The token ids are the
ones engine.tools.bench draws for the same seed.

Speed only for BitNet b1.58: llama.cpp's bitnet graph computes the FFN with SiLU where BitNet b1.58 uses relu², so its
text is wrong. The Llama-block families run in llama.cpp's llama graph, which is their own block.
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from trit.engine.backends.llamacpp.library import INSTALL_HINT, LlamaCppError, LlamaCppMissing
from trit.engine.tools.bench import peak_rss_mb

QTYPES = ("tq2_0", "tq1_0")
MIN_CTX = 640
RESULT_PREFIX = "TRIT-LLAMACPP-RESULT "
SILU_WARNING = ("llama.cpp's bitnet graph computes the FFN with SiLU, not BitNet b1.58's relu², so its output text "
                "is wrong: compare speed only")
# A Llama-block model runs in llama.cpp's own llama graph, which is its block: the text is right there too
LLAMA_NOTE = ("llama.cpp runs this model's own Llama block; it quantizes activations per 256-weight block where "
              "Trit quantizes them per token")


@dataclass
class LlamaCppResult:
    qtype: str
    gguf: str
    gguf_mb: float
    llama_cpp_version: str
    threads: int
    n_prompt: int
    n_gen: int
    repetitions: int
    n_ctx: int
    n_batch: int
    flash_attn: bool
    load_to_first_logits_s: float
    pp_tok_s: float = 0.0
    tg_tok_s: float = 0.0
    pp_runs: list[float] = field(default_factory=list)
    tg_runs: list[float] = field(default_factory=list)
    peak_rss_mb: float = 0.0
    logits_finite: bool = True
    system_info: str = ""
    arch: str = "bitnet"  # the GGUF's general.architecture
    cpu_s_per_token: float = 0.0  # user + sys of the child's threads per generated token, median over the tg runs
    cpu_runs: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def require(folder: str | os.PathLike | None = None) -> None:
    """Raise LlamaCppMissing (one line, with the install command) unless both packages are importable; with a
    model folder, also check now that llama.cpp can hold its shape in TQ1_0/TQ2_0."""
    missing = [name for name, module in (("llama-cpp-python", "llama_cpp"), ("gguf", "gguf"))
               if importlib.util.find_spec(module) is None]
    if missing:
        raise LlamaCppMissing(f"--vs llama.cpp needs {' and '.join(missing)}: {INSTALL_HINT}")
    if folder is not None:
        from trit.engine.formats import gguf_export
        from trit.engine.formats.checkpoint import Checkpoint

        gguf_export.check_shape(Checkpoint(folder))


def _child(spec: dict) -> dict:
    """Runs in the child process: load the GGUF, warm up, measure. Only llama_cpp and numpy are used."""
    import llama_cpp
    import numpy as np

    n_prompt, n_gen, threads = spec["n_prompt"], spec["n_gen"], spec["threads"]
    n_batch = max(n_prompt, 1)
    n_ctx = max(MIN_CTX, n_prompt, n_gen)
    t0 = time.perf_counter()
    llm = llama_cpp.Llama(model_path=spec["gguf"], n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_batch,
                          n_threads=threads, n_threads_batch=threads, logits_all=False, verbose=False)
    vocab = llm.n_vocab()

    def last_logits_finite() -> bool:
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(vocab,))
        return bool(np.isfinite(logits).all())

    llm.eval([0])
    first = time.perf_counter() - t0
    finite = last_logits_finite()
    rng = np.random.default_rng(spec["seed"])
    pp_runs, tg_runs, cpu_runs = [], [], []
    for _ in range(spec["repetitions"]):
        if n_prompt:
            ids = rng.integers(0, vocab, n_prompt).tolist()
            llm.reset()  # n_past = 0: eval removes every cell of the KV cache before decoding
            t = time.perf_counter()
            llm.eval(ids)
            pp_runs.append(n_prompt / (time.perf_counter() - t))
            finite = finite and last_logits_finite()
        if n_gen:
            ids = rng.integers(0, vocab, n_gen).tolist()
            llm.reset()
            t = time.perf_counter()
            c = time.process_time()  # this child's threads: llama.cpp's own, inside the wall-clock window
            for tok in ids:
                llm.eval([tok])
            cpu_runs.append((time.process_time() - c) / n_gen)
            tg_runs.append(n_gen / (time.perf_counter() - t))
            finite = finite and last_logits_finite()
    info = llama_cpp.llama_print_system_info()
    return dict(
        qtype=spec["qtype"], gguf=spec["gguf"], gguf_mb=os.path.getsize(spec["gguf"]) / 1e6,
        llama_cpp_version=getattr(llama_cpp, "__version__", "?"), threads=threads, n_prompt=n_prompt, n_gen=n_gen,
        repetitions=spec["repetitions"], n_ctx=llm.n_ctx(), n_batch=llm.n_batch, flash_attn=False,
        load_to_first_logits_s=first,
        pp_tok_s=statistics.median(pp_runs) if pp_runs else 0.0,
        tg_tok_s=statistics.median(tg_runs) if tg_runs else 0.0,
        pp_runs=pp_runs, tg_runs=tg_runs, peak_rss_mb=peak_rss_mb(), logits_finite=finite,
        cpu_s_per_token=statistics.median(cpu_runs) if cpu_runs else 0.0, cpu_runs=cpu_runs,
        system_info=(info.decode() if isinstance(info, bytes) else str(info)).strip(),
        arch=llm.metadata.get("general.architecture", "?"),
    )


def run_one(gguf: str | os.PathLike, qtype: str, *, threads: int, n_prompt: int = 512, n_gen: int = 128,
            repetitions: int = 3, seed: int = 0) -> LlamaCppResult:
    """Benchmark one GGUF file in a child process; its peak RSS is the child's own."""
    spec = dict(gguf=str(gguf), qtype=qtype, threads=threads, n_prompt=n_prompt, n_gen=n_gen,
                repetitions=repetitions, seed=seed)
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, "-m", "trit.engine.tools.bench_llamacpp", json.dumps(spec)],
                          capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return LlamaCppResult(**json.loads(line[len(RESULT_PREFIX):]))
    lines = [ln for ln in (proc.stderr or "").splitlines() if ln.strip()]
    reason = lines[-1].strip() if lines else f"exit code {proc.returncode}"
    raise LlamaCppError(f"llama.cpp could not run {gguf}: {reason}")


def run(folder: str | os.PathLike, *, threads: int, n_prompt: int = 512, n_gen: int = 128, repetitions: int = 3,
        seed: int = 0, qtypes=QTYPES, log=None) -> list[LlamaCppResult]:
    """Convert the model folder once per type (cached in trit/), then benchmark each file."""
    require()
    from trit.engine.formats import gguf_export

    paths = [(q, gguf_export.ensure(folder, q, log=log)) for q in qtypes]
    results = []
    for q, path in paths:
        if log:
            log(f"running llama.cpp {q.upper()} ({threads} thread{'s' if threads != 1 else ''})…")
        results.append(run_one(path, q, threads=threads, n_prompt=n_prompt, n_gen=n_gen,
                               repetitions=repetitions, seed=seed))
    return results


def _ratio(a: float, b: float) -> float | None:
    return a / b if a and b else None


def warning(results: list[LlamaCppResult]) -> str:
    return SILU_WARNING if any(r.arch != "llama" for r in results) else LLAMA_NOTE


def comparison(trit, results: list[LlamaCppResult]) -> dict:
    """The JSON form: llama.cpp's results and the Trit / llama.cpp ratios (trit is a tools.bench.BenchResult)."""
    return {
        "warning": warning(results),
        "results": [r.to_dict() for r in results],
        "ratios": {r.qtype: {"pp": _ratio(trit.pp_tok_s, r.pp_tok_s), "tg": _ratio(trit.tg_tok_s, r.tg_tok_s),
                             "peak_rss": _ratio(trit.peak_rss_mb, r.peak_rss_mb),
                             "cpu_s_per_token": _ratio(trit.cpu_s_per_token, r.cpu_s_per_token)} for r in results},
    }


def format_table(trit, results: list[LlamaCppResult]) -> str:
    """Rows Trit / llama.cpp TQ2_0 / llama.cpp TQ1_0, then the ratios Trit / llama.cpp, then the graph's note."""
    pp, tg = f"pp{trit.n_prompt} tok/s", f"tg{trit.n_gen} tok/s"
    version = results[0].llama_cpp_version if results else "?"
    setup = [f"kernel {trit.kernel}"] + ([f"ternary {trit.ternary}"] if getattr(trit, "ternary", None) else [])
    setup.append(f"head {trit.head}")
    lines = [f"vs llama.cpp (llama-cpp-python {version}) on the same weights: {trit.threads} thread"
             f"{'s' if trit.threads != 1 else ''}, median of {trit.repetitions}",
             f"Trit: {', '.join(setup)}. llama.cpp: ternary weights TQ2_0 / TQ1_0, f16 embedding and head",
             f"{'':24}{pp:>14}{tg:>14}{'peak RSS':>12}{'CPU s/token':>13}"]

    def row(label, p, t, rss, cpu):
        lines.append(f"{label:24}{format(p, '14.1f') if p else '—':>14}{format(t, '14.2f') if t else '—':>14}"
                     f"{f'{rss:.0f} MB' if rss else '—':>12}{format(cpu, '13.4f') if cpu else '—':>13}")

    row("Trit", trit.pp_tok_s, trit.tg_tok_s, trit.peak_rss_mb, trit.cpu_s_per_token)
    for r in results:
        row(f"llama.cpp {r.qtype.upper()}", r.pp_tok_s, r.tg_tok_s, r.peak_rss_mb, r.cpu_s_per_token)
    for r in results:
        ratios = [_ratio(trit.pp_tok_s, r.pp_tok_s), _ratio(trit.tg_tok_s, r.tg_tok_s),
                  _ratio(trit.peak_rss_mb, r.peak_rss_mb), _ratio(trit.cpu_s_per_token, r.cpu_s_per_token)]
        cells = [f"{x:.2f}x" if x else "—" for x in ratios]
        lines.append(f"{'Trit / llama.cpp ' + r.qtype.upper():24}{cells[0]:>14}{cells[1]:>14}{cells[2]:>12}"
                     f"{cells[3]:>13}")
    if any(not r.logits_finite for r in results):
        lines.append("llama.cpp produced non-finite logits")
    lines.append(f"note: {warning(results)}")
    return "\n".join(lines)


def _main(argv: list[str]) -> int:
    try:
        result = _child(json.loads(argv[0]))
    except Exception as e:  # reported by the parent in one line
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
