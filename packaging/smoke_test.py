#!/usr/bin/env python3
"""Smoke-test the built `trit` binaries the way a user runs them.

Both builds of packaging/build.sh are copied out of the checkout into a temporary folder (the one-folder build as
an unpacked download, the one-file build as bin/trit) and run there with a bare environment: HOME and TRIT_HOME in
the temporary folder, a PATH with no Python on it, no PYTHONPATH or virtual environment. Checked:
  - `trit --version`, and the time `trit ask --help` takes;
  - `trit ask` with the demo model inside the binary (exit 0, an answer), also with TRIT_KERNEL forcing the AVX2
    and the scalar kernel, and `trit bench --json` confirming the kernel that ran;
  - the same on CPUs without AVX-512 emulated by qemu-user (x86-64 Linux): a Haswell (AVX2) and a Nehalem (no
    AVX), where the library must pick the AVX2 and the scalar kernel by itself;
  - the chat app started under a pseudo-terminal: the time to its first screen, then Ctrl+Q and a clean exit;
  - `trit pull` from tests/hub_server.py (the local stand-in for the Hugging Face Hub, on 127.0.0.1), then
    `trit models` listing the model and `trit ask` answering with it, and the chat app opening on it;
  - the same hub over HTTPS with a certificate from a CA made here (openssl): the pull is refused until
    SSL_CERT_FILE names that CA (the bundled ssl module and OpenSSL work, and verify);
  - `trit serve` on a free loopback port answering a chat completion, then SIGTERM and exit 143 (uvicorn imports
    its protocol and loop modules by name: a build missing one starts and then fails here).

Needs only Python's standard library (any python3 >= 3.10 runs it) and qemu-user for the emulated CPUs; the
binaries need nothing at all.

    python3 packaging/smoke_test.py [--dist DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from hub_server import HubServer  # noqa: E402  (standard library only)

TIMEOUT = 300  # seconds for one command; a tiny model answers in well under one
TUI_TIMEOUT = 60
CTRL_Q = b"\x11"
ANSI = re.compile(rb"\x1b\[[0-9;?<>=$]*[ -/]*[@-~]|\x1b[P\]^_].*?(?:\x07|\x1b\\)|\x1b[()][0-9A-Za-z]|\x1b[=>78NM]")


@dataclass
class Report:
    failures: list[str] = field(default_factory=list)
    passed: int = 0
    figures: dict[str, str] = field(default_factory=dict)

    def check(self, ok: bool, what: str, detail: str = "") -> bool:
        detail = detail.strip()[-1500:].replace("\n", "\n      ")
        print(f"{'ok  ' if ok else 'FAIL'}  {what}" + (f"\n      {detail}" if detail and not ok else ""), flush=True)
        if ok:
            self.passed += 1
        else:
            self.failures.append(what)
        return ok

    def figure(self, name: str, value: str) -> None:
        self.figures[name] = value
        print(f"      {name}: {value}", flush=True)


class Sandbox:
    """A temporary folder outside the checkout and the bare environment the binaries run in."""

    def __init__(self, base: Path):
        self.base = base
        self.bin = base / "empty-bin"  # the whole PATH: nothing on it, so no Python either
        self.bin.mkdir()
        self.work = base / "work"
        self.work.mkdir()
        assert ROOT not in base.resolve().parents, "the sandbox must be outside the source tree"

    def env(self, home: str, **extra: str) -> dict[str, str]:
        h = self.base / home
        h.mkdir(exist_ok=True)
        env = {"HOME": str(h), "TRIT_HOME": str(h / "trit"), "PATH": str(self.bin), "LANG": "C.UTF-8",
               "TERM": "xterm-256color", "TMPDIR": str(self.base / "tmp")}
        (self.base / "tmp").mkdir(exist_ok=True)
        return {**env, **extra}

    def run(self, exe: Path, *args: str, env: dict, stdin: str = "", prefix: tuple[str, ...] = ()
            ) -> subprocess.CompletedProcess:
        return subprocess.run([*prefix, str(exe), *args], input=stdin, capture_output=True, text=True, cwd=self.work,
                              env=env, timeout=TIMEOUT)


def time_command(box: Sandbox, exe: Path, args: list[str], env: dict, n: int = 5) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        r = box.run(exe, *args, env=env)
        times.append(time.perf_counter() - t)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} exited {r.returncode}: {r.stderr.strip()[-500:]}")
    return statistics.median(times)


def x86_has_avx2() -> bool:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        return " avx2 " in f" {Path('/proc/cpuinfo').read_text()} ".replace("\n", " ")
    except OSError:  # not Linux: assume a CPU of the last ten years
        return True


# ---------------------------------------------------------------------------------------------------------------
# the chat app under a pseudo-terminal


@dataclass
class TuiRun:
    first_draw_s: float | None  # spawn to the expected text on screen
    exit_code: int | None       # None: still running after Ctrl+Q (then killed)
    quit_s: float | None
    restored: bool              # the alternate screen was left (the terminal is given back as it was)
    screen: str                 # the text it drew, escape sequences removed


def run_tui(exe: Path, env: dict, cwd: Path, expect: str, cols: int = 100, rows: int = 30) -> TuiRun:
    import fcntl
    import pty
    import struct
    import termios

    env = {**env, "COLUMNS": str(cols), "LINES": str(rows)}
    start = time.perf_counter()
    pid, fd = pty.fork()
    if pid == 0:  # the child: the binary on the pseudo-terminal's slave side
        try:
            os.chdir(cwd)
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
            os.execve(str(exe), [str(exe)], env)
        finally:
            os._exit(127)
    out = bytearray()
    first_draw = quit_at = None
    status = None

    def read(timeout: float) -> bool:
        """Read what is there; False when the other side is closed."""
        r, _, _ = select.select([fd], [], [], timeout)
        if not r:
            return True
        try:
            data = os.read(fd, 1 << 16)
        except OSError:  # EIO: the child closed the terminal
            return False
        out.extend(data)
        return bool(data)

    try:
        deadline = start + TUI_TIMEOUT
        while time.perf_counter() < deadline and first_draw is None:
            if not read(0.05):
                break
            if expect.encode() in ANSI.sub(b"", bytes(out)):
                first_draw = time.perf_counter() - start
        if first_draw is not None:
            read(0.5)  # let it settle (the first frame may arrive in pieces)
            os.write(fd, CTRL_Q)
            sent = time.perf_counter()
            while time.perf_counter() < sent + 20:
                alive = read(0.05)
                pid_done, st = os.waitpid(pid, os.WNOHANG)
                if pid_done:
                    status, quit_at = st, time.perf_counter() - sent
                    while read(0.05):
                        pass
                    break
                if not alive:
                    _, st = os.waitpid(pid, 0)
                    status, quit_at = st, time.perf_counter() - sent
                    break
    finally:
        if status is None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)
    code = os.waitstatus_to_exitcode(status) if status is not None else None
    restored = out.rfind(b"\x1b[?1049l") > out.rfind(b"\x1b[?1049h") >= 0
    screen = ANSI.sub(b"", bytes(out)).decode(errors="replace")
    return TuiRun(first_draw, code, quit_at, restored, screen)


def check_tui(report: Report, label: str, exe: Path, env: dict, cwd: Path, expect: str, times: int = 1) -> str:
    """Start the chat app `times` times; returns the text of the last screen."""
    runs = [run_tui(exe, env, cwd, expect) for _ in range(times)]
    ok = all(r.first_draw_s is not None for r in runs)
    tail = runs[-1].screen.strip()[-1500:]
    report.check(ok, f"{label}: the chat app draws {expect!r} under a pseudo-terminal", tail)
    if not ok:
        return runs[-1].screen
    report.check(all(r.exit_code == 0 for r in runs), f"{label}: Ctrl+Q quits it with exit code 0",
                 f"exit codes {[r.exit_code for r in runs]}; screen: {tail}")
    report.check(all(r.restored for r in runs), f"{label}: it gives the terminal back (leaves the alternate screen)")
    draws = sorted(r.first_draw_s for r in runs)
    report.figure(f"{label} chat app start to first screen",
                  f"{statistics.median(draws):.2f} s (median of {len(runs)}; {', '.join(f'{d:.2f}' for d in draws)})")
    return runs[-1].screen


# ---------------------------------------------------------------------------------------------------------------


def synthetic_tiny(box: Sandbox, exe: Path, env: dict, prefix: tuple[str, ...] = ()
                   ) -> tuple[str | None, subprocess.CompletedProcess]:
    """`trit bench --synthetic tiny` (which writes a random tiny model into the cache): the kernel that ran, and
    the run (its JSON on stdout names the model's folder)."""
    r = box.run(exe, "bench", "--synthetic", "tiny", "--pp", "8", "--tg", "4", "-r", "1", "--json", env=env,
                prefix=prefix)
    if r.returncode != 0:
        return None, r
    return json.loads(r.stdout)["kernel"], r


def make_certificates(folder: Path) -> tuple[Path, Path, Path] | None:
    """A CA, and a server certificate for 127.0.0.1 that it signed (openssl): (ca.pem, server.pem, server.key)."""
    openssl = shutil.which("openssl", path="/usr/local/bin:/usr/bin:/bin")
    if openssl is None:
        return None
    folder.mkdir()
    (folder / "server.ext").write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n"
                                       "keyUsage=critical,digitalSignature,keyEncipherment\n"
                                       "extendedKeyUsage=serverAuth\nauthorityKeyIdentifier=keyid\n")
    steps = [
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
         "-subj", "/CN=Trit smoke test CA"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj",
         "/CN=127.0.0.1"],
        ["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out",
         "server.pem", "-days", "2", "-extfile", "server.ext"],
    ]
    for step in steps:
        if subprocess.run([openssl, *step], cwd=folder, capture_output=True).returncode != 0:
            return None
    return folder / "ca.pem", folder / "server.pem", folder / "server.key"


