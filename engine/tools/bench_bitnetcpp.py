"""bitnet.cpp on the same weights as Trit, its runs alternated with Trit's: `trit bench --vs bitnet.cpp` (issue 20).

bitnet.cpp is Microsoft's BitNet inference framework, a llama.cpp fork; ygqdan/BitNet-linux carries it whole (the
official repository's submodule commit is not public). It is not a Python package: it is built once with
tools/build_bitnet_cpp.sh, and the build folder is given with --bitnet-cpp (or TRIT_BITNET_CPP).

The checkpoint is written as the F16 bitnet-25 GGUF (formats/gguf_bitnet25.py) and quantized with bitnet.cpp's own
`llama-quantize ... I2_S`, twice: with the f16 embedding (the layout of the official ggml-model-i2_s.gguf) and with
`--token-embedding-type q4_0` (its smaller head, the tied embedding being the head). Both files are kept in the model
folder's trit/ with a stamp; the F16 file only while they are made.

Each round runs Trit's pp and tg once (tools.bench.Session), then for each file `llama-bench -p N -n 0` and
`llama-bench -p 0 -n N` (-r 1: one measured run after llama-bench's own warm-up), so that a busy machine slows all
engines alike; medians and ranges over the rounds are reported. Speed and CPU time only: bitnet.cpp quantizes the
activations per tensor where Trit does it per token, and its text is not compared.

CPU-seconds per generated token: for Trit, user + sys of the process (every thread) around each tg run; for
bitnet.cpp, the rusage (os.wait4) of the tg-only llama-bench child minus that of a `-p 0 -n 1` child, over N - 1
tokens, which removes its load and warm-up. Both include the threads' spin-waiting between operations, which costs
battery as work does. Bytes per token: Trit's as tools.bench counts it (weights and KV cache); bitnet.cpp's is its
GGUF file's size (every weight is read per token, the tied embedding being the head), KV cache excluded.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from trit.engine.errors import EngineError

SCRIPT = Path(__file__).with_name("build_bitnet_cpp.sh")
ENV = "TRIT_BITNET_CPP"
TOOLS = ("llama-bench", "llama-quantize")
# (variant, llama-quantize's extra arguments, the table's words)
VARIANTS = (("i2_s", (), "I2_S, f16 embd"),  # the official ggml-model-i2_s.gguf's layout
            ("i2_s-q4_0", ("--token-embedding-type", "q4_0"), "I2_S, q4_0 embd"))
EXPORT_VERSION = 1
ELF_MACHINES = {3: "x86", 62: "x86_64", 40: "arm", 183: "aarch64", 243: "riscv64"}
HOST_MACHINES = {"amd64": "x86_64", "x86_64": "x86_64", "arm64": "aarch64", "aarch64": "aarch64",
                 "i386": "x86", "i686": "x86", "riscv64": "riscv64"}
NOTE = ("speed and CPU time only: bitnet.cpp quantizes activations per tensor, Trit per token. bitnet.cpp's CPU "
        "s/token is its tg-only llama-bench child's user+sys minus a 1-token run's (load and warm-up), over N-1 "
        "tokens; its bytes/token is its GGUF file's size (KV cache excluded). CPU time includes "
        "spin-waiting threads, for both.")


class BitnetCppError(EngineError):
    """bitnet.cpp is missing, unusable here, or one of its runs failed: one line saying which and what to do."""


def build_hint() -> str:
    return f"build it with `bash {SCRIPT} DEST` (about 5 minutes), then pass --bitnet-cpp DEST/build"


@dataclass
class Build:
    folder: Path
    bench: Path
    quantize: Path


def _elf_machine(path: Path) -> str | None:
    """The machine an ELF executable is built for, or None for anything else (a script runs anywhere)."""
    with open(path, "rb") as f:
        head = f.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    code = int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
    return ELF_MACHINES.get(code, f"machine {code}")


def find_build(folder: str | os.PathLike | None) -> Build:
    """The build's llama-bench and llama-quantize (in BUILD_DIR/bin, or BUILD_DIR itself), runnable on this CPU."""
    if folder is None or str(folder) == "":
        raise BitnetCppError(f"--vs bitnet.cpp needs a bitnet.cpp build: --bitnet-cpp BUILD_DIR (or {ENV}); "
                             + build_hint())
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        what = "not a folder" if folder.exists() else "no such folder"
        raise BitnetCppError(f"{folder}: {what}, give bitnet.cpp's build folder; " + build_hint())
    found = {}
    for tool in TOOLS:
        for candidate in (folder / "bin" / tool, folder / tool):
            if candidate.is_file() and os.access(candidate, os.X_OK):
                found[tool] = candidate
                break
    missing = [t for t in TOOLS if t not in found]
    if missing:
        raise BitnetCppError(f"{folder}: not a bitnet.cpp build, {' and '.join(missing)} missing (looked in bin/ "
                             f"and the folder); " + build_hint())
    host = HOST_MACHINES.get(platform.machine().lower(), platform.machine())
    for tool, path in found.items():
        try:
            built_for = _elf_machine(path)
        except OSError as e:
            raise BitnetCppError(f"{path}: {e.strerror or e}") from None
        if built_for is not None and built_for != host:
            raise BitnetCppError(f"{path} is built for {built_for}, this machine is {host}: " + build_hint())
    return Build(folder, found["llama-bench"], found["llama-quantize"])


