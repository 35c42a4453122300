"""Warm state without a server (issue 18): `trit ask -c` and `--cid` in a new process load the KV cache the last turn
saved (<cache>/kv/<id>.kv, engine/formats/kv_file.py) instead of prefilling the conversation again. The file is the
user's alone, stamped with what can change the numbers, never trusted when it does not match, never written for
--no-log, deleted with its conversation, and kept within config.toml's kv_cache_mb."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
import test_hostile_input
import test_hostile_storage
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from network_guard import offline_env
from test_cli import trit_command
from test_hostile_input import one_line

from trit import engine
from trit.assets import DEMO_MODEL
from trit.engine.runtime.chat import Chat

home, trit = test_hostile_input.home, test_hostile_input.trit  # TRIT_HOME, and the installed trit in it
namespace = test_hostile_storage.namespace  # a user and mount namespace: a read-only or full cache folder

QUESTION, FOLLOW_UP = "Who is Mr. Darcy?", "And Elizabeth?"
GREEDY = ("--temperature", 0, "--max-tokens", 24)


def ask(trit, *args) -> dict:
    r = trit("ask", *GREEDY, "--json", *args)
    assert r.returncode == 0, r.stderr.decode()
    return json.loads(r.stdout)


def trit_in(home: Path, cwd: Path):
    """The `trit` fixture's runner for another TRIT_HOME."""
    def run(*args):
        return subprocess.run(trit_command() + [str(a) for a in args], capture_output=True, cwd=cwd, timeout=300,
                              env=offline_env({**os.environ, "TRIT_HOME": str(home)}))

    return run


def kv_format():
    """engine/formats/kv_file.py, imported when a test needs it (so that every test here runs, and fails, on a Trit
    without it)."""
    from trit.engine.formats import kv_file

    return kv_file


def with_meta(data: bytes, meta: bytes) -> bytes:
    """A cache file with another meta, its footer made to match: only the checks past the CRCs can refuse it."""
    kv_file = kv_format()
    meta_at = int.from_bytes(data[-kv_file.FOOT.size:][:8], "little")
    return data[:meta_at] + meta + kv_file.FOOT.pack(meta_at, len(meta), zlib.crc32(meta), kv_file.END)


def kv_files(home: Path) -> list[str]:
    folder = home / "cache" / "kv"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def follow_up(question: str, first: dict, then: str) -> list[dict]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": first["content"]},
            {"role": "user", "content": then}]


# ---- the numbers ------------------------------------------------------------------------------------------------

def test_a_turn_in_a_new_process_with_the_saved_cache_gives_the_logits_of_a_fresh_prefill(trit, home):
    """`trit ask` saves the conversation; this process (a new one) restores it and prefills only the follow-up. Its
    logits equal a fresh prefill of the whole prompt: bit for bit when this kernel's prefill is batch-invariant on
    these tokens (checked here, token by token against one batch; it is on AVX2 and scalar), else within the
    tolerance the engine's other reuse tests hold on every kernel."""
    first = ask(trit, "-m", "demo", QUESTION)
    saved = home / "cache" / "kv" / f"{first['conversation_id']}.kv"
    assert saved.is_file()

    model = engine.load(DEMO_MODEL, threads=2)
    chat = Chat(model, model.tokenizer)
    messages = follow_up(QUESTION, first, FOLLOW_UP)
    restored = chat.restore(messages, saved)
    assert restored == first["prompt_tokens"] + first["generated_tokens"] - (first["finish_reason"] == "length")
    ids, text = chat.prompt(messages)
    logits, reused, _ = chat.prefill(ids, text=text)
    assert reused == restored and len(ids) > reused

    fresh_model = engine.load(DEMO_MODEL, threads=2)
    fresh = fresh_model.logits(ids)
    with fresh_model.context() as ctx:
        stepped = np.stack([ctx.eval([t]) for t in ids])
    if np.array_equal(stepped, fresh):
        assert np.array_equal(logits, fresh[-1])
    else:  # a kernel whose batches round differently from single tokens
        np.testing.assert_allclose(logits, fresh[-1], rtol=1e-4, atol=1e-3)
        assert int(np.argmax(logits)) == int(np.argmax(fresh[-1]))
    # and the cache restored is, bit for bit, the one a fresh prefill of the same tokens makes
    with fresh_model.context() as ctx:
        ctx.eval(ids[:restored], logits=None)
        if np.array_equal(stepped, fresh):
            assert np.array_equal(ctx.read_kv(0, restored), chat.context.read_kv(0, restored))