def check_https_pull(report: Report, box: Sandbox, builds: dict[str, Path], served: Path) -> None:
    """A pull over HTTPS: the binary's own ssl module and OpenSSL verify the hub's certificate, and refuse one that
    no CA they trust signed."""
    import ssl

    certs = make_certificates(box.base / "tls")
    if not report.check(certs is not None, "openssl made a CA and a certificate for an HTTPS stand-in hub"):
        return
    ca, cert, key = certs
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    hub = HubServer(ssl_context=context).start()
    try:
        hub.add_repo("trit-smoke/tiny-bitnet", folder=served)
        for label, exe in builds.items():
            env = box.env(f"home-https-{label}", HF_ENDPOINT=hub.url)
            r = box.run(exe, "pull", "trit-smoke/tiny-bitnet", env=env)
            report.check(r.returncode == 1 and "certificate" in r.stderr.lower(),
                         f"{label}: trit pull over HTTPS refuses a certificate no trusted CA signed",
                         f"exit {r.returncode}; {r.stdout} {r.stderr}")
            r = box.run(exe, "pull", "trit-smoke/tiny-bitnet", env={**env, "SSL_CERT_FILE": str(ca)})
            report.check(r.returncode == 0 and "tiny-bitnet is ready" in r.stdout,
                         f"{label}: trit pull over HTTPS with the hub's CA trusted (SSL_CERT_FILE)",
                         f"exit {r.returncode}; {r.stdout} {r.stderr}")
    finally:
        hub.stop()