STACK_BYTES = 1 << 30


def _raise_stack() -> None:
    # bitnet.cpp's I2_S matmul keeps a large buffer on its threads' stacks: 2B4T's prefill crashes at the default 8 MB
    # and with an unlimited one too (glibc then gives threads a small default); a finite 1 GiB limit is what new
    # threads take as their size (address space only, touched as used)
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_STACK)
    want = STACK_BYTES if hard == resource.RLIM_INFINITY else min(hard, STACK_BYTES)
    resource.setrlimit(resource.RLIMIT_STACK, (want, hard))


def _last_line(*texts: str) -> str:
    for text in texts:
        lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
        if lines:
            return lines[-1]
    return ""


def run_tool(args: list, what: str):
    """Run a bitnet.cpp program; (stdout, child rusage). Its failure is one BitnetCppError line with its last words."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([str(a) for a in args], stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                preexec_fn=_raise_stack if os.name == "posix" else None)
        try:
            # wait4 reaps the child with its own rusage (CPU time of all its threads, peak RSS)
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if code != 0:
        how = f"signal {-code}" if code < 0 else f"exit code {code}"
        last = _last_line(stderr, stdout)
        raise BitnetCppError(f"bitnet.cpp's {what} failed ({how}){': ' + last if last else ''}")
    return stdout, usage


# ---- the GGUF files --------------------------------------------------------------------------------------------------
def gguf_path(folder: str | os.PathLike, variant: str) -> Path:
    from trit.engine.formats.derived import DERIVED_DIR

    return Path(folder) / DERIVED_DIR / f"bitnetcpp-{variant}.gguf"


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".stamp.json")


def _stamp(checkpoint) -> dict:
    from trit.engine.formats.derived import fingerprint

    return {"checkpoint": fingerprint(checkpoint), "export_version": EXPORT_VERSION}


def is_current(path: Path, checkpoint) -> bool:
    try:
        stamp = json.loads(_stamp_path(path).read_text(encoding="utf-8"))
        return stamp == {**_stamp(checkpoint), "size": path.stat().st_size}
    except (OSError, ValueError):
        return False


def check_model(folder: str | os.PathLike) -> None:
    """One line now, before Trit's own run, when bitnet.cpp's bitnet-25 graph cannot hold this model."""
    from trit.engine.formats import gguf_bitnet25
    from trit.engine.formats.checkpoint import Checkpoint

    if not Path(folder).is_dir():
        raise BitnetCppError(f"{folder}: --vs bitnet.cpp writes a model folder's weights as bitnet.cpp's GGUF; give "
                             "a model folder or an installed model, not a file")
    gguf_bitnet25.check(Checkpoint(folder))


def ensure_ggufs(folder: str | os.PathLike, build: Build, log=None) -> dict[str, Path]:
    """The I2_S files of every variant, made once per checkpoint (the F16 file is written only when one is not)."""
    from trit.engine.formats import gguf_bitnet25
    from trit.engine.formats.checkpoint import Checkpoint

    ckpt = Checkpoint(folder)
    paths = {v: gguf_path(folder, v) for v, _, _ in VARIANTS}
    stale = [(v, extra) for v, extra, _ in VARIANTS if not is_current(paths[v], ckpt)]
    if not stale:
        return paths
    f16 = gguf_path(folder, "f16")
    try:
        if log:
            log(f"writing {ckpt.folder} as bitnet.cpp's F16 GGUF at {f16} (once)…")
        gguf_bitnet25.export(ckpt, f16)
        for v, extra in stale:
            if log:
                log(f"quantizing it to {paths[v].name} with {build.quantize}…")
            _stamp_path(paths[v]).unlink(missing_ok=True)
            partial = paths[v].with_name(paths[v].name + ".partial")
            try:
                run_tool([build.quantize, *extra, f16, partial, "I2_S", str(os.cpu_count() or 1)], "llama-quantize")
                os.replace(partial, paths[v])
            finally:
                partial.unlink(missing_ok=True)
            try:
                _stamp_path(paths[v]).write_text(json.dumps({**_stamp(ckpt), "size": paths[v].stat().st_size}),
                                                 encoding="utf-8")
            except OSError:
                pass  # quantized again next time
    finally:
        f16.unlink(missing_ok=True)
    return paths


# ---- the runs ------------------------------------------------------------------------------------------------------
@dataclass
class BitnetCppResult:
    variant: str
    label: str
    gguf: str
    gguf_mb: float  # every byte is read per token, the tied embedding being the head (llama-bench's model_size
                    # counts I2_S as a byte per weight, 4x too much)
    threads: int
    n_prompt: int
    n_gen: int
    repetitions: int
    pp_tok_s: float = 0.0
    tg_tok_s: float = 0.0
    pp_runs: list[float] = field(default_factory=list)
    tg_runs: list[float] = field(default_factory=list)
    cpu_s_per_token: float = 0.0
    cpu_runs: list[float] = field(default_factory=list)
    peak_rss_mb: float = 0.0  # of the tg-only llama-bench child
    model_type: str = ""
    cpu_info: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _bench_rows(stdout: str) -> list[dict]:
    text = stdout[stdout.find("build_commit"):] if "build_commit" in stdout else ""
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows:
        raise BitnetCppError(f"bitnet.cpp's llama-bench printed no CSV results: {_last_line(stdout) or 'nothing'}")
    return rows


def _cpu_s(usage) -> float:
    return usage.ru_utime + usage.ru_stime


def _rss_mb(usage) -> float:
    return usage.ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)  # macOS reports bytes


def bench_round(build: Build, result: BitnetCppResult) -> None:
    """One pp run and one tg run of llama-bench (each after its own warm-up), and the 1-token run whose CPU time is
    subtracted from the tg run's."""
    base = [build.bench, "-m", result.gguf, "-t", str(result.threads), "-r", "1", "-o", "csv"]
    result.repetitions += 1
    if result.n_prompt:
        out, _ = run_tool(base + ["-p", str(result.n_prompt), "-n", "0"], "llama-bench")
        row = _bench_rows(out)[0]
        result.pp_runs.append(float(row["avg_ts"]))
        result.model_type, result.cpu_info = row.get("model_type", ""), row.get("cpu_info", "")
    if result.n_gen:
        out, usage = run_tool(base + ["-p", "0", "-n", str(result.n_gen)], "llama-bench")
        row = _bench_rows(out)[0]
        result.tg_runs.append(float(row["avg_ts"]))
        result.model_type, result.cpu_info = row.get("model_type", ""), row.get("cpu_info", "")
        result.peak_rss_mb = max(result.peak_rss_mb, _rss_mb(usage))
        if result.n_gen > 1:
            _, one = run_tool(base + ["-p", "0", "-n", "1"], "llama-bench")
            result.cpu_runs.append(max(0.0, _cpu_s(usage) - _cpu_s(one)) / (result.n_gen - 1))
        else:  # nothing to subtract: load and warm-up included
            result.cpu_runs.append(_cpu_s(usage))