# ---- through trit ---------------------------------------------------------------------------------------------------

def test_ask_c_and_cid_in_a_new_process_reuse_the_saved_cache_and_answer_as_one_process_would(trit, home,
                                                                                              tmp_path):
    """A new process with the saved cache answers as the chat app, which kept the cache in memory, does: the same
    tokens (the reply's own, not the reply's text tokenized again) and so the same greedy answer."""
    first = ask(trit, "-m", "demo", QUESTION)
    cid = first["conversation_id"]
    cold_home = tmp_path / "cold"
    shutil.copytree(home, cold_home)
    shutil.rmtree(cold_home / "cache" / "kv")

    second = ask(trit, "-c", FOLLOW_UP)
    model = engine.load(DEMO_MODEL, threads=2)
    params = model.default_params(temperature=0, max_tokens=24)
    one_process = [list(model.chat(m, params))[-1] for m in ([{"role": "user", "content": QUESTION}],
                                                             follow_up(QUESTION, first, FOLLOW_UP))]
    assert one_process[0].text == first["content"]
    assert (one_process[1].text, one_process[1].reused_tokens) == (second["content"], second["reused_tokens"])
    assert second["reused_tokens"] >= first["prompt_tokens"] + first["generated_tokens"] - 1 > 0
    third = ask(trit, "--cid", cid, "And Mr. Bingley?")
    assert third["reused_tokens"] >= second["prompt_tokens"] + second["generated_tokens"] - 1
    assert kv_files(home) == [f"{cid}.kv"]

    without = ask(trit_in(cold_home, tmp_path), "-c", FOLLOW_UP)  # no file: the whole conversation prefilled
    assert without["reused_tokens"] == 0 and without["prompt_tokens"] >= second["prompt_tokens"] - 2


def test_the_cache_file_is_readable_by_its_user_only(trit, home):
    cid = ask(trit, "-m", "demo", QUESTION)["conversation_id"]
    saved = home / "cache" / "kv" / f"{cid}.kv"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert stat.S_IMODE(saved.parent.stat().st_mode) == 0o700
    ask(trit, "-c", FOLLOW_UP)  # extended in place: the mode stays
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600


def test_no_log_writes_no_cache(trit, home):
    ask(trit, "-m", "demo", "--no-log", QUESTION)
    assert kv_files(home) == []
    cid = ask(trit, "-m", "demo", QUESTION)["conversation_id"]
    before = (home / "cache" / "kv" / f"{cid}.kv").read_bytes()
    ask(trit, "-c", "--no-log", FOLLOW_UP)  # a turn not logged changes nothing of the conversation, its cache included
    assert (home / "cache" / "kv" / f"{cid}.kv").read_bytes() == before


def test_history_rm_deletes_the_cache_with_the_conversation(trit, home):
    a = ask(trit, "-m", "demo", QUESTION)["conversation_id"]
    b = ask(trit, "-m", "demo", "Who is Mr. Collins?")["conversation_id"]
    c = ask(trit, "-m", "demo", "Who is Jane?")["conversation_id"]
    assert kv_files(home) == sorted(f"{i}.kv" for i in (a, b, c))
    assert trit("history", "rm", "--yes", a).returncode == 0
    assert kv_files(home) == sorted(f"{i}.kv" for i in (b, c))
    assert trit("history", "rm", "--all", "--yes").returncode == 0
    assert kv_files(home) == []