def check_pull(report: Report, box: Sandbox, builds: dict[str, Path], served: Path) -> None:
    """`trit pull` from the local stand-in hub, then the model is listed, answers, and the chat app opens on it."""
    hub = HubServer().start()
    try:
        hub.add_repo("trit-smoke/tiny-bitnet", folder=served)
        for label, exe in builds.items():
            env = box.env(f"home-pull-{label}", HF_ENDPOINT=hub.url)
            r = box.run(exe, "pull", "trit-smoke/tiny-bitnet", env=env)
            report.check(r.returncode == 0 and "tiny-bitnet is ready" in r.stdout,
                         f"{label}: trit pull trit-smoke/tiny-bitnet from {hub.url}",
                         f"exit {r.returncode}; {r.stdout.strip()[-300:]} {r.stderr}")
            r = box.run(exe, "models", "--json", env=env)
            listed = json.loads(r.stdout) if r.returncode == 0 else []
            report.check([(m["name"], m["verified"], m["default"]) for m in listed] == [
                ("tiny-bitnet", True, True), ("demo", None, False)],
                         f"{label}: trit models lists it, verified, as the default", r.stdout + r.stderr)
            r = box.run(exe, "ask", "--max-tokens", "8", "--seed", "1", "Hello", env=env)
            report.check(r.returncode == 0 and r.stdout.strip() != "",
                         f"{label}: trit ask answers with the pulled model", f"exit {r.returncode}; {r.stderr}")
            check_tui(report, label, exe, env, box.work, "Conversations")
        served_files = {r.filename for r in hub.requests if r.method == "GET" and r.status in (200, 206)}
        report.check("model.safetensors" in served_files, "the stand-in hub served the weights to the pulls",
                     str(served_files))
    finally:
        hub.stop()


# CPUs without AVX-512, emulated by qemu-user: what the library picks there by itself.
EMULATED_CPUS = (("Haswell", "AVX2, no AVX-512", "avx2"), ("Nehalem", "no AVX at all", "scalar"))


def emulation_env(onedir: Path) -> dict[str, str]:
    """The environment the one-folder bootloader gives the process it restarts itself as (PyInstaller 6 on Linux
    re-executes itself with LD_LIBRARY_PATH set, and the new process would leave qemu-user and run on the real CPU).
    With it set already, the bootloader goes straight on, inside the emulator. PyInstaller's internals: should they
    change, the process escapes, the host's kernel shows up and the check fails rather than passing."""
    return {"_PYI_ARCHIVE_FILE": str(onedir), "_PYI_PARENT_PROCESS_LEVEL": "-1", "_PYI_LINUX_PROCESS_NAME": "trit",
            "LD_LIBRARY_PATH": str(onedir.parent / "_internal")}


