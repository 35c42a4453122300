"""Where Trit keeps things, when that place turns hostile (issue 17): files others could read. Through the installed
`trit`, as a user meets it."""

from __future__ import annotations

import json
import shutil
import stat

import test_hostile_input

from trit.assets import DEMO_MODEL

home, trit = test_hostile_input.home, test_hostile_input.trit  # the fixtures: TRIT_HOME, and the installed trit in it


def installed_copy_of_the_demo(trit, tmp_path, name="mine"):
    folder = tmp_path / name
    shutil.copytree(DEMO_MODEL, folder)
    (folder / "trit-demo.json").unlink()
    r = trit("import", folder)
    assert r.returncode == 0, r.stderr
    return name


def ask_json(trit, *args) -> dict:
    r = trit("ask", "--max-tokens", 6, "--seed", 1, "--json", *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)



# ---- item 7: everything Trit writes is its user's alone ----

def test_every_file_and_folder_trit_writes_is_readable_by_its_user_only(trit, home, tmp_path):
    mine = installed_copy_of_the_demo(trit, tmp_path)  # the models folder, its files and the weights derived there
    ask_json(trit, "-m", mine, "hello")
    assert trit("models", "--default", mine).returncode == 0
    export = tmp_path / "export.md"
    assert trit("history", "export", 1, "-o", export).returncode == 0
    written = [home, *home.rglob("*"), export]
    assert len(written) > 10
    loose = [f"{oct(stat.S_IMODE(p.stat().st_mode))} {p}" for p in written if stat.S_IMODE(p.stat().st_mode) & 0o077]
    assert loose == []


def test_an_existing_export_keeps_the_mode_its_owner_gave_it(trit, tmp_path):
    ask_json(trit, "-m", "demo", "hello")
    shared = tmp_path / "shared.md"
    shared.write_text("old")
    shared.chmod(0o644)
    assert trit("history", "export", 1, "-o", shared).returncode == 0
    assert "hello" in shared.read_text() and stat.S_IMODE(shared.stat().st_mode) == 0o644