def _finish(result: BitnetCppResult) -> BitnetCppResult:
    median = lambda xs: statistics.median(xs) if xs else 0.0  # noqa: E731
    result.pp_tok_s, result.tg_tok_s = median(result.pp_runs), median(result.tg_runs)
    result.cpu_s_per_token = median(result.cpu_runs)
    return result


def run(folder: str | os.PathLike, build: Build, *, threads: int | None = None, head: str = "q4",
        ternary: str = "auto", n_prompt: int = 512, n_gen: int = 128, rounds: int = 3, long_context: int = 0,
        seed: int = 0, log=None):
    """Trit's rounds alternated with bitnet.cpp's on the same weights. Returns (Trit's tools.bench.BenchResult,
    [BitnetCppResult per variant])."""
    from trit.engine.tools.bench import Session

    check_model(folder)
    paths = ensure_ggufs(folder, build, log=log)  # before Trit's model is loaded: the F16 file is large
    session = Session(folder, threads=threads, head=head, ternary=ternary, n_prompt=n_prompt, n_gen=n_gen, seed=seed)
    trit = session.result
    results = [BitnetCppResult(v, label, str(paths[v]), paths[v].stat().st_size / 1e6, trit.threads, n_prompt, n_gen, 0)
               for v, _, label in VARIANTS]
    for i in range(rounds):
        if log:
            log(f"round {i + 1} of {rounds}: Trit, then bitnet.cpp {' and '.join(r.variant for r in results)}…")
        session.round()
        for r in results:
            bench_round(build, r)
    return session.finish(long_context), [_finish(r) for r in results]


