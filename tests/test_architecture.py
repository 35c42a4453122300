"""The layout the README's architecture section describes, held: one import package `trit`, no import cycles, arrows
that point one way (app -> engine -> native; inside the engine, tools and models on top of the runtime), and
`import trit` free of benchmarks and of modules that exist only on Unix.

The graph is read from the source (every import statement, those inside functions included, except the ones under
`if TYPE_CHECKING:`), so an import that only runs on some path still counts."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from network_guard import offline_env

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"trit.app": ROOT / "app", "trit.engine": ROOT / "engine", "trit.assets": ROOT / "assets"}
SCRIPTS = ("assets/demo/train.py",)  # run as a script, never imported


def source_modules() -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    out = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder).with_suffix("")
            if str(path.relative_to(ROOT)) in SCRIPTS:
                continue
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([package, *parts])] = path
    return out


MODULES = source_modules()


def _under_type_checking(node: ast.AST, parents: dict) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports_of(name: str) -> set[str]:
    """The trit modules `name` imports. `from package import x` counts as an import of package.x when x is a
    module, else of package."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if _under_type_checking(node, parents):
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        found.update(t for t in targets if t == "trit" or t.startswith("trit."))
    return found - {name}


GRAPH = {name: imports_of(name) for name in MODULES}


def defined_names(name: str) -> set[str]:
    """The names a module binds at its top level (under if / try too), and its submodules."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    out = {m.rsplit(".", 1)[1] for m in MODULES if m.rsplit(".", 1)[0] == name}
    body = list(tree.body)
    while body:
        node = body.pop()
        if isinstance(node, (ast.If, ast.Try)):
            body += node.body + node.orelse + getattr(node, "finalbody", []) + \
                [n for h in getattr(node, "handlers", []) for n in h.body]
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                out.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            out.update((a.asname or a.name).split(".")[0] for a in node.names)
    return out


def test_every_trit_import_names_something_that_exists():
    missing = set()
    for name, path in MODULES.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                missing.update(f"{name}: import {a.name}" for a in node.names
                               if a.name.startswith("trit.") and a.name not in MODULES)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{up}.{base}" if base else up
                if not base.startswith("trit.") or base == "trit":
                    continue
                if base not in MODULES:
                    missing.add(f"{name}: from {base}")
                    continue
                names = defined_names(base)
                missing.update(f"{name}: from {base} import {a.name}" for a in node.names
                               if a.name != "*" and a.name not in names)
    assert not missing, sorted(missing)


def test_the_import_graph_has_no_cycle():
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> None:
        if node in path:
            cycle = path[path.index(node):] + [node]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if node in done:
            return
        path.append(node)
        for target in sorted(GRAPH.get(node, ())):
            visit(target)
        path.pop()
        done.add(node)

    for name in sorted(GRAPH):
        visit(name)


def imports(source: str, target: str) -> list[str]:
    return sorted(f"{n} -> {t}" for n, ts in GRAPH.items() if n.startswith(source) for t in ts if t.startswith(target))


@pytest.mark.parametrize("source, target", [
    ("trit.engine", "trit.app"),               # the engine is scriptable without the app
    ("trit.engine.runtime", "trit.engine.tools"),   # benchmarks and references never load with a model
    ("trit.engine.runtime", "trit.engine.models"),
    ("trit.engine.runtime", "trit.engine.backends"),
    ("trit.engine.formats", "trit.engine.tools"),
    ("trit.engine.formats", "trit.engine.models"),
    ("trit.engine.backends", "trit.engine.tools"),
    ("trit.engine.backends", "trit.engine.models"),
    ("trit.engine.models", "trit.engine.tools"),
    ("trit.app.tui", "trit.engine.tools"),
])
def test_arrows_point_one_way(source, target):
    assert imports(source, target) == []


def third_party_imports(name: str) -> set[str]:
    """The top-level names of everything a module imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_the_engine_knows_no_terminal_ui_and_no_history_database():
    """DESIGN.md: engine/ imports nothing from app/, Textual or SQLite — anyone can script it."""
    found = {f"{name}: {m}" for name in MODULES if name.startswith("trit.engine")
             for m in third_party_imports(name) & {"textual", "rich", "sqlite3", "sqlite_utils", "click"}}
    assert found == set()