def check_emulated_cpus(report: Report, box: Sandbox, onedir: Path, model: str | None) -> None:
    qemu = shutil.which("qemu-x86_64", path="/usr/local/bin:/usr/bin:/bin")
    if not (sys.platform.startswith("linux") and platform.machine() == "x86_64"):
        print("      (not an x86-64 Linux: no emulated CPUs)")
        return
    if not report.check(qemu is not None, "qemu-x86_64 is there to emulate CPUs without AVX-512 (apt-get install "
                                          "qemu-user)"):
        return
    for cpu, what, expected in EMULATED_CPUS:
        env = box.env("home-kernels", **emulation_env(onedir))
        prefix = (qemu, "-cpu", cpu)
        ran, r = synthetic_tiny(box, onedir, env, prefix)
        report.check(ran == expected, f"on an emulated {cpu} CPU ({what}) trit picks the {ran} kernel by itself",
                     f"exit {r.returncode}; {r.stderr}")
        if ran != expected:
            continue
        tiny = json.loads(r.stdout)["model"]
        r = box.run(onedir, "ask", "--model", model or tiny, "--max-tokens", "8", "--seed", "1", "--no-log", "Hello",
                    env=env, prefix=prefix)
        report.check(r.returncode == 0 and r.stdout.strip() != "",
                     f"on an emulated {cpu} CPU trit ask answers: {r.stdout.strip()[:60]!r}",
                     f"exit {r.returncode}; {r.stderr}")