# ---- the report ----------------------------------------------------------------------------------------------------
def _ratio(a: float, b: float) -> float | None:
    return a / b if a and b else None


def ratios(trit, r: BitnetCppResult) -> dict:
    """Trit / bitnet.cpp: above 1 Trit is faster (pp, tg) or, for cpu, spends more CPU time per token."""
    return {"pp": _ratio(trit.pp_tok_s, r.pp_tok_s), "tg": _ratio(trit.tg_tok_s, r.tg_tok_s),
            "cpu_s_per_token": _ratio(trit.cpu_s_per_token, r.cpu_s_per_token)}


def comparison(trit, results: list[BitnetCppResult]) -> dict:
    return {"note": NOTE, "results": [r.to_dict() for r in results],
            "ratios": {r.variant: ratios(trit, r) for r in results}}


def _spread(median: float, runs: list[float], digits: int) -> str:
    if not runs:
        return "—"
    if len(runs) == 1:
        return f"{median:.{digits}f}"
    return f"{median:.{digits}f} ({min(runs):.{digits}f}–{max(runs):.{digits}f})"


def format_table(trit, results: list[BitnetCppResult], build: Build | None = None) -> str:
    pp, tg = f"pp{trit.n_prompt} tok/s", f"tg{trit.n_gen} tok/s"
    where = f" ({build.folder})" if build else ""
    lines = [f"vs bitnet.cpp{where} on the same weights: {trit.threads} thread{'s' if trit.threads != 1 else ''}, "
             f"{trit.repetitions} alternated rounds, median (range); f16 embd is the official GGUF's layout",
             f"{'engine':30}{'format':20}{pp:>26}{tg:>26}{'bytes/token':>13}{'CPU s/token':>13}"]
    rows = [(f"Trit ({trit.kernel}, {trit.ternary})",
             f"{'1.6-bit' if trit.ternary == 't5' else '2-bit'} + {trit.head} head", trit, trit.bytes_per_token_mb)]
    rows += [(f"bitnet.cpp ({r.label})", "2-bit + " + ("q4_0" if r.variant.endswith("q4_0") else "f16") + " head", r,
              r.gguf_mb) for r in results]
    for label, fmt, x, mb in rows:
        lines.append(f"{label:30}{fmt:20}{_spread(x.pp_tok_s, x.pp_runs, 1):>26}"
                     f"{_spread(x.tg_tok_s, x.tg_runs, 2):>26}{f'{mb:.0f} MB' if mb else '—':>13}"
                     f"{f'{x.cpu_s_per_token:.4f}' if x.cpu_s_per_token else '—':>13}")
    for r in results:
        q = ratios(trit, r)
        cells = [f"{q[k]:.2f}x" if q[k] else "—" for k in ("pp", "tg", "cpu_s_per_token")]
        lines.append(f"{'Trit / bitnet.cpp ' + r.label.removeprefix('I2_S, '):50}{cells[0]:>26}{cells[1]:>26}"
                     f"{'':13}{cells[2]:>13}")
    lines.append(f"note: {NOTE}")
    return "\n".join(lines)
