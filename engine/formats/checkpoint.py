"""A BitNet b1.58 checkpoint folder in the Hugging Face packed format: config.json + model.safetensors.

Everything is checked here — every tensor's name, shape and dtype against what config.json implies, and the
packed bytes for the invalid code 3 — before native code touches a byte. Errors name the file or tensor.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from trit.engine.errors import CheckpointError, shown
from trit.engine.formats.regular_file import open_regular
from trit.engine.formats.safetensors_file import SafetensorsFile, TensorInfo, widen_to_f32  # noqa: F401 (users import it here)

WEIGHTS_FILE = "model.safetensors"
SHARDED_INDEX_FILE = "model.safetensors.index.json"  # a weight_map of tensor name -> shard file, beside the shards
CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"  # sampling defaults and stop ids, beside config.json

LINEAR_CLASSES = ("autobitlinear", "bitlinear")
PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
LAYER_NORMS = ("input_layernorm", "post_attention_layernorm", "self_attn.attn_sub_norm", "mlp.ffn_sub_norm")
OUTPUT_HEAD = "lm_head.weight"  # an untied head, in the 16-bit dtype the repository stores
FLOAT_DTYPES = ("BF16", "F16", "F32")
SCALE_RANGE = (1e-6, 1e6)  # real weight scales are near 1 (mean |W|, or its inverse); 3.4e38 makes every logit NaN

# The ternary model families the engine runs. The linear layer is the same arithmetic in all of them; the block and
# the head differ (native/include/trit.h, TRIT_BLOCK_*).
FAMILY_BITNET = "bitnet"  # BitNetForCausalLM (microsoft/bitnet-b1.58-2B-4T): sub-norms, relu² gate
FAMILY_LLAMA = "llama"    # LlamaForCausalLM + quantization_config bitnet (Falcon-E, Falcon3-1.58bit, Llama3-8B-1.58):
                          # SiLU gate, no sub-norms
FAMILY_1BITLLM = "1bitllm"  # 1bitLLM's BitnetForCausalLM (bitnet_b1_58-large, -3B): sub-norms, SiLU gate, float
                            # master weights, quantised to ternary at load (absmean) and kept in trit/
FAMILIES = {FAMILY_BITNET: "BitNet b1.58", FAMILY_LLAMA: "Llama ternary",  # family -> what `trit models` shows
            FAMILY_1BITLLM: "BitNet b1.58 (1bitLLM)"}
HIDDEN_ACT = {FAMILY_BITNET: "relu2", FAMILY_LLAMA: "silu", FAMILY_1BITLLM: "silu"}
# The norms before o_proj and down_proj, by family (the Llama block has none)
SUB_NORM_NAMES = {FAMILY_BITNET: ("self_attn.attn_sub_norm", "mlp.ffn_sub_norm"), FAMILY_LLAMA: (),
                  FAMILY_1BITLLM: ("self_attn.inner_attn_ln", "mlp.ffn_layernorm")}
SUPPORTED = ("BitNetForCausalLM, LlamaForCausalLM with quantization_config.quant_method 'bitnet', or 1bitLLM's "
             "BitnetForCausalLM")


def family_of(config: dict, source: str = CONFIG_FILE) -> str:
    """The family (FAMILY_*) of a config.json, from its architectures, model_type and quantization_config; a
    CheckpointError naming what is missing or unsupported otherwise. Reads nothing but the dict, so a repository can
    be judged from its config.json before any weights are downloaded."""
    def fail(msg: str):
        raise CheckpointError(f"{source}: {msg}")

    if not isinstance(config, dict):
        fail(f"expected a JSON object, found {type(config).__name__}")
    archs = config.get("architectures")
    if archs is not None and not (isinstance(archs, list) and all(isinstance(a, str) for a in archs)):
        fail(f"architectures must be a list of names, not {archs!r:.60}")
    archs = archs or []
    model_type = config.get("model_type")
    if "BitnetForCausalLM" in archs:  # 1bitLLM's own class (model_type llama): float master weights
        if config.get("quantization_config") is not None:
            fail("architectures is BitnetForCausalLM with a quantization_config: 1bitLLM's checkpoints hold float "
                 "master weights, and this one is neither")
        for key, bits in (("weight_bits", 1), ("input_bits", 8)):
            if config.get(key, bits) != bits:
                fail(f"{key} is {config.get(key)!r}; BitNet b1.58 quantises with {key} {bits}")
        return FAMILY_1BITLLM
    if model_type == "bitnet":
        if archs and "BitNetForCausalLM" not in archs:
            fail(f"architectures is {', '.join(archs)}: model_type 'bitnet' expects BitNetForCausalLM")
        family = FAMILY_BITNET
    elif model_type == "llama":
        if archs and "LlamaForCausalLM" not in archs:
            fail(f"model_type is 'llama' but architectures is {', '.join(archs)}; Trit runs {SUPPORTED}")
        q = config.get("quantization_config")
        if not isinstance(q, dict) or q.get("quant_method") != "bitnet":
            fail("model_type is 'llama' without a quantization_config whose quant_method is 'bitnet': this is a "
                 "16-bit model, not a ternary one (import a GGUF of it instead)")
        family = FAMILY_LLAMA
    else:
        shown_archs = f" ({', '.join(archs)})" if archs else ""
        fail(f"model_type is {model_type!r}{shown_archs}: not a ternary family Trit runs ({SUPPORTED})")
    return family


# Upper bounds on config.json's sizes, far above every ternary model bitnet.cpp runs (Llama3-8B: hidden 4096, 32
# layers, vocabulary 128256), so that a corrupt or hostile file is refused at once instead of allocating for it.
LIMITS = {"hidden_size": 1 << 16, "intermediate_size": 1 << 18, "num_hidden_layers": 1 << 10,
          "num_attention_heads": 1 << 10, "num_key_value_heads": 1 << 10, "head_dim": 1 << 10, "vocab_size": 1 << 22,
          "max_position_embeddings": 1 << 18}
# max_position_embeddings x head_dim: the RoPE tables native code computes for every position when it loads a model
# (256 MB here, a 128K context at head_dim 128 a quarter of it). The same numbers as trit.h's TRIT_MAX_*.
ROPE_CELLS_LIMIT = 1 << 26


def kv_bytes_per_token(num_hidden_layers: int, num_key_value_heads: int, head_dim: int) -> int:
    """The KV cache one position takes: a key and a value per layer and KV head, in fp16 — as the native cache and
    llama.cpp's default store them."""
    return num_hidden_layers * 2 * num_key_value_heads * head_dim * 2