def test_the_chat_apps_delete_goes_through_the_store_that_deletes_the_cache(home, monkeypatch):
    """F8 calls Store.delete_conversation, the one place that deletes a conversation's cache too."""
    monkeypatch.setenv("TRIT_HOME", str(home))
    from trit.app.store import Store

    with Store() as store:
        cid = store.create_conversation(model="demo").id
        saved = store.warm.path(cid)
        saved.parent.mkdir(parents=True)
        saved.write_bytes(b"x")
        Path(f"{saved}.123.tmp").write_bytes(b"x")  # a write cut short
        store.delete_conversation(cid)
    assert not saved.parent.exists() or list(saved.parent.iterdir()) == []


def test_a_cache_from_another_model_is_ignored_and_replaced(trit, home, make_model, tmp_path):
    other = make_model("tiny", seed=3)
    first = ask(trit, "-m", "demo", QUESTION)
    saved = home / "cache" / "kv" / f"{first['conversation_id']}.kv"
    demo_stamp = saved.read_bytes()[:200]
    shutil.copytree(home, tmp_path / "cold")
    shutil.rmtree(tmp_path / "cold" / "cache" / "kv")
    second = ask(trit, "-c", "-m", other, FOLLOW_UP)  # the same conversation goes on with another model
    assert second["reused_tokens"] == 0 and second["generated_tokens"] > 0
    assert second["content"] == ask(trit_in(tmp_path / "cold", tmp_path), "-c", "-m", other, FOLLOW_UP)["content"]
    assert saved.read_bytes()[:200] != demo_stamp  # replaced by the new model's
    third = ask(trit, "-c", "-m", other, "And Jane?")
    assert third["reused_tokens"] > 0


@pytest.mark.parametrize("damage", ["row", "token", "text", "stamp", "cut", "junk after"])
def test_a_damaged_cache_is_ignored_and_the_answer_is_still_right(trit, home, tmp_path, damage):
    kv_file = kv_format()
    first = ask(trit, "-m", "demo", QUESTION)
    saved = home / "cache" / "kv" / f"{first['conversation_id']}.kv"
    clean = saved.read_bytes()
    data = bytearray(clean)
    meta_at = int.from_bytes(data[-kv_file.FOOT.size:][:8], "little")
    if damage == "row":
        data[meta_at - 100] ^= 0x40
    elif damage in ("token", "text"):  # another token id or word, in a file that is otherwise whole
        meta = json.loads(data[meta_at:-kv_file.FOOT.size])
        if damage == "token":
            meta["tokens"][3] = (meta["tokens"][3] + 1) % 4096
        else:
            meta["text"] = meta["text"].replace("Darcy", "Darby")
        data = with_meta(bytes(data), json.dumps(meta).encode())
    elif damage == "stamp":
        data[:200] = data[:200].replace(b'"head": "q4"', b'"head": "q8"')
    elif damage == "cut":
        data = data[:len(data) // 2]
    else:
        data += b"\0" * 64
    assert bytes(data) != clean
    saved.write_bytes(bytes(data))
    shutil.copytree(home, tmp_path / "backup")

    second = ask(trit, "-c", FOLLOW_UP)
    assert second["reused_tokens"] == 0  # nothing of it was trusted
    saved.unlink()
    shutil.rmtree(home)
    shutil.copytree(tmp_path / "backup", home)
    (home / "cache" / "kv" / f"{first['conversation_id']}.kv").unlink()
    assert ask(trit, "-c", FOLLOW_UP)["content"] == second["content"]  # the same answer as with no file at all


def test_the_budget_evicts_the_least_recently_used_and_keeps_the_newest(trit, home):
    (home / "config").mkdir(parents=True)
    # two of these conversations, not three, in the fp16 cache's rows
    (home / "config" / "config.toml").write_text('kv_cache_mb = 3\nkv_type = "f16"\n')
    document = "The lighthouse keeper wrote in his log every night. " * 40  # ~520 tokens: ~1.4 MB of cache
    a = ask(trit, "-m", "demo", document + "What did he write?")["conversation_id"]
    b = ask(trit, "-m", "demo", document + "Where was the lighthouse?")["conversation_id"]
    assert kv_files(home) == sorted([f"{a}.kv", f"{b}.kv"])
    assert ask(trit, "--cid", a, "Why?")["reused_tokens"] > 0  # a is used again: b is now the least recent
    c = ask(trit, "-m", "demo", document + "Who kept it?")["conversation_id"]
    assert kv_files(home) == sorted([f"{a}.kv", f"{c}.kv"])
    r = ask(trit, "--cid", b, "Still there?")  # its cache went: it is prefilled again, and saved again
    assert r["reused_tokens"] == 0 and f"{b}.kv" in kv_files(home)
    assert sum((home / "cache" / "kv" / n).stat().st_size for n in kv_files(home)) <= 3 << 20


def test_a_gguf_model_answers_and_continues_with_no_cache_on_disk(trit, home, tmp_path):
    """llama.cpp's contexts are not saved: its conversations go on as before, prefilled again by each process."""
    pytest.importorskip("gguf", reason="the gguf package writes the test model (pip install \"trit[gguf]\")")
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install \"trit[gguf]\")")
    import gguf_models

    model = gguf_models.write_llama(tmp_path / "tiny.gguf", seed=3)
    first = ask(trit, "-m", model, "hi")
    second = ask(trit, "-c", "and again")
    assert second["conversation_id"] == first["conversation_id"] and second["prompt_tokens"] > first["prompt_tokens"]
    assert second["reused_tokens"] == 0 and kv_files(home) == []


