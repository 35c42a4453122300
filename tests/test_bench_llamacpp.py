"""`trit bench --vs llama.cpp`: the GGUF export (read back with the gguf package, never skipped) and, when
llama-cpp-python is installed, llama.cpp loading and running it (speed only: its bitnet FFN uses SiLU)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize

from trit.engine.formats import gguf_export
from trit.engine.formats.checkpoint import PROJECTIONS, Checkpoint
from trit.engine.formats.packing import unpack_ternary

# TQ1_0/TQ2_0 blocks are 256 weights along a row: hidden and intermediate must be multiples of 256. Two query
# heads per kv head, head_dim 64.
SHAPE = dict(hidden_size=256, intermediate_size=768, num_attention_heads=4, num_key_value_heads=2, vocab_size=1024)
HAVE_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
needs_llama_cpp = pytest.mark.skipif(not HAVE_LLAMA_CPP, reason='llama-cpp-python is not installed '
                                     '(pip install "trit[gguf]"; it compiles llama.cpp)')
LLAMA_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
               "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
               "mlp.down_proj": "ffn_down"}


@pytest.fixture(params=["autobitlinear", "bitlinear"])
def model(request, make_model):
    return make_model("tiny", linear_class=request.param, **SHAPE)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    cache = {}

    def export(folder, qtype):
        key = (str(folder), qtype)
        if key not in cache:
            cache[key] = gguf_export.export(folder, tmp_path_factory.mktemp("gguf") / f"{qtype}.gguf", qtype)
        return cache[key]

    return export


def field(reader: gguf.GGUFReader, key: str):
    f = reader.fields[key]
    if f.types[0] == gguf.GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]).decode()
    if f.types[0] == gguf.GGUFValueType.ARRAY:
        return [bytes(f.parts[i]).decode() if f.types[-1] == gguf.GGUFValueType.STRING else f.parts[i][0]
                for i in f.data]
    return f.parts[f.data[0]][0]


@pytest.mark.parametrize("qtype", gguf_export.QTYPES)
def test_export_has_the_tensors_and_metadata_llama_cpp_bitnet_needs(model, exported, qtype):
    ckpt = Checkpoint(model)
    cfg = ckpt.config
    reader = gguf.GGUFReader(exported(model, qtype))
    assert field(reader, "general.architecture") == "bitnet"
    expected_kv = {
        "bitnet.context_length": cfg.max_position_embeddings, "bitnet.embedding_length": 256,
        "bitnet.block_count": cfg.num_hidden_layers, "bitnet.feed_forward_length": 768,
        "bitnet.attention.head_count": 4, "bitnet.attention.head_count_kv": 2,
        "bitnet.attention.key_length": 64, "bitnet.attention.value_length": 64,
        "general.file_type": getattr(gguf.LlamaFileType, f"MOSTLY_{qtype.upper()}"),
    }
    for key, value in expected_kv.items():
        assert field(reader, key) == value, key
    assert field(reader, "bitnet.rope.freq_base") == pytest.approx(cfg.rope_theta)
    assert field(reader, "bitnet.attention.layer_norm_rms_epsilon") == pytest.approx(cfg.rms_norm_eps)
    assert field(reader, "tokenizer.ggml.model") == "gpt2"
    tokens = field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == cfg.vocab_size and tokens[cfg.bos_token_id] == "<|begin_of_text|>"
    assert len(field(reader, "tokenizer.ggml.merges")) > 0
    assert field(reader, "tokenizer.ggml.bos_token_id") == cfg.bos_token_id

    tensors = {t.name: t for t in reader.tensors}
    per_layer = ["attn_norm", "ffn_norm", "attn_sub_norm", "ffn_sub_norm", *LLAMA_NAMES.values()]
    names = {"token_embd.weight", "output_norm.weight"} | {
        f"blk.{i}.{n}.weight" for i in range(cfg.num_hidden_layers) for n in per_layer}
    folded = cfg.linear_class == "autobitlinear"  # a bf16 scale is exactly an fp16 one
    if not folded:
        names |= {f"blk.{i}.{n}.scale" for i in range(cfg.num_hidden_layers) for n in LLAMA_NAMES.values()}
    assert set(tensors) == names  # no output.weight: the head is token_embd
    assert tensors["token_embd.weight"].tensor_type == Q.F16
    assert list(tensors["token_embd.weight"].shape) == [256, cfg.vocab_size]  # ggml order: {n_embd, n_vocab}
    assert list(tensors["blk.0.attn_q.weight"].shape) == [256, 256]
    assert list(tensors["blk.0.attn_k.weight"].shape) == [256, 128]
    assert list(tensors["blk.0.ffn_down.weight"].shape) == [768, 256]
    assert list(tensors["blk.0.ffn_sub_norm.weight"].shape) == [768]
    for name, t in tensors.items():
        want = Q.F16 if name == "token_embd.weight" else Q.F32 if name.endswith(("norm.weight", ".scale")) else \
            getattr(Q, qtype.upper())
        assert t.tensor_type == want, name

    # the float tensors are the checkpoint's values: the embedding rounded to f16 as llama.cpp's converter does
    # (exact but for the few values below f16's normal range), norms exact in f32
    embd = np.asarray(tensors["token_embd.weight"].data).reshape(cfg.vocab_size, 256)
    exact = ckpt.f32("model.embed_tokens.weight")
    np.testing.assert_array_equal(embd, exact.astype(np.float16))
    assert np.mean(embd.astype(np.float32) == exact) > 0.999
    np.testing.assert_array_equal(np.asarray(tensors["blk.1.ffn_sub_norm.weight"].data),
                                  ckpt.f32("model.layers.1.mlp.ffn_sub_norm.weight"))


@pytest.mark.parametrize("qtype", gguf_export.QTYPES)
def test_ternary_weights_dequantize_exactly_to_t_times_the_scale_llama_cpp_applies(model, exported, qtype):
    """llama.cpp computes (dequantized W) @ x, then multiplies by `.scale` when the tensor exists: that product must
    be exactly T x weight_scale (autobitlinear) or T / weight_scale (bitlinear), T from the packed checkpoint."""
    ckpt = Checkpoint(model)
    cfg = ckpt.config
    tensors = {t.name: t for t in gguf.GGUFReader(exported(model, qtype)).tensors}
    for layer in range(cfg.num_hidden_layers):
        for proj in PROJECTIONS:
            hf = f"model.layers.{layer}.{proj}.weight"
            t = unpack_ternary(ckpt.raw(hf)).astype(np.float32)
            stored = ckpt.f32(hf + "_scale")[0]
            s = stored if cfg.linear_class == "autobitlinear" else np.float32(1) / stored
            g = tensors[f"blk.{layer}.{LLAMA_NAMES[proj]}.weight"]
            w = dequantize(np.asarray(g.data), g.tensor_type).reshape(t.shape)
            scale_t = tensors.get(f"blk.{layer}.{LLAMA_NAMES[proj]}.scale")
            if scale_t is not None:
                assert set(np.unique(w)) <= {-1.0, 0.0, 1.0}  # the blocks hold T itself
                w = w * np.asarray(scale_t.data)[0]
            np.testing.assert_array_equal(w, t * s, err_msg=hf)


def test_quantizer_is_lossless_on_awkward_blocks():
    rng = np.random.default_rng(1)
    t = rng.integers(-1, 2, (8, 512)).astype(np.int8)
    t[0, :256] = 0   # an all-zero block
    t[1, :256] = 1   # all +1
    t[2, 256:] = -1  # all -1
    for qtype in gguf_export.QTYPES:
        for scale in (np.float32(1.5), np.float32(-0.75), np.float32(2.0) ** -10):
            data, folded = gguf_export.quantize_ternary(t, scale, qtype)
            assert folded
            np.testing.assert_array_equal(dequantize(data, getattr(Q, qtype.upper())).reshape(t.shape),
                                          t.astype(np.float32) * scale)
        data, folded = gguf_export.quantize_ternary(t, np.float32(1) / np.float32(1.7), qtype)
        assert not folded  # not an fp16 number: the blocks hold T, the scale goes into a `.scale` tensor
        np.testing.assert_array_equal(dequantize(data, getattr(Q, qtype.upper())).reshape(t.shape), t)


def test_models_llama_cpp_cannot_block_are_refused_with_one_line(make_model):
    ckpt = Checkpoint(make_model("tiny"))  # hidden 128: not a multiple of the 256-weight block
    with pytest.raises(gguf_export.GGUFExportError, match="multiples of 256"):
        gguf_export.check_shape(ckpt)


def test_the_gguf_is_cached_in_trit_and_written_again_when_stale(make_model, tmp_path):
    from trit.engine.tools import synthetic

    folder = synthetic.write_model(tmp_path / "m", "tiny", **SHAPE)
    path = gguf_export.ensure(folder, "tq2_0")
    assert path == folder / "trit" / "llamacpp-tq2_0.gguf" and path.exists()
    stamp = path.stat().st_mtime_ns
    assert gguf_export.ensure(folder, "tq2_0") == path and path.stat().st_mtime_ns == stamp  # reused
    path.write_bytes(b"not a gguf")
    gguf_export.ensure(folder, "tq2_0")
    assert gguf_export.is_current(path, Checkpoint(folder))
    assert not list((folder / "trit").glob(".*partial*"))


def test_vs_llama_cpp_without_the_package_is_one_line_and_exit_1(monkeypatch, tiny_model):
    from click.testing import CliRunner

    from trit.app.cli import cli

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    r = CliRunner().invoke(cli, ["bench", str(tiny_model), "--vs", "llama.cpp", "--pp", "4", "--tg", "2", "-r", "1"])
    assert r.exit_code == 1
    assert 'pip install "trit[gguf]"' in r.output and "Traceback" not in r.output
    assert "pp4" not in r.output  # refused before Trit's own run


@needs_llama_cpp
@pytest.mark.parametrize("qtype", gguf_export.QTYPES)
def test_llama_cpp_loads_the_export_and_evaluates_tokens(make_model, exported, qtype):
    import llama_cpp

    path = exported(make_model("tiny", **SHAPE), qtype)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, n_batch=16, n_threads=2, verbose=False)
    assert llm.n_vocab() == SHAPE["vocab_size"]
    llm.eval([1, 2, 3, 500, 1000])
    logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
    assert np.isfinite(logits).all() and logits.std() > 0  # speed-only smoke test: llama.cpp's FFN uses SiLU
    del llm


@needs_llama_cpp
def test_bench_llamacpp_measures_in_a_child_process(make_model):
    from trit.engine.tools import bench_llamacpp

    results = bench_llamacpp.run(make_model("tiny", **SHAPE), threads=2, n_prompt=16, n_gen=4, repetitions=2)
    assert [r.qtype for r in results] == list(bench_llamacpp.QTYPES)
    for r in results:
        assert r.pp_tok_s > 0 and r.tg_tok_s > 0 and len(r.pp_runs) == 2 and len(r.tg_runs) == 2
        assert r.peak_rss_mb > 0 and r.logits_finite and r.n_ctx >= 640 and r.n_batch >= 16


@needs_llama_cpp
def test_cli_vs_llama_cpp_json_and_table(make_model, tmp_path):
    folder = make_model("tiny", **SHAPE)
    from network_guard import offline_env
    from test_cli import trit_command

    env = offline_env({**os.environ, "TRIT_HOME": str(tmp_path / "home")})
    cmd = trit_command() + ["bench", str(folder), "--vs", "llama.cpp", "--pp", "16", "--tg", "4", "-r", "1",
                            "--threads", "2"]
    r = subprocess.run(cmd + ["--json"], capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    vs = json.loads(r.stdout)["vs_llama_cpp"]
    assert [x["qtype"] for x in vs["results"]] == ["tq2_0", "tq1_0"] and "SiLU" in vs["warning"]
    assert vs["ratios"]["tq2_0"]["tg"] > 0
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for text in ("llama.cpp TQ2_0", "llama.cpp TQ1_0", "Trit / llama.cpp TQ2_0", "SiLU", "peak RSS"):
        assert text in r.stdout