@dataclass(frozen=True)
class ModelConfig:
    """The fields of config.json the forward pass depends on, checked."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    max_position_embeddings: int
    rope_theta: float
    rms_norm_eps: float
    linear_class: str  # "autobitlinear": y *= weight_scale; "bitlinear": y /= weight_scale
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    family: str = FAMILY_BITNET
    tie_word_embeddings: bool = True  # False: the output head is its own tensor, lm_head.weight

    @classmethod
    def from_dict(cls, d: dict, source: str = CONFIG_FILE) -> "ModelConfig":
        def fail(msg: str):
            raise CheckpointError(f"{source}: {msg}")

        family = family_of(d, source)
        # 1bitLLM's master weights are quantised here with the inverse of mean |W| as weight_scale, so its
        # projections divide by it ("bitlinear"), as its own BitLinear does
        q = d.get("quantization_config") if family != FAMILY_1BITLLM else {
            "quant_method": "bitnet", "linear_class": "bitlinear"}
        if not isinstance(q, dict):
            fail("no quantization_config: this is not a packed BitNet checkpoint (the bf16 master weights are not "
                 "supported)")
        if q.get("quant_method") != "bitnet":
            fail(f"quant_method is {q.get('quant_method')!r}; only 'bitnet' is supported")
        if q.get("quantization_mode", "offline") != "offline":
            fail(f"quantization_mode is {q.get('quantization_mode')!r}; only packed 'offline' weights are supported")
        linear_class = q.get("linear_class", "bitlinear")  # transformers' default when the key is absent
        if linear_class not in LINEAR_CLASSES:
            fail(f"linear_class is {linear_class!r}; expected one of {', '.join(LINEAR_CLASSES)}")
        if q.get("use_rms_norm"):
            fail("quantization_config.use_rms_norm is true; that variant is not supported")
        act = HIDDEN_ACT[family]
        if d.get("hidden_act", act) != act:
            fail(f"hidden_act is {d.get('hidden_act')!r}; a {FAMILIES[family]} model uses {act!r}")
        if d.get("attention_bias") or d.get("mlp_bias"):
            fail("attention_bias or mlp_bias is true; ternary models have no biases")
        tied = d.get("tie_word_embeddings", False)  # transformers' default for both families
        if not isinstance(tied, bool):
            fail(f"tie_word_embeddings must be true or false, not {tied!r:.40}")

        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        if not isinstance(rope, dict):
            fail(f"rope_scaling must be an object, not {type(rope).__name__}")
        if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
            fail(f"rope type {rope.get('rope_type', rope.get('type'))!r} is not supported (only the default RoPE)")

        def integer(key, default=None):
            v = d.get(key, default)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                fail(f"{key} must be a positive integer, not {v!r:.40}")
            if v > LIMITS.get(key, v):  # checked before anything is allocated for it
                fail(f"{key} is {v}, more than Trit runs ({LIMITS[key]})")
            return v

        def number(key, value):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                fail(f"{key} must be a finite number, not {value!r:.40}")
            return float(value)

        def token_ids(key):
            v = d.get(key)
            ids = [] if v is None else [v] if isinstance(v, int) else v
            if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
                fail(f"{key} must be a token id or a list of them, not {v!r:.40}")
            return ids

        hidden = integer("hidden_size")
        heads = integer("num_attention_heads")
        kv = integer("num_key_value_heads", heads)
        head_dim = integer("head_dim") if d.get("head_dim") is not None else hidden // heads
        bos = token_ids("bos_token_id")
        cfg = cls(
            hidden_size=hidden,
            intermediate_size=integer("intermediate_size"),
            num_hidden_layers=integer("num_hidden_layers"),
            num_attention_heads=heads,
            num_key_value_heads=kv,
            head_dim=head_dim,
            vocab_size=integer("vocab_size"),
            max_position_embeddings=integer("max_position_embeddings"),
            rope_theta=number("rope_theta", d.get("rope_theta", rope.get("rope_theta", 10000.0))),
            rms_norm_eps=number("rms_norm_eps", d.get("rms_norm_eps", 1e-6)),
            linear_class=linear_class,
            bos_token_id=bos[0] if len(bos) == 1 else None,
            eos_token_ids=tuple(token_ids("eos_token_id")),
            family=family,
            tie_word_embeddings=tied,
        )
        if heads % kv:
            fail(f"num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}")
        if head_dim % 2 or head_dim * heads % 4 or head_dim * kv % 4:
            fail(f"head_dim {head_dim} does not fit RoPE and 4-row packing")
        if heads * head_dim != hidden:
            fail(f"num_attention_heads x head_dim = {heads * head_dim} differs from hidden_size {hidden}")
        if cfg.max_position_embeddings * head_dim > ROPE_CELLS_LIMIT:
            fail(f"max_position_embeddings x head_dim is {cfg.max_position_embeddings} x {head_dim}, more than Trit "
                 f"runs ({ROPE_CELLS_LIMIT}): at this head_dim, max_position_embeddings can be at most "
                 f"{ROPE_CELLS_LIMIT // head_dim}")
        if hidden % 4 or cfg.intermediate_size % 4:
            fail("hidden_size and intermediate_size must be multiples of 4 (four ternary rows per packed byte)")
        if not (cfg.rope_theta > 0 and math.isfinite(cfg.rope_theta)):
            fail(f"rope_theta {cfg.rope_theta} is not a positive number")
        if not (cfg.rms_norm_eps > 0):
            fail(f"rms_norm_eps {cfg.rms_norm_eps} is not positive")
        return cfg

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def has_sub_norms(self) -> bool:
        return bool(SUB_NORM_NAMES[self.family])

    @property
    def sub_norm_names(self) -> tuple[str, ...]:
        """The norms before o_proj and down_proj as this family names them; () for the Llama block."""
        return SUB_NORM_NAMES[self.family]

    @property
    def float_masters(self) -> bool:
        """The projections are stored as float master weights, quantised to ternary at load."""
        return self.family == FAMILY_1BITLLM

    def kv_bytes_per_token(self) -> int:
        return kv_bytes_per_token(self.num_hidden_layers, self.num_key_value_heads, self.head_dim)

    @property
    def output_head(self) -> str:
        """The tensor whose rows give the logits: the embedding when tied, else lm_head.weight."""
        return "model.embed_tokens.weight" if self.tie_word_embeddings else OUTPUT_HEAD

    def expected_tensors(self) -> dict[str, tuple[tuple[int, ...], tuple[str, ...]]]:
        """name -> (shape, allowed dtypes) for every tensor a packed checkpoint of this config holds."""
        h, i = self.hidden_size, self.intermediate_size
        q_out, kv_out = self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        proj_shapes = {
            "self_attn.q_proj": (q_out, h), "self_attn.k_proj": (kv_out, h), "self_attn.v_proj": (kv_out, h),
            "self_attn.o_proj": (h, q_out), "mlp.gate_proj": (i, h), "mlp.up_proj": (i, h), "mlp.down_proj": (h, i),
        }
        norm_sizes = {"input_layernorm": h, "post_attention_layernorm": h}
        if self.has_sub_norms:
            attn_norm, ffn_norm = self.sub_norm_names
            norm_sizes.update({attn_norm: q_out, ffn_norm: i})
        out = {
            "model.embed_tokens.weight": ((self.vocab_size, h), FLOAT_DTYPES if self.float_masters else ("BF16",)),
            "model.norm.weight": ((h,), FLOAT_DTYPES),
        }
        if not self.tie_word_embeddings:
            out[OUTPUT_HEAD] = ((self.vocab_size, h), FLOAT_DTYPES)
        for layer in range(self.num_hidden_layers):
            p = f"model.layers.{layer}."
            for name, (rows, cols) in proj_shapes.items():
                if self.float_masters:
                    out[p + name + ".weight"] = ((rows, cols), FLOAT_DTYPES)
                    continue
                out[p + name + ".weight"] = ((rows // 4, cols), ("U8",))
                out[p + name + ".weight_scale"] = ((1,), FLOAT_DTYPES)
            for name, n in norm_sizes.items():
                out[p + name + ".weight"] = ((n,), FLOAT_DTYPES)
        return out


def read_json(path: Path, required: bool = True) -> dict | None:
    """A JSON object from a model folder; None for an optional file that is absent, else a one-line CheckpointError."""
    try:
        with open_regular(path) as f:
            raw = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        if not required:
            return None
        raise CheckpointError(f"{path}: file not found — is this a model folder?") from None
    except OSError as e:
        raise CheckpointError(f"{path}: not readable ({e.strerror or e})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        reason = " ".join(str(e).split())
        raise CheckpointError(f"{path}: not valid JSON ({reason})") from None
    except RecursionError:
        raise CheckpointError(f"{path}: not a config file: its JSON is nested thousands of levels deep") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(raw).__name__}")
    return raw


def read_config(folder: Path) -> ModelConfig:
    path = folder / CONFIG_FILE
    return ModelConfig.from_dict(read_json(path), str(path))


class ShardedSafetensors:
    """The shards model.safetensors.index.json names, read as one file: the interface of SafetensorsFile that
    Checkpoint uses (tensors, array, release, path). Every tensor must be in the shard the index names."""

    def __init__(self, index_path: Path):
        self.path = index_path
        index = read_json(index_path)
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map or not all(
                isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{index_path}: no weight_map of tensor names to shard files")
        self._shards: dict[str, SafetensorsFile] = {}
        self._where: dict[str, SafetensorsFile] = {}
        for shard_name in sorted(set(weight_map.values())):
            # a plain file name beside the index: the map must not reach outside the model folder
            if Path(shard_name).name != shard_name or not shard_name.endswith(".safetensors"):
                raise CheckpointError(f"{index_path}: shard {shown(shard_name)} is not a .safetensors file name in "
                                      "this folder")
            self._shards[shard_name] = SafetensorsFile(index_path.parent / shard_name)
        self.tensors = {}
        for name, shard_name in weight_map.items():
            shard = self._shards[shard_name]
            if name not in shard.tensors:
                raise CheckpointError(f"{shard.path}: tensor {shown(name)} is missing ({index_path.name} puts it "
                                      "there)")
            self.tensors[name] = shard.tensors[name]
            self._where[name] = shard
        for shard in self._shards.values():
            extra = sorted(set(shard.tensors) - set(self._where))
            if extra:
                raise CheckpointError(f"{shard.path}: tensor {shown(extra[0])} is not in {index_path.name}")

    @property
    def files(self) -> list[Path]:
        return [shard.path for shard in self._shards.values()]

    def array(self, name: str) -> np.ndarray:
        return self._where[name].array(name)

    def release(self, name: str) -> None:
        self._where[name].release(name)


class TernaryOverlay:
    """A checkpoint of float master weights seen as a packed one: its projections (and their weight scales) come
    from the ternary tensors derived from them (engine/formats/derived.py, absmean_ternary), everything else from
    the checkpoint's own file."""

    def __init__(self, masters, ternary: dict[str, np.ndarray]):
        self._masters, self._ternary = masters, ternary
        self.path = masters.path
        self.tensors = {n: i for n, i in masters.tensors.items() if n not in ternary}
        for name, a in ternary.items():
            self.tensors[name] = TensorInfo(name, "U8" if a.dtype == np.uint8 else "F32", a.shape, 0, a.nbytes)

    def array(self, name: str) -> np.ndarray:
        return self._ternary[name] if name in self._ternary else self._masters.array(name)

    def release(self, name: str) -> None:
        if name not in self._ternary:
            self._masters.release(name)


