"""Bad input ends in an engine exception with one line naming the file or tensor and the problem — never a crash."""

from __future__ import annotations

import json
import shutil
import struct

import numpy as np
import pytest

from trit import engine
from trit.engine.formats.safetensors_file import SafetensorsFile, write_safetensors


@pytest.fixture
def model_copy(tiny_model, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    return folder


def rewrite_tensors(folder, change):
    """Rewrite model.safetensors after change(dict name -> (dtype, array)) edits it."""
    f = SafetensorsFile(folder / "model.safetensors")
    tensors = {name: (info.dtype, np.array(f.array(name))) for name, info in f.tensors.items()}
    f.close()
    change(tensors)
    write_safetensors(folder / "model.safetensors", [(n, d, a) for n, (d, a) in tensors.items()])


def edit_config(folder, change):
    path = folder / "config.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))


def expect(exc_type, folder, *words):
    with pytest.raises(exc_type) as info:
        engine.load(folder)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message
    return message


def test_missing_folder(tmp_path):
    expect(engine.CheckpointError, tmp_path / "nowhere", "nowhere", "not a folder")


def test_missing_config(model_copy):
    (model_copy / "config.json").unlink()
    expect(engine.CheckpointError, model_copy, "config.json", "not found")


def test_config_not_json(model_copy):
    (model_copy / "config.json").write_text("{ not json")
    expect(engine.CheckpointError, model_copy, "config.json", "not valid JSON")


def test_missing_weights_file(model_copy):
    (model_copy / "model.safetensors").unlink()
    expect(engine.CheckpointError, model_copy, "model.safetensors", "not found")


@pytest.mark.parametrize("keep", [0, 5, 100, -1000])
def test_truncated_safetensors(model_copy, keep):
    path = model_copy / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep >= 0 else data[:keep])
    expect(engine.CheckpointError, model_copy, "model.safetensors")


def test_garbage_header(model_copy):
    path = model_copy / "model.safetensors"
    path.write_bytes(struct.pack("<Q", 12) + b"not a header" + b"\0" * 64)
    expect(engine.CheckpointError, model_copy, "model.safetensors", "header")


def test_missing_tensor(model_copy):
    rewrite_tensors(model_copy, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    expect(engine.CheckpointError, model_copy, "model.layers.1.mlp.up_proj.weight", "missing")


def test_wrong_shape(model_copy):
    def change(t):
        dtype, a = t["model.layers.0.self_attn.k_proj.weight"]
        t["model.layers.0.self_attn.k_proj.weight"] = (dtype, np.zeros((a.shape[0] + 1, a.shape[1]), np.uint8))

    rewrite_tensors(model_copy, change)
    expect(engine.CheckpointError, model_copy, "model.layers.0.self_attn.k_proj.weight", "shape")


def test_wrong_dtype(model_copy):
    def change(t):
        _, a = t["model.layers.0.mlp.down_proj.weight"]
        t["model.layers.0.mlp.down_proj.weight"] = ("I8", a.view(np.int8))

    rewrite_tensors(model_copy, change)
    expect(engine.CheckpointError, model_copy, "model.layers.0.mlp.down_proj.weight", "I8", "U8")


def test_packed_byte_holding_code_3(model_copy):
    def change(t):
        _, a = t["model.layers.1.self_attn.o_proj.weight"]
        a[3, 7] = 0b11_01_00_10  # the top field is 3: not a ternary value

    rewrite_tensors(model_copy, change)
    expect(engine.CheckpointError, model_copy, "model.layers.1.self_attn.o_proj.weight", "[3, 7]", "code 3")


def test_unknown_quant_method(model_copy):
    edit_config(model_copy, lambda c: c["quantization_config"].update(quant_method="gptq"))
    expect(engine.CheckpointError, model_copy, "config.json", "quant_method", "gptq")


def test_not_a_bitnet_model(model_copy):
    edit_config(model_copy, lambda c: c.update(model_type="llama"))
    expect(engine.CheckpointError, model_copy, "config.json", "model_type")


def test_unknown_linear_class(model_copy):
    edit_config(model_copy, lambda c: c["quantization_config"].update(linear_class="fancylinear"))
    expect(engine.CheckpointError, model_copy, "linear_class", "fancylinear")


def test_online_quantization_mode_is_refused(model_copy):
    edit_config(model_copy, lambda c: c["quantization_config"].update(quantization_mode="online"))
    expect(engine.CheckpointError, model_copy, "quantization_mode")


def test_config_with_more_layers_than_the_file(model_copy):
    edit_config(model_copy, lambda c: c.update(num_hidden_layers=c["num_hidden_layers"] + 1))
    expect(engine.CheckpointError, model_copy, "missing", "config.json implies")


def test_config_with_fewer_layers_than_the_file(model_copy):
    edit_config(model_copy, lambda c: c.update(num_hidden_layers=1))
    expect(engine.CheckpointError, model_copy, "model.layers.1", "not part of a model with this config.json")


def test_config_whose_hidden_size_disagrees_with_the_tensors(model_copy):
    edit_config(model_copy, lambda c: c.update(hidden_size=c["hidden_size"] * 2,
                                               num_attention_heads=c["num_attention_heads"] * 2))
    expect(engine.CheckpointError, model_copy, "model.embed_tokens.weight", "shape")


def test_zero_weight_scale(model_copy):
    def change(t):
        t["model.layers.0.self_attn.q_proj.weight_scale"] = ("F32", np.zeros(1, np.float32))

    rewrite_tensors(model_copy, change)
    expect(engine.CheckpointError, model_copy, "q_proj.weight_scale", "non-zero")


@pytest.mark.parametrize("bad", [-1, 1024, 10**9])
def test_token_ids_outside_the_vocabulary(tiny_model, bad):
    model = engine.load(tiny_model)
    with pytest.raises(engine.InputError, match=f"token id {bad} is outside the vocabulary"):
        model.logits([1, 2, bad])
    with model.context(8) as ctx, pytest.raises(engine.InputError):
        ctx.eval([bad])
        assert ctx.n_past == 0


def test_positions_past_the_context(tiny_model):
    model = engine.load(tiny_model)
    with model.context(8) as ctx:
        ctx.eval(list(range(6)))
        with pytest.raises(engine.InputError, match="do not fit"):
            ctx.eval([1, 2, 3])
        assert ctx.n_past == 6  # nothing was appended
        ctx.eval([1, 2])
        assert ctx.n_past == 8
    with pytest.raises(engine.InputError, match="outside 1"):
        model.context(model.config.max_position_embeddings + 1)
    with pytest.raises(engine.InputError, match="do not fit the model's context"):
        model.logits(np.zeros(model.config.max_position_embeddings + 1, np.int64))


def test_native_boundary_checks_too(tiny_model):
    """Even called directly, past the Python checks, the library refuses instead of crashing."""
    from trit.engine.runtime import native

    model = engine.load(tiny_model)
    with model.context(4) as ctx:
        ids = np.array([1, 2, 3, 4, 5], np.int32)
        with pytest.raises(engine.InputError, match="past the context"):
            native.check(native.lib().trit_eval(ctx._handle, native.ptr(ids), 5, None, native.LOGITS_NONE))
        ids = np.array([99999], np.int32)
        with pytest.raises(engine.InputError, match="outside the vocabulary"):
            native.check(native.lib().trit_eval(ctx._handle, native.ptr(ids), 1, None, native.LOGITS_NONE))
        assert native.lib().trit_context_n_past(ctx._handle) == 0