def test_a_negative_budget_in_config_toml_names_the_file_and_field(trit, home):
    config = home / "config" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text("kv_cache_mb = -1\n")
    one_line(trit("ask", "-m", "demo", "hi"), str(config), "kv_cache_mb")


def test_a_budget_of_zero_keeps_no_cache(trit, home):
    (home / "config").mkdir(parents=True)
    (home / "config" / "config.toml").write_text("kv_cache_mb = 0\n")
    ask(trit, "-m", "demo", QUESTION)
    assert kv_files(home) == []
    (home / "config" / "config.toml").write_text("kv_cache_mb = 1\n")  # a small conversation fits one MB
    cid = ask(trit, "-m", "demo", QUESTION)["conversation_id"]
    assert kv_files(home) == [f"{cid}.kv"]


def test_a_read_only_cache_folder_does_not_fail_the_answer(trit, namespace, home):
    cid = ask(trit, "-m", "demo", QUESTION)["conversation_id"]
    before = (home / "cache" / "kv" / f"{cid}.kv").read_bytes()
    namespace.read_only(home / "cache")
    r = namespace.trit("ask", *GREEDY, "-c", FOLLOW_UP)
    assert r.returncode == 0 and r.stdout.strip(), r.stderr.decode()
    err = r.stderr.decode().strip().splitlines()
    assert len(err) == 1 and err[0].startswith("trit: ") and "cache" in err[0] and "read-only" in err[0], err
    assert (home / "cache" / "kv" / f"{cid}.kv").read_bytes() == before
    shown = namespace.trit("history", "show", cid, "--json")
    assert len(json.loads(shown.stdout)["messages"]) == 4  # the history took the turn


def test_a_full_cache_disk_does_not_fail_the_answer_and_leaves_nothing_trusted(trit, namespace, home):
    document = "The lighthouse keeper wrote in his log every night. " * 40
    ask(trit, "-m", "demo", QUESTION)
    namespace.fill(home / "cache", size="1m")
    r = namespace.trit("ask", *GREEDY, "-c", document + FOLLOW_UP)  # ~1.4 MB of cache does not fit
    assert r.returncode == 0 and r.stdout.strip(), r.stderr.decode()
    err = r.stderr.decode().strip().splitlines()
    assert len(err) == 1 and err[0].startswith("trit: ") and "full" in err[0], err
    found = namespace.run("find", home, "-name", "*.tmp", check=True).stdout
    assert found == b"", found
    namespace.run("rm", home / "cache" / "filler", check=True)
    r = namespace.trit("ask", *GREEDY, "--json", "-c", "Once more")
    assert r.returncode == 0, r.stderr.decode()  # what the full disk left is ignored or reused, never a crash