class Checkpoint:
    """A checked, memory-mapped packed checkpoint. Packed weights and the embedding stay in the map;
    norms and scales (a few KB) are widened to float32 once."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise CheckpointError(f"{self.folder}: not a folder (a model is a folder with {CONFIG_FILE} and "
                                  f"{WEIGHTS_FILE})")
        self.config = read_config(self.folder)
        weights_path, index_path = self.folder / WEIGHTS_FILE, self.folder / SHARDED_INDEX_FILE
        if not weights_path.exists() and index_path.exists():
            self.file = ShardedSafetensors(index_path)
        else:
            self.file = SafetensorsFile(weights_path)
        # the files the tensors are in: model.safetensors, or the shards in name order
        self.weight_files: list[Path] = self.file.files if isinstance(self.file, ShardedSafetensors) else \
            [self.file.path]
        self._check_tensors()
        if self.config.float_masters:
            from trit.engine.formats import derived  # derived reads checkpoints: imported when first needed

            self.file = TernaryOverlay(self.file, derived.absmean_ternary(self))

    def _check_tensors(self) -> None:
        expected = self.config.expected_tensors()
        present = self.file.tensors
        where = self.file.path
        for name, (shape, dtypes) in expected.items():
            info = present.get(name)
            if info is None:
                raise CheckpointError(f"{where}: tensor {name} is missing (config.json implies it)")
            if info.shape != shape:
                raise CheckpointError(
                    f"{where}: tensor {name} has shape {list(info.shape)}, config.json implies {list(shape)}")
            if info.dtype not in dtypes:
                raise CheckpointError(f"{where}: tensor {name} is {info.dtype}, expected {' or '.join(dtypes)}")
        extra = sorted(set(present) - set(expected))
        if extra:
            hint = " (config.json's tie_word_embeddings is true, so there is no lm_head)" \
                if OUTPUT_HEAD in extra else ""
            raise CheckpointError(
                f"{where}: tensor {shown(extra[0])} is not part of a model with this config.json{hint}"
                + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))

    def raw(self, name: str) -> np.ndarray:
        """The tensor as stored (bf16 as uint16), a read-only view into the map."""
        return self.file.array(name)

    def f32(self, name: str) -> np.ndarray:
        return widen_to_f32(self.file.array(name), self.file.tensors[name].dtype)

    def scale(self, name: str) -> float:
        value = float(self.f32(name)[0])
        if not (math.isfinite(value) and SCALE_RANGE[0] <= abs(value) <= SCALE_RANGE[1]):
            raise CheckpointError(f"{self.file.path}: tensor {name} is {value}; a weight scale must be finite and "
                                  f"non-zero, between {SCALE_RANGE[0]:g} and {SCALE_RANGE[1]:g} in size")
        return value

    def check_floats(self) -> None:
        """Every float tensor (embedding, norms) holds finite numbers: a NaN or infinity would make every logit NaN.
        Read once, at import, a chunk of rows at a time (the 2B4T's embedding is 657 MB)."""
        exponent = {"BF16": 0x7F80}  # all exponent bits set: an infinity or a NaN
        for name, info in self.file.tensors.items():
            if info.dtype not in FLOAT_DTYPES or name.endswith("weight_scale"):
                continue
            raw = self.raw(name).reshape(info.shape[0] if info.shape else 1, -1)
            for start in range(0, raw.shape[0], 8192):
                rows = raw[start:start + 8192]
                # bf16 is read as its uint16 bits; float16 (1bitLLM's masters) and float32 as numbers
                bad = (rows & exponent["BF16"]) == exponent["BF16"] if info.dtype == "BF16" else ~np.isfinite(rows)
                if bad.any():
                    row, col = np.argwhere(bad)[0]
                    raise CheckpointError(f"{self.file.path}: tensor {name} holds NaN or infinity (row {start + row}, "
                                          f"column {col}): the file is damaged; download or import it again")

    def check_ternary_codes(self, name: str) -> None:
        """A packed byte holding the code 3 is not a ternary value: the file is corrupt."""
        from trit.engine.runtime import native  # the scan runs natively: 521 MB for the 2B4T

        packed = self.raw(name)
        bad = native.find_invalid_code(packed)
        if bad >= 0:
            row, col = divmod(bad, packed.shape[1])
            raise CheckpointError(f"{self.file.path}: tensor {name} byte [{row}, {col}] holds the invalid ternary "
                                  "code 3 — the file is corrupt; download or import it again")

    def packed_names(self) -> list[str]:
        return [f"model.layers.{i}.{p}.weight" for i in range(self.config.num_hidden_layers) for p in PROJECTIONS]