def check_serve(report: Report, box: Sandbox, builds: dict[str, Path], model: str) -> None:
    import urllib.request

    for label, exe in builds.items():
        server = subprocess.Popen([str(exe), "serve", "--model", model, "--port", "0"], cwd=box.work,
                                  env=box.env(f"home-serve-{label}"), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True)
        try:
            port, lines, deadline = None, [], time.monotonic() + 120
            while time.monotonic() < deadline and server.poll() is None:
                line = server.stderr.readline()
                lines.append(line)
                found = re.search(r"http://127\.0\.0\.1:(\d+)/v1", line)
                port = int(found.group(1)) if found else port
                if "is ready" in line:
                    break
            answer, detail = "", "".join(lines)[-800:]
            if port is not None:
                body = json.dumps({"model": model, "max_tokens": 16, "seed": 1,
                                   "messages": [{"role": "user", "content": "Hello"}]}).encode()
                request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", body,
                                                 {"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(request, timeout=60) as response:
                        answer = json.load(response)["choices"][0]["message"]["content"]
                except (OSError, ValueError, KeyError) as e:
                    detail += f"\n{e}"
            report.check(answer != "", f"{label}: trit serve answers a chat completion: {answer[:60]!r}", detail)
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                code = server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                code = server.wait()
        report.check(code == 143, f"{label}: trit serve ends with 143 on SIGTERM (got {code})")


def find_builds(dist: Path) -> tuple[Path, Path]:
    onedir = dist / "trit"
    onefile = sorted(p for p in dist.glob("trit-*") if p.is_file() and not p.is_symlink())
    if not (onedir / "trit").is_file() or not onefile:
        sys.exit(f"smoke_test: no builds in {dist}: run packaging/build.sh first")
    return onedir, onefile[-1]


def bundled_demo(onedir: Path) -> Path | None:
    folder = onedir / "_internal" / "trit" / "assets" / "demo" / "model"
    return folder if (folder / "config.json").is_file() else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dist", type=Path, default=ROOT / "dist", help="where build.sh put the builds (default: dist/)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()

    onedir_built, onefile_built = find_builds(args.dist.resolve())
    report = Report()
    base = Path(tempfile.mkdtemp(prefix="trit-smoke-"))
    try:
        box = Sandbox(base)
        # installed as a user would: the folder unpacked somewhere, the single file put on a bin folder
        shutil.copytree(onedir_built, base / "opt" / "trit", symlinks=True)
        onedir = base / "opt" / "trit" / "trit"
        (base / "bin").mkdir()
        onefile = base / "bin" / "trit"
        shutil.copy2(onefile_built, onefile)
        size = sum(p.stat().st_size for p in (base / "opt" / "trit").rglob("*") if p.is_file() and not p.is_symlink())
        report.figure("one-folder build size", f"{size / 1e6:.0f} MB ({onedir_built})")
        report.figure("one-file build size", f"{onefile.stat().st_size / 1e6:.0f} MB ({onefile_built})")
        report.check(shutil.which("python3", path=box.env("h")["PATH"]) is None and
                     shutil.which("python", path=box.env("h")["PATH"]) is None, "no Python on the binaries' PATH")

        report.check((base / "opt" / "trit" / "_internal" / "trit" / "assets" / "styles" / "trit.tcss").is_file(),
                     "the chat app's stylesheet is inside the binary (without it the app falls back to plain styles)")
        demo = bundled_demo(base / "opt" / "trit")
        model = "demo" if demo else None
        if demo is None:
            print("      (no demo model inside the binary: asking a synthetic tiny model instead)")

        for label, exe in (("one-folder", onedir), ("one-file", onefile)):
            env = box.env(f"home-{label}")
            r = box.run(exe, "--version", env=env)
            report.check(r.returncode == 0 and re.fullmatch(r"trit, version \S+\n", r.stdout) is not None,
                         f"{label}: trit --version  ->  {r.stdout.strip()}", r.stderr)
            try:
                report.figure(f"{label} `trit ask --help`", f"{time_command(box, exe, ['ask', '--help'], env):.3f} s"
                              " (median of 5)")
            except RuntimeError as e:
                report.check(False, f"{label}: trit ask --help", str(e))
            if model is None:  # written by the binary itself into its cache
                _, r = synthetic_tiny(box, exe, env)
                report.check(r.returncode == 0, f"{label}: trit bench --synthetic tiny", r.stderr)
                this_model = json.loads(r.stdout)["model"] if r.returncode == 0 else "missing"
            else:
                this_model = model
            r = box.run(exe, "ask", "--model", this_model, "--max-tokens", "16", "--seed", "1", "Hello", env=env)
            report.check(r.returncode == 0 and r.stdout.strip() != "",
                         f"{label}: trit ask --model {'demo' if demo else 'tiny'} answers: {r.stdout.strip()[:60]!r}",
                         f"exit {r.returncode}; stderr: {r.stderr.strip()[-800:]}")

        # kernels: what this CPU picks, and the ones a CPU without AVX-512 (or without AVX2) runs, forced by name
        kernels = ["", "scalar"] + (["avx2"] if x86_has_avx2() else [])
        for kernel in sorted(kernels, key=lambda k: (k != "", k)):
            env = box.env("home-kernels", **({"TRIT_KERNEL": kernel} if kernel else {}))
            name = f"TRIT_KERNEL={kernel}" if kernel else "no TRIT_KERNEL"
            ran, r = synthetic_tiny(box, onedir, env)
            report.check(r.returncode == 0 and (ran == kernel or not kernel),
                         f"{name}: trit bench ran the {ran} kernel", f"exit {r.returncode}; {r.stderr.strip()[-800:]}")
            tiny = json.loads(r.stdout)["model"] if r.returncode == 0 else "missing"
            r = box.run(onedir, "ask", "--model", model or tiny, "--max-tokens", "16", "--seed", "1", "--no-log",
                        "Hello", env=env)
            report.check(r.returncode == 0 and r.stdout.strip() != "",
                         f"{name}: trit ask answers: {r.stdout.strip()[:60]!r}",
                         f"exit {r.returncode}; stderr: {r.stderr.strip()[-800:]}")

        check_emulated_cpus(report, box, onedir, model)
        if model is not None:
            check_serve(report, box, {"one-folder": onedir, "one-file": onefile}, model)

        # the chat app on a first start (no model installed: the welcome screen)
        for label, exe in (("one-folder", onedir), ("one-file", onefile)):
            screen = check_tui(report, label, exe, box.env(f"home-tui-{label}"), box.work, "Welcome to Trit", times=3)
            if demo:
                report.check("demo model is not part of this installation" not in screen,
                             f"{label}: the welcome screen offers the demo model inside the binary")

        # trit pull from the local stand-in hub, then the model is listed, answers, and the chat app opens on it
        served = demo
        if served is None:
            _, r = synthetic_tiny(box, onedir, box.env("home-kernels"))
            served = Path(json.loads(r.stdout)["model"]) if r.returncode == 0 else None
        if report.check(served is not None, "a model to serve from the stand-in hub"):
            check_pull(report, box, {"one-folder": onedir, "one-file": onefile}, served)
            check_https_pull(report, box, {"one-folder": onedir, "one-file": onefile}, served)
    finally:
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)

    print()
    for name in report.failures:
        print(f"failed: {name}")
    print(f"smoke: {report.passed} passed, {len(report.failures)} failed")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