# `trit serve` binds its listening socket and lists this machine's own addresses (the Host check): it may import
# socket, and nothing else of the network, and opens no connection.
LISTENERS = {"trit.app.server", "trit.app.server.security"}
# `trit ask --server URL`: the one client outside the downloads, to the server the person named, with http.client.
SERVER_CLIENT = "trit.app.server.client"


def test_only_models_reach_the_network():
    """The download code is the only network code: nothing else imports an HTTP client."""
    clients = ("httpx", "httpx2", "huggingface_hub", "urllib.request", "requests", "http.client", "socket")
    users, listening = set(), set()
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            used = {c for m in mods for c in clients if m == c or m.startswith(c + ".")}
            if name in LISTENERS and used <= {"socket"}:
                listening.update(used and {name})
            elif name == SERVER_CLIENT and used <= {"http.client"}:
                listening.update(used and {name})
            elif used:
                users.add(name)
    assert users and all(u.startswith("trit.engine.models.") for u in users), sorted(users)
    assert listening == LISTENERS | {SERVER_CLIENT}, sorted(listening)


UNIX_ONLY = {"resource", "fcntl", "termios", "tty", "pty", "grp", "syslog", "posix_ipc", "crypt", "nis", "spwd"}


def test_no_module_needs_unix_to_import():
    """Windows has none of these: a module may use one only inside a function that does without it there."""
    found = []
    for name, path in MODULES.items():
        for node in ast.parse(path.read_text(encoding="utf-8")).body:  # module level only
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            found += [f"{name}: {m}" for m in mods if m.split(".")[0] in UNIX_ONLY]
    assert found == []
PROBE = r"""
import json, sys
before = set(sys.modules)
import trit
model_api = trit.load  # the engine's public API, loaded on first use
from trit.app import cli, service
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def test_import_trit_loads_no_benchmark_and_no_unix_only_module(tmp_path):
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                       env=offline_env({**os.environ, "TRIT_HOME": str(tmp_path)}))
    assert r.returncode == 0, r.stderr
    loaded = set(json.loads(r.stdout))
    assert "trit.engine.runtime.model" in loaded  # the probe did load the engine
    assert sorted(m for m in loaded if m.startswith("trit.engine.tools")) == []
    assert sorted(loaded & UNIX_ONLY) == []
    assert sorted(m for m in loaded if m.split(".")[0] in ("llama_cpp", "torch", "transformers", "gguf")) == []


def test_only_trit_is_installed_at_the_top_level():
    """The wheel's packages: one top-level name, whatever the folders of the checkout are called."""
    import trit

    site = Path(trit.__file__).resolve().parent.parent
    dist = next(site.glob("trit-*.dist-info"), None)
    if dist is None:
        pytest.skip("trit is not installed from a wheel here")
    records = (dist / "RECORD").read_text().splitlines()
    tops = {line.split(",")[0].split("/")[0] for line in records} - {dist.name}
    tops = {t for t in tops if not t.startswith("..")}  # console scripts live outside site-packages
    assert tops == {"trit"}, sorted(tops)


def test_every_sampling_name_is_one_samplingparams_knows():
    """The names copied by hand once drifted (`repeat_penalty`): every table of sampling names is checked here."""
    from trit.app.settings import FLOAT_SETTINGS, SAMPLING_SETTINGS
    from trit.app.tui.screens.settings import FIELDS
    from trit.engine import SamplingParams
    from trit.engine.formats.gguf import SAMPLING_KEYS

    names = set(SamplingParams.names())
    assert set(SAMPLING_SETTINGS) <= names and set(FLOAT_SETTINGS) <= set(SAMPLING_SETTINGS)
    assert {f[0] for f in FIELDS} <= names
    assert set(SAMPLING_KEYS.values()) <= names


def test_the_commands_offer_the_formats_the_engine_has():
    """`trit bench --head/--ternary` spell the names out, so that `trit --help` need not load the engine."""
    from trit.app.cli import bench
    from trit.engine.formats import derived
    from trit.engine.runtime.model import DEFAULT_HEAD

    params = {p.name: p for p in bench.params if p.name in ("head", "ternary")}
    assert tuple(params["head"].type.choices) == derived.HEADS and params["head"].default == DEFAULT_HEAD
    assert tuple(params["ternary"].type.choices) == ("auto", *derived.TERNARY_FORMATS)