# ---- the file format, fuzzed ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved_file(tmp_path_factory):
    """A small model's context of 40 positions saved, its stamp, and the rows and tokens it must give back."""
    from trit.engine.tools import synthetic

    kv_file = kv_format()
    folder = synthetic.write_model(tmp_path_factory.mktemp("model"), "tiny", seed=2, overwrite=True)
    model = engine.load(folder, threads=1)
    ids = np.random.default_rng(1).integers(0, model.config.vocab_size, 40).tolist()
    path = tmp_path_factory.mktemp("kv") / "1.kv"
    with model.context(64) as ctx:
        ctx.eval(ids, logits=None)
        kv_file.save(path, ctx, "forty tokens", kv_file.stamp(model))
        rows = ctx.read_kv(0, 40)
    return model, path.read_bytes(), kv_file.stamp(model), ids, rows


def test_a_follow_up_appends_only_its_new_positions(saved_file, tmp_path):
    kv_file = kv_format()
    model, data, stamp, ids, rows = saved_file
    path = tmp_path / "1.kv"
    path.write_bytes(data)
    inode = path.stat().st_ino
    with model.context(64) as ctx:
        assert kv_file.load(path, ctx, stamp).tokens == ids
        ctx.eval([1, 2, 3], logits=None)
        written = kv_file.save(path, ctx, "forty tokens and three", stamp)
        assert written < 4 * ctx.kv_row_bytes + 1024  # three rows and the meta, not the 43
        assert path.stat().st_ino == inode
        again = ctx.read_kv(0, 43)
    with model.context(64) as ctx:
        assert kv_file.load(path, ctx, stamp).tokens == ids + [1, 2, 3]
        assert np.array_equal(ctx.read_kv(0, 43), again)


def test_a_turn_that_keeps_only_part_of_the_saved_tokens_cuts_the_file_there_and_appends(saved_file, tmp_path):
    """The last reply re-tokenized, or a message edited: the positions before the first different token stay on
    disk and only the rest is written. A damaged file is written anew instead, never extended."""
    kv_file = kv_format()
    model, data, stamp, ids, rows = saved_file
    path = tmp_path / "1.kv"
    path.write_bytes(data)
    inode = path.stat().st_ino
    with model.context(64) as ctx:
        kv_file.load(path, ctx, stamp)
        ctx.truncate(30)
        ctx.eval([5, 6, 7, 8], logits=None)
        assert kv_file.save(path, ctx, "thirty tokens and four", stamp) < 5 * ctx.kv_row_bytes + 1024
        assert path.stat().st_ino == inode
        want = ctx.read_kv(0, 34)
    with model.context(64) as ctx:
        assert kv_file.load(path, ctx, stamp).tokens == ids[:30] + [5, 6, 7, 8]
        assert np.array_equal(ctx.read_kv(0, 34), want)
        damaged = bytearray(path.read_bytes())
        damaged[len(damaged) // 3] ^= 1  # a row before the cut
        path.write_bytes(bytes(damaged))
        inode = path.stat().st_ino
        ctx.truncate(20)
        ctx.eval([9], logits=None)
        kv_file.save(path, ctx, "twenty tokens and one", stamp)
        assert path.stat().st_ino != inode  # written anew
        want = ctx.read_kv(0, 21)
    with model.context(64) as ctx:
        assert kv_file.load(path, ctx, stamp).tokens == ids[:20] + [9]
        assert np.array_equal(ctx.read_kv(0, 21), want)


@settings(max_examples=200, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.data())
def test_a_mutated_cache_file_is_refused_or_gives_back_exactly_what_was_saved(saved_file, tmp_path, data):
    kv_file = kv_format()
    model, clean, stamp, ids, rows = saved_file
    kind = data.draw(st.sampled_from(["flip", "cut", "append", "huge"]))
    mutated = bytearray(clean)
    if kind == "flip":
        for _ in range(data.draw(st.integers(1, 4))):
            at = data.draw(st.integers(0, len(clean) - 1))
            mutated[at] ^= data.draw(st.integers(1, 255))
    elif kind == "cut":
        mutated = mutated[:data.draw(st.integers(0, len(clean) - 1))]
    elif kind == "append":
        mutated += data.draw(st.binary(min_size=1, max_size=64))
    else:  # a length or offset field of the header or footer set huge
        at = data.draw(st.sampled_from([8, 12, len(clean) - kv_file.FOOT.size, len(clean) - kv_file.FOOT.size + 8]))
        width = 4 if at < 16 else 8
        mutated[at:at + width] = data.draw(st.integers(1 << (8 * width - 8), (1 << 8 * width) - 1)).to_bytes(
            width, "little")
    path = tmp_path / f"{abs(hash(bytes(mutated)))}.kv"
    path.write_bytes(bytes(mutated))
    with model.context(64) as ctx:
        got = kv_file.load(path, ctx, stamp)
        if bytes(mutated) == clean:
            assert got is not None
        if got is None:
            assert ctx.n_past == 0
        else:
            assert got.tokens == ids and got.text == "forty tokens" and np.array_equal(ctx.read_kv(0, 40), rows)


def test_the_chat_app_reopening_a_conversation_starts_warm_and_incognito_writes_nothing(home, monkeypatch):
    """The chat app answers through Service, as `trit ask` does: a conversation opened in a new session (a new
    Service and model, as after restarting the app) continues from its saved cache; an incognito one (Ctrl+T,
    Dialogue.logged False) leaves no file."""
    monkeypatch.setenv("TRIT_HOME", str(home))
    from trit.app.service import Service, Turn
    from trit.app.store import Store

    def turn(service, dialogue, text) -> Turn:
        return [e for e in service.send(dialogue, text) if isinstance(e, Turn)][-1]

    with Store() as store:
        service = Service(store, threads=2)
        incognito = service.new(model="demo", params={"temperature": 0, "max_tokens": 12}, logged=False)
        turn(service, incognito, QUESTION)
        assert kv_files(home) == []
        dialogue = service.new(model="demo", params={"temperature": 0, "max_tokens": 12})
        turn(service, dialogue, QUESTION)
        service.close()
        assert kv_files(home) == [f"{dialogue.conversation_id}.kv"]

        reopened = Service(store, threads=2)
        again = reopened.open(dialogue.conversation_id)
        second = turn(reopened, again, FOLLOW_UP)
        assert second.result.reused_tokens > 0 and second.cache_note is None
        reopened.close()


def test_bench_conversation_warm_measures_the_last_turn_in_a_new_process_with_and_without_the_saved_cache(trit,
                                                                                                          home):
    r = trit("bench", "--synthetic", "tiny", "--conversation", "--warm", "--threads", 2, "--json")
    assert r.returncode == 0, r.stderr.decode()
    w = json.loads(r.stdout)
    assert [s["positions"] for s in w["saves"]] == sorted(s["positions"] for s in w["saves"]) and len(w["saves"]) == 4
    assert all(s["seconds"] >= 0 and s["file_bytes"] > 0 for s in w["saves"])
    assert w["warm"]["turn"] == w["cold"]["turn"] == 5
    assert w["warm"]["reused_tokens"] > 0.8 * w["warm"]["prompt_tokens"] and w["cold"]["reused_tokens"] == 0
    assert not list((home / "cache").rglob("*.kv*"))  # the benchmark's own file is gone
    r = trit("bench", "--synthetic", "tiny", "--warm")
    assert r.returncode == 2 and b"--warm goes with --conversation" in r.stderr
