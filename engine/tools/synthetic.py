"""Random ternary models of any shape and family, written in the exact Hugging Face packed format.

The real checkpoint is 1.2 GB behind a download; tests, benchmarks and the native kernel need models now, of any
shape, that transformers' `BitNetForCausalLM` loads as it loads the real one. A folder written here holds
config.json, model.safetensors (ternary projections packed 4 rows per byte, bf16 elsewhere), a Llama 3-layout
byte-level BPE tokenizer (tokenizer.json + tokenizer_config.json with the family's special tokens and chat template:
BitNet's, Falcon-E's ChatML, Falcon3's, Llama 3's; for 1bitLLM Llama 2's SentencePiece layout and no template) and
generation_config.json (eos_token_id an int or a list, as the family's repositories write it). Everything is
deterministic: the same arguments give the same bytes.

The Llama-block presets (falcon-e-*, falcon3-*, llama3-8b-1.58 and their -tiny variants) write what transformers'
`LlamaForCausalLM` loads with the bitnet quantizer: the same packed projections, no sub-norms, and an untied
lm_head where the real repository has one.

    python -m trit.engine.tools.synthetic OUT_DIR [--preset tiny|small|2b4t|falcon-e-3b|...] [--seed N]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np

from trit.engine.formats.checkpoint import (
    CONFIG_FILE,
    FAMILY_1BITLLM,
    FAMILY_BITNET,
    FAMILY_LLAMA,
    LINEAR_CLASSES,
    OUTPUT_HEAD,
    PROJECTIONS,
    WEIGHTS_FILE,
    ModelConfig,
    widen_to_f32,
)
from trit.engine.formats.packing import pack_ternary
from trit.engine.formats.safetensors_file import write_safetensors

# Shapes. "tiny" keeps every reduction dimension (hidden, intermediate) a multiple of 128 so blocked kernels run
# it unchanged, and has GQA (2 query heads per kv head) so head mapping bugs show.
PRESETS: dict[str, dict] = {
    "tiny": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1024, max_position_embeddings=4096,
                 rope_theta=500000.0, rms_norm_eps=1e-5),
    "small": dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=2, vocab_size=8192, max_position_embeddings=4096,
                  rope_theta=500000.0, rms_norm_eps=1e-5),
    "2b4t": dict(hidden_size=2560, intermediate_size=6912, num_hidden_layers=30, num_attention_heads=20,
                 num_key_value_heads=5, vocab_size=128256, max_position_embeddings=4096,
                 rope_theta=500000.0, rms_norm_eps=1e-5),
}

# The Llama-block families, with the real repositories' shapes. The Falcon3 and Llama3 ones follow their published
# config.json (Falcon3: head_dim 256, rope_theta 1000042, vocabulary 131072; Llama3-8B: Llama 3's); the Falcon-E
# ones were not read from the real files (no network here) and are sized to the repositories' download sizes
# (about 0.6 and 1.0 GB): check them against the real config.json before relying on them.
_FALCON3 = dict(num_attention_heads=12, num_key_value_heads=4, head_dim=256, vocab_size=131072,
                max_position_embeddings=32768, rope_theta=1000042.0, rms_norm_eps=1e-6, tie_word_embeddings=False)
LLAMA_PRESETS: dict[str, dict] = {
    "falcon-e-1b": dict(hidden_size=2048, intermediate_size=9216, num_hidden_layers=24, num_attention_heads=16,
                        num_key_value_heads=2, head_dim=128, vocab_size=32768, max_position_embeddings=32768,
                        rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False),
    "falcon-e-3b": dict(hidden_size=2560, intermediate_size=10240, num_hidden_layers=28, num_attention_heads=20,
                        num_key_value_heads=2, head_dim=128, vocab_size=32768, max_position_embeddings=32768,
                        rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False),
    "falcon3-1b-1.58": {**_FALCON3, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 18,
                        "num_attention_heads": 8, "max_position_embeddings": 8192},
    "falcon3-3b-1.58": {**_FALCON3, "hidden_size": 3072, "intermediate_size": 9216, "num_hidden_layers": 22,
                        "max_position_embeddings": 4096},
    "falcon3-7b-1.58": {**_FALCON3, "hidden_size": 3072, "intermediate_size": 23040, "num_hidden_layers": 28,
                        "max_position_embeddings": 8192},
    "falcon3-10b-1.58": {**_FALCON3, "hidden_size": 3072, "intermediate_size": 23040, "num_hidden_layers": 40},
    "llama3-8b-1.58": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                           num_key_value_heads=8, head_dim=128, vocab_size=128256, max_position_embeddings=8192,
                           rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False),
    # For tests: each real shape's head_dim, GQA ratio and head kind, at a size that runs in a second. The Falcon3 one
    # keeps head_dim 256 and a context above 4096.
    "falcon-e-tiny": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=2,
                          num_key_value_heads=1, head_dim=128, vocab_size=1024, max_position_embeddings=4096,
                          rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False),
    "falcon3-tiny": {**_FALCON3, "hidden_size": 512, "intermediate_size": 512, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 1024,
                     "max_position_embeddings": 8192},
    "llama3-tiny": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=3, num_attention_heads=4,
                        num_key_value_heads=2, head_dim=64, vocab_size=1024, max_position_embeddings=4096,
                        rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False),
}
PRESETS.update(LLAMA_PRESETS)

# 1bitLLM's reproductions of the BitNet b1.58 paper (bitnet_b1_58-large, -3B): Llama 2's 32002-token vocabulary,
# 2048 positions, float16 master weights (shapes from their config.json as published; check before relying on them).
ONEBITLLM_PRESETS: dict[str, dict] = {
    "bitnet-b1.58-large": dict(hidden_size=1536, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                               num_key_value_heads=16, vocab_size=32002, max_position_embeddings=2048,
                               rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=True),
    "bitnet-b1.58-3b": dict(hidden_size=3200, intermediate_size=8640, num_hidden_layers=26, num_attention_heads=32,
                            num_key_value_heads=32, vocab_size=32002, max_position_embeddings=2048,
                            rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=True),
    "1bitllm-tiny": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=4, vocab_size=1024, max_position_embeddings=2048,
                         rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False),
}
PRESETS.update(ONEBITLLM_PRESETS)

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
MIN_VOCAB = 512  # 256 byte tokens + 256 special tokens

# Llama 3's last 256 ids, as offsets from vocab_size. Reserved tokens fill every id not named here.
NUM_SPECIAL = 256
_NAMED_SPECIAL = {
    0: "<|begin_of_text|>", 1: "<|end_of_text|>",
    2: "<|reserved_special_token_0|>", 3: "<|reserved_special_token_1|>",
    4: "<|reserved_special_token_2|>", 5: "<|reserved_special_token_3|>",
    6: "<|start_header_id|>", 7: "<|end_header_id|>", 8: "<|reserved_special_token_4|>", 9: "<|eot_id|>",
}
BOS, END_OF_TEXT, EOT = "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"

# The BitNet b1.58 2B4T form: <BOS>Role: content<|eot_id|>... then "Assistant: ". Written with expressions only
# (no literal text between tags) so whitespace control in any jinja2 environment cannot change the output.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ message['role'] | capitalize + ': ' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}"
)

# Meta-Llama-3-8B-Instruct's template, which HF1BitLLM/Llama3-8B-1.58-100B-tokens carries: a header per role, the
# content trimmed, <|eot_id|> after each turn, BOS before the first.
LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Falcon3-Instruct's template (the Falcon3-*-Instruct-1.58bit repositories carry it), without its tool-calling
# branch: <|role|> lines, an assistant turn ended by eos_token (<|endoftext|>), no BOS.
FALCON3_CHAT_TEMPLATE = (
    "{%- for message in messages %}\n"
    "{%- if message['role'] == 'system' %}\n{{- '<|system|>\\n' + message['content'] + '\\n' }}\n"
    "{%- elif message['role'] == 'user' %}\n{{- '<|user|>\\n' + message['content'] + '\\n' }}\n"
    "{%- elif message['role'] == 'assistant' %}\n{%- if not loop.last %}\n"
    "{{- '<|assistant|>\\n' + message['content'] + eos_token + '\\n' }}\n{%- else %}\n"
    "{{- '<|assistant|>\\n' + message['content'] + eos_token }}\n{%- endif %}\n{%- endif %}\n"
    "{%- if loop.last and add_generation_prompt %}\n{{- '<|assistant|>\\n' }}\n{%- endif %}\n"
    "{%- endfor %}"
)

# ChatML, which the Falcon-E Instruct repositories use (not read from their files: no network here; check it):
# <|im_start|>role, the content, <|im_end|>.
CHATML_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + "
    "'\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class Conventions:
    """A family's tokenizer conventions: its named special tokens (role -> offset into the 256 at the top of a
    byte-level vocabulary, and text), which of them are BOS, eos_token and config.json's eos, its chat template, and
    generation_config's eos_token_id (one role: an int, as Falcon's repositories write it; a tuple: a list, as
    Llama 3's)."""

    def __init__(self, named: dict[str, tuple[int, str]], *, bos: str | None, eos_token: str, config_eos: str,
                 generation_eos: str | tuple[str, ...], template: str):
        self.named, self.bos, self.eos_token, self.config_eos = named, bos, eos_token, config_eos
        self.generation_eos, self.template = generation_eos, template


_LLAMA3_NAMED = {"bos": (0, BOS), "end_of_text": (1, END_OF_TEXT), "eot": (9, EOT)}  # in _NAMED_SPECIAL's layout
BITNET_CONVENTIONS = Conventions(_LLAMA3_NAMED, bos="bos", eos_token="eot", config_eos="end_of_text",
                                 generation_eos=("end_of_text", "eot"), template=CHAT_TEMPLATE)
LLAMA3_CONVENTIONS = Conventions(_LLAMA3_NAMED, bos="bos", eos_token="eot", config_eos="end_of_text",
                                 generation_eos=("end_of_text", "eot"), template=LLAMA3_CHAT_TEMPLATE)
FALCON3_CONVENTIONS = Conventions(
    {"end_of_text": (1, "<|endoftext|>"), "system": (2, "<|system|>"), "user": (3, "<|user|>"),
     "assistant": (4, "<|assistant|>")},
    bos=None, eos_token="end_of_text", config_eos="end_of_text", generation_eos="end_of_text",
    template=FALCON3_CHAT_TEMPLATE)
FALCON_E_CONVENTIONS = Conventions(
    {"bos": (0, BOS), "end_of_text": (1, END_OF_TEXT), "im_start": (2, "<|im_start|>"), "im_end": (3, "<|im_end|>")},
    bos="bos", eos_token="im_end", config_eos="end_of_text", generation_eos="im_end", template=CHATML_CHAT_TEMPLATE)


def preset_conventions(preset: str) -> Conventions | None:
    """The tokenizer conventions of a preset's family; None for 1bitLLM's Llama 2 tokenizer (build_llama2_tokenizer)."""
    if preset in ONEBITLLM_PRESETS:
        return None
    if preset.startswith("falcon3"):
        return FALCON3_CONVENTIONS
    if preset.startswith("falcon-e"):
        return FALCON_E_CONVENTIONS
    if preset.startswith("llama3"):
        return LLAMA3_CONVENTIONS
    return BITNET_CONVENTIONS


# Llama 3's pre-tokenizer split: contractions, words with one leading non-letter, 1-3 digit groups, punctuation
# runs, newlines, spaces.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


# ---------------------------------------------------------------------------------------------------------------
# config


def special_tokens(vocab_size: int, conventions: Conventions = BITNET_CONVENTIONS) -> dict[int, str]:
    """id -> content for the 256 special tokens at the top of a vocabulary of vocab_size ids."""
    base = vocab_size - NUM_SPECIAL
    named = dict(_NAMED_SPECIAL)
    if conventions.named is not _LLAMA3_NAMED:  # the family's own names where Llama 3's named ones stand
        named = {k: v for k, v in named.items() if "reserved" in v} | dict(conventions.named.values())
    out, reserved = {}, 5
    for k in range(NUM_SPECIAL):
        if k in named:
            out[base + k] = named[k]
        else:
            out[base + k] = f"<|reserved_special_token_{reserved}|>"
            reserved += 1
    return out


def special_token_ids(vocab_size: int, conventions: Conventions = BITNET_CONVENTIONS) -> dict[str, int]:
    """role -> id of the family's named special tokens: bos / end_of_text / eot are 128000 / 128001 / 128009 for the
    2B4T vocabulary."""
    base = vocab_size - NUM_SPECIAL
    return {role: base + k for role, (k, _) in conventions.named.items()}


def preset_family(preset: str) -> str:
    if preset in ONEBITLLM_PRESETS:
        return FAMILY_1BITLLM
    return FAMILY_LLAMA if preset in LLAMA_PRESETS else FAMILY_BITNET


def config_token_ids(preset: str, vocab_size: int) -> tuple[int, int]:
    """config.json's bos_token_id and eos_token_id for the preset's family (Falcon3 names <|endoftext|> for both)."""
    conventions = preset_conventions(preset)
    if conventions is None:
        return LLAMA2_BOS_ID, LLAMA2_EOS_ID
    ids = special_token_ids(vocab_size, conventions)
    return ids[conventions.bos or conventions.config_eos], ids[conventions.config_eos]


def make_config(preset: str = "tiny", *, linear_class: str | None = None, **overrides) -> dict:
    """The config.json dict write_model would write, checked by engine.formats.checkpoint.ModelConfig.
    linear_class: the family's own by default — "autobitlinear" as the 2B4T stores it, "bitlinear" (transformers'
    default, the weight scale divides) for the Llama-block repositories."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    family = preset_family(preset)
    if linear_class is None:
        linear_class = "bitlinear" if family == FAMILY_LLAMA else "autobitlinear"
    if linear_class not in LINEAR_CLASSES:
        raise ValueError(f"linear_class must be one of {', '.join(LINEAR_CLASSES)}, not {linear_class!r}")
    unknown = sorted(set(overrides) - _OVERRIDABLE)
    if unknown:
        raise ValueError(f"unknown config.json key(s) {', '.join(unknown)}; "
                         f"overridable: {', '.join(sorted(_OVERRIDABLE))}")
    shape = {**PRESETS[preset], **overrides}
    vocab = shape["vocab_size"]
    if not isinstance(vocab, int) or vocab < MIN_VOCAB:
        raise ValueError(f"vocab_size must be an integer >= {MIN_VOCAB} (256 byte tokens + 256 special), not {vocab!r}")
    bos_id, eos_id = config_token_ids(preset, vocab)
    # The keys of a transformers BitNetConfig as the 2B4T repository writes them (from memory of that file, not a
    # byte-for-byte copy). rope_theta stays top-level: transformers 5 folds it into rope_parameters on load.
    # eos is end_of_text, as transformers' BitNetConfig default; generation_config.json adds <|eot_id|>, so a
    # reader must take its stop ids from there, as it must for the real model.
    if family == FAMILY_1BITLLM:
        # 1bitLLM's config.json: a LlamaConfig naming its own BitnetForCausalLM, with the bit widths of its BitLinear
        # and no quantization_config (the weights are float)
        cfg = {
            "architectures": ["BitnetForCausalLM"],
            "attention_bias": False,
            "attention_dropout": 0.0,
            "bos_token_id": bos_id,
            "eos_token_id": eos_id,
            "hidden_act": "silu",
            "initializer_range": 0.02,
            "input_bits": 8,
            "model_type": "llama",
            "pretraining_tp": 1,
            "rope_scaling": None,
            "torch_dtype": "float16",
            "use_cache": True,
            "weight_bits": 1,
            **shape,
        }
        ModelConfig.from_dict(cfg, f"preset {preset!r} with {overrides}")
        return dict(sorted(cfg.items()))
    if family == FAMILY_LLAMA:
        # The keys of a transformers LlamaConfig with the bitnet quantizer, as the Falcon3-1.58bit repositories write
        # them (from their published config.json, not a byte-for-byte copy).
        cfg = {
            "architectures": ["LlamaForCausalLM"],
            "attention_bias": False,
            "attention_dropout": 0.0,
            "bos_token_id": bos_id,
            "eos_token_id": eos_id,
            "hidden_act": "silu",
            "initializer_range": 0.02,
            "mlp_bias": False,
            "model_type": "llama",
            "pretraining_tp": 1,
            "rope_scaling": None,
            "torch_dtype": "bfloat16",
            "use_cache": True,
            "quantization_config": {"quant_method": "bitnet", "linear_class": linear_class,
                                    "quantization_mode": "offline", "modules_to_not_convert": None},
            **shape,
        }
        ModelConfig.from_dict(cfg, f"preset {preset!r} with {overrides}")
        return dict(sorted(cfg.items()))
    cfg = {
        "architectures": ["BitNetForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "hidden_act": "relu2",
        "initializer_range": 0.02,
        "model_type": "bitnet",
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "quantization_config": {"quant_method": "bitnet", "linear_class": linear_class,
                                "quantization_mode": "offline"},
        **shape,
    }
    ModelConfig.from_dict(cfg, f"preset {preset!r} with {overrides}")  # fail here, not in a reader later
    return dict(sorted(cfg.items()))  # sorted, as transformers writes config.json


# Shape keys plus the plain scalars of config.json. Token ids, model_type, tying and the quantisation block are
# derived (from vocab_size and linear_class) so the tokenizer and generation_config.json always agree with them.
_OVERRIDABLE = set(PRESETS["tiny"]) | {"head_dim", "attention_dropout", "initializer_range", "use_cache", "torch_dtype",
                                       "tie_word_embeddings"}


def generation_config(vocab_size: int, preset: str = "tiny") -> dict:
    """The family's generation_config.json: eos_token_id as its repositories write it, an int or a list."""
    bos_id, _ = config_token_ids(preset, vocab_size)
    conventions = preset_conventions(preset)
    if conventions is None:  # 1bitLLM: Llama 2's </s>
        eos = LLAMA2_EOS_ID
    else:
        ids = special_token_ids(vocab_size, conventions)
        g = conventions.generation_eos
        eos = ids[g] if isinstance(g, str) else [ids[role] for role in g]
    return {"bos_token_id": bos_id, "eos_token_id": eos, "do_sample": True, "temperature": 0.6, "top_p": 0.9}


# ---------------------------------------------------------------------------------------------------------------
# weights


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns (uint16), rounded to nearest, ties to even (finite inputs)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((u + (np.uint32(0x7FFF) + ((u >> 16) & 1))) >> 16).astype(np.uint16)


def _rng(seed: int, name: str) -> np.random.Generator:
    # One stream per tensor, keyed by name: a tensor's values depend only on (seed, name, shape), so e.g. adding
    # layers leaves the existing ones unchanged.
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


# byte -> ternary value, (b*3)>>8: 86/85/85 of the 256 bytes give -1/0/+1. Indexing raw generator output through
# it is ~4x faster than Generator.integers, which matters for the 2.1 G weights of the 2b4t shape.
_TERNARY_LUT = ((np.arange(256, dtype=np.int16) * 3) >> 8).astype(np.int8) - 1
_NONZERO_FRACTION = 170 / 256


def random_ternary(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    n = rows * cols
    raw = rng.bit_generator.random_raw((n + 7) // 8).view(np.uint8)[:n]
    return _TERNARY_LUT[raw].reshape(rows, cols)


def weight_scale(in_features: int, linear_class: str) -> float:
    """The scale that keeps a projection's output rms near its input's: y = x·T has variance in·p(nonzero)·E[x²].
    autobitlinear multiplies by the stored scale, bitlinear divides by it."""
    gain = 1.0 / math.sqrt(in_features * _NONZERO_FRACTION)
    return gain if linear_class == "autobitlinear" else 1.0 / gain


def _norm_weight(rng: np.random.Generator, n: int) -> np.ndarray:
    # Near 1 with a visible spread, so a skipped or misindexed norm weight changes the output.
    return f32_to_bf16_bits(rng.uniform(0.75, 1.25, n).astype(np.float32))


# Logits are (normed hidden state) . embedding rows, so their spread is about embedding std x sqrt(hidden). The tied
# embedding is also the residual stream's starting point: at std 1 it outweighs what the layers add, and every
# position's top-1 logit is simply its own input token whatever the layers compute (a broken layer would still
# agree on top-1). At std EMBED_LOGIT_STD/sqrt(hidden) the layers dominate the final state and logits spread ~N(0, 4²).
EMBED_LOGIT_STD = 4.0


def embedding_std(hidden: int) -> float:
    return EMBED_LOGIT_STD / math.sqrt(hidden)


def _embedding(seed: int, vocab: int, hidden: int, chunk_rows: int = 8192) -> np.ndarray:
    # Chunked so the 2b4t embedding never exists as float32 (1.3 GB); only its bf16 form (657 MB) is kept.
    rng = _rng(seed, "model.embed_tokens.weight")
    std = np.float32(embedding_std(hidden))
    out = np.empty((vocab, hidden), np.uint16)
    for start in range(0, vocab, chunk_rows):
        stop = min(vocab, start + chunk_rows)
        out[start:stop] = f32_to_bf16_bits(rng.standard_normal((stop - start, hidden), dtype=np.float32) * std)
    return out


def projection_shapes(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
    """projection name (as in PROJECTIONS) -> unpacked (out, in)."""
    h, i = cfg.hidden_size, cfg.intermediate_size
    q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    return {"self_attn.q_proj": (q, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h),
            "self_attn.o_proj": (h, q), "mlp.gate_proj": (i, h), "mlp.up_proj": (i, h), "mlp.down_proj": (h, i)}


HEAD_DTYPES = ("BF16", "F16", "F32")  # how an untied lm_head can be stored


def _output_head(seed: int, vocab: int, hidden: int, dtype: str) -> np.ndarray:
    """An untied head: its own random rows (not the embedding's), of the embedding's spread, so tying it by mistake
    changes every logit."""
    rng = _rng(seed, OUTPUT_HEAD)
    rows = rng.standard_normal((vocab, hidden), dtype=np.float32) * np.float32(embedding_std(hidden))
    return {"BF16": f32_to_bf16_bits, "F16": lambda a: a.astype(np.float16), "F32": lambda a: a}[dtype](rows)


def generate_tensors(config: dict, seed: int = 0, head_dtype: str = "BF16") -> Iterator[tuple[str, str, np.ndarray]]:
    """(name, safetensors dtype, array) for every tensor of the model, in file order."""
    cfg = ModelConfig.from_dict(config)
    if cfg.float_masters:  # 1bitLLM stores every tensor in float16
        yield from _float_master_tensors(cfg, seed)
        return
    yield "model.embed_tokens.weight", "BF16", _embedding(seed, cfg.vocab_size, cfg.hidden_size)
    norm_sizes = {"input_layernorm": cfg.hidden_size, "post_attention_layernorm": cfg.hidden_size}
    if cfg.has_sub_norms:
        norm_sizes.update(zip(cfg.sub_norm_names, (cfg.num_attention_heads * cfg.head_dim, cfg.intermediate_size)))
    shapes = projection_shapes(cfg)
    for layer in range(cfg.num_hidden_layers):
        p = f"model.layers.{layer}."
        for name in norm_sizes:
            yield p + name + ".weight", "BF16", _norm_weight(_rng(seed, p + name + ".weight"), norm_sizes[name])
        for name in PROJECTIONS:
            rows, cols = shapes[name]
            full = p + name + ".weight"
            yield full, "U8", pack_ternary(random_ternary(_rng(seed, full), rows, cols))
            scale = np.array([weight_scale(cols, cfg.linear_class)], np.float32)
            yield full + "_scale", "BF16", f32_to_bf16_bits(scale)
    yield "model.norm.weight", "BF16", _norm_weight(_rng(seed, "model.norm.weight"), cfg.hidden_size)
    if not cfg.tie_word_embeddings:
        yield OUTPUT_HEAD, head_dtype, _output_head(seed, cfg.vocab_size, cfg.hidden_size, head_dtype)


def _float_master_tensors(cfg: ModelConfig, seed: int) -> Iterator[tuple[str, str, np.ndarray]]:
    """1bitLLM's float16 tensors. A projection's weights are normal with mean |W| = the gain that keeps the output's
    rms near the input's once quantised (T / s with s = 1 / mean |W|: about 69% of T is non-zero)."""
    f16 = lambda bits: widen_to_f32(bits, "BF16").astype(np.float16)  # noqa: E731 (the same values as bf16 ones)
    yield "model.embed_tokens.weight", "F16", f16(_embedding(seed, cfg.vocab_size, cfg.hidden_size))
    attn_norm, ffn_norm = cfg.sub_norm_names
    norm_sizes = {"input_layernorm": cfg.hidden_size, "post_attention_layernorm": cfg.hidden_size,
                  attn_norm: cfg.num_attention_heads * cfg.head_dim, ffn_norm: cfg.intermediate_size}
    for layer in range(cfg.num_hidden_layers):
        p = f"model.layers.{layer}."
        for name, n in norm_sizes.items():
            yield p + name + ".weight", "F16", f16(_norm_weight(_rng(seed, p + name + ".weight"), n))
        for name, (rows, cols) in projection_shapes(cfg).items():
            full = p + name + ".weight"
            std = 1.0 / math.sqrt(cols * 0.69) / math.sqrt(2 / math.pi)  # mean |W| of a normal is std * sqrt(2/pi)
            w = _rng(seed, full).standard_normal((rows, cols), dtype=np.float32) * np.float32(std)
            yield full, "F16", w.astype(np.float16)
    yield "model.norm.weight", "F16", f16(_norm_weight(_rng(seed, "model.norm.weight"), cfg.hidden_size))
    if not cfg.tie_word_embeddings:
        yield OUTPUT_HEAD, "F16", _output_head(seed, cfg.vocab_size, cfg.hidden_size, "F16")


# ---------------------------------------------------------------------------------------------------------------
# tokenizer

# A small composed corpus: English prose, chat-like phrasing, code, numbers and a few non-Latin scripts, so the
# trained merges look like a real tokenizer's (frequent words become single tokens) without any download.
_CORPUS = """\
The quick brown fox jumps over the lazy dog. A model that runs on your own computer keeps your words private:
nothing you type leaves the machine, and it works without a network connection. It is an assistant that answers
questions, writes and explains code, summarises documents and helps you think through a problem step by step.
What is the capital of France? The capital of France is Paris. How many days are there in a year? There are 365
days in a year, and 366 in a leap year. Can you help me write an email to my team about the meeting tomorrow?
Of course! Here is a short draft that you can change as you like. Thank you for your help, that was very useful.
I don't know the answer to that question, but I can tell you what I do know. Let's think about this carefully.
First, we read the input. Then we check that it is valid, and finally we return the result to the user.
The weather today is sunny with a high of 21 degrees. Tomorrow there will be some rain in the afternoon.
She said that they would arrive at the station at 10:45, but the train was late and they missed the bus.
In the beginning there was nothing; then there was light, and after the light came the long history of the world.
People have always told stories about where they came from and where they are going, and why things are so.
Science is the careful study of the natural world through observation, measurement and experiment.
Mathematics gives us the language: 1 + 1 = 2, 2 * 3 = 6, 10 / 4 = 2.5, and the square root of 2 is 1.41421356.
def fibonacci(n: int) -> list[int]:
    \"\"\"Return the first n Fibonacci numbers.\"\"\"
    result = [0, 1]
    for i in range(2, n):
        result.append(result[i - 1] + result[i - 2])
    return result[:n]

class Counter:
    def __init__(self):
        self.count = 0

    def increment(self, step=1):
        self.count += step
        return self.count

if __name__ == "__main__":
    print(fibonacci(10))
    print({"name": "value", "items": [1, 2, 3], "enabled": true, "ratio": 0.75})
int main(void) { for (int i = 0; i < 10; i++) { printf("%d\\n", i); } return 0; }
<html><body><p>Hello, world!</p></body></html>
SELECT id, name FROM users WHERE age >= 18 ORDER BY name;
https://example.com/path/to/page?query=value&other=42
Le café est très bon, merci beaucoup. L'été dernier, nous sommes allés à la mer.
Das Wetter ist schön, und die Straße ist ruhig. Größe, Übung, Mädchen.
El niño comió una manzana. ¿Dónde está la biblioteca? ¡Qué día tan bonito!
Привет, как дела? Спасибо, хорошо.
你好，世界。今天天气很好。我们一起学习。
こんにちは、世界。ありがとうございます。
안녕하세요. 감사합니다.
مرحبا بالعالم
नमस्ते दुनिया
Emoji: 😀 😂 👍 🎉 ❤️ 🚀 ✨ 🙏
"""
_MAX_TRAINED_MERGES = 4000


def _byte_chars() -> list[str]:
    """GPT-2 / Llama 3 byte-level alphabet: the printable character each byte 0..255 is written as."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def _pre_tokenizer():
    from tokenizers import Regex, pre_tokenizers
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])


def _trained_merges(limit: int) -> list[tuple[str, str]]:
    """Up to `limit` merges learnt from the composed corpus, in rank order."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    if limit <= 0:
        return []
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = _pre_tokenizer()
    trainer = trainers.BpeTrainer(vocab_size=256 + limit, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(_CORPUS.splitlines(keepends=True), trainer)
    merges = json.loads(tok.to_str())["model"]["merges"]
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in merges][:limit]


def _merges(count: int) -> list[tuple[str, str]]:
    """`count` BPE merges, each creating a new token: the trained ones, then synthetic ones made by joining
    existing tokens in order of rank (frequent pieces first), which keeps the tokenizer valid at any vocab size."""
    chars = _byte_chars()
    known = set(chars)
    merges = []
    for a, b in _trained_merges(min(count, _MAX_TRAINED_MERGES)):
        if a in known and b in known and a + b not in known:  # each merge must add exactly one new id
            known.add(a + b)
            merges.append((a, b))
    space, newline = chars[ord(" ")], chars[ord("\n")]
    # Pool: learnt tokens first, then ASCII letters, digits and a little punctuation, so joins look like
    # plausible longer words.
    pool = [a + b for a, b in merges] + [chars[c] for c in range(128) if chr(c).isalnum() or chr(c) in ".,'-"]
    while len(merges) < count:
        added = []
        n = len(pool)
        for d in range(2 * n - 1):  # anti-diagonals of the pool x pool grid: rank sum d
            for i in range(max(0, d - n + 1), min(d, n - 1) + 1):
                a, b = pool[i], pool[d - i]
                if b[0] in (space, newline):  # the split never puts a space or newline inside a word
                    continue
                t = a + b
                if t in known:
                    continue
                known.add(t)
                merges.append((a, b))
                added.append(t)
                if len(merges) == count:
                    return merges
        if not added:
            raise RuntimeError("cannot extend the merge list")  # unreachable: pool x pool always grows
        pool = pool + added
    return merges


def build_tokenizer(vocab_size: int, conventions: Conventions = BITNET_CONVENTIONS):
    """A tokenizers.Tokenizer: Llama 3 layout, ids exactly 0..vocab_size-1 — bytes 0..255 (id = byte value), then
    merges, then the 256 special tokens (named as the family names them)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, processors
    if vocab_size < MIN_VOCAB:
        raise ValueError(f"vocab_size must be >= {MIN_VOCAB}, not {vocab_size}")
    regular = vocab_size - NUM_SPECIAL
    merges = _merges(regular - 256)
    vocab = {c: i for i, c in enumerate(_byte_chars())}
    for a, b in merges:
        vocab[a + b] = len(vocab)
    assert len(vocab) == regular
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = _pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    specials = special_tokens(vocab_size, conventions)
    post = [processors.ByteLevel(trim_offsets=False)]
    if conventions.bos is not None:
        bos, bos_id = specials[special_token_ids(vocab_size, conventions)[conventions.bos]], \
            special_token_ids(vocab_size, conventions)[conventions.bos]
        post.append(processors.TemplateProcessing(single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                                                  special_tokens=[(bos, bos_id)]))
    tok.post_processor = processors.Sequence(post)
    tok.add_special_tokens([AddedToken(specials[i], special=True, normalized=False) for i in sorted(specials)])
    for i, content in specials.items():
        if tok.token_to_id(content) != i:
            raise AssertionError(f"special token {content} got id {tok.token_to_id(content)}, expected {i}")
    return tok


def tokenizer_config(vocab_size: int, model_max_length: int, conventions: Conventions = BITNET_CONVENTIONS) -> dict:
    specials = special_tokens(vocab_size, conventions)
    ids = special_token_ids(vocab_size, conventions)
    return {
        "added_tokens_decoder": {
            str(i): {"content": c, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                     "special": True}
            for i, c in specials.items()
        },
        "bos_token": specials[ids[conventions.bos]] if conventions.bos else None,
        "eos_token": specials[ids[conventions.eos_token]],  # what ends a chat turn
        "chat_template": conventions.template,
        "clean_up_tokenization_spaces": True,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": model_max_length,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


# Llama 2's SentencePiece layout, which 1bitLLM's repositories use: <unk> <s> </s>, then the 256 byte-fallback tokens
# <0x00>..<0xFF>, then pieces with "▁" for a space; the text gets a "▁" in front (legacy Llama 2 normalizer).
LLAMA2_UNK, LLAMA2_BOS, LLAMA2_EOS = "<unk>", "<s>", "</s>"
LLAMA2_BOS_ID, LLAMA2_EOS_ID = 1, 2
_SPACE = "\u2581"


def build_llama2_tokenizer(vocab_size: int):
    """A tokenizers.Tokenizer in Llama 2's tokenizer.json form (byte fallback, no byte-level alphabet), ids exactly
    0..vocab_size-1: pieces learnt from the composed corpus, then unreachable filler pieces up to vocab_size."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    specials = [LLAMA2_UNK, LLAMA2_BOS, LLAMA2_EOS]
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    if vocab_size < MIN_VOCAB:
        raise ValueError(f"vocab_size must be >= {MIN_VOCAB}, not {vocab_size}")
    learner = Tokenizer(models.BPE(unk_token=LLAMA2_UNK))
    learner.normalizer = normalizers.Sequence([normalizers.Prepend(_SPACE), normalizers.Replace(" ", _SPACE)])
    learner.pre_tokenizer = pre_tokenizers.Split(Regex(f"{_SPACE}[^{_SPACE}]*"), behavior="isolated")
    learner.train_from_iterator(_CORPUS.splitlines(), trainers.BpeTrainer(
        vocab_size=min(vocab_size, len(specials) + 256 + _MAX_TRAINED_MERGES), show_progress=False,
        special_tokens=specials + byte_tokens, min_frequency=2))
    learnt = json.loads(learner.to_str())["model"]
    vocab = dict(sorted(learnt["vocab"].items(), key=lambda kv: kv[1]))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in learnt["merges"]]
    filler = 0
    while len(vocab) < vocab_size:  # no merge makes these: a real vocabulary has pieces a short corpus never needs
        vocab[f"{_SPACE}<filler_{filler}>"] = len(vocab)
        filler += 1
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=LLAMA2_UNK, fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend(_SPACE), normalizers.Replace(" ", _SPACE)])
    tok.decoder = decoders.Sequence([decoders.Replace(_SPACE, " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single=f"{LLAMA2_BOS}:0 $A:0",
                                                       pair=f"{LLAMA2_BOS}:0 $A:0 {LLAMA2_BOS}:1 $B:1",
                                                       special_tokens=[(LLAMA2_BOS, LLAMA2_BOS_ID)])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    for i, content in enumerate(specials + byte_tokens):
        if tok.token_to_id(content) != i:
            raise AssertionError(f"token {content} got id {tok.token_to_id(content)}, expected {i}")
    return tok


def llama2_tokenizer_config(model_max_length: int) -> dict:
    """1bitLLM's tokenizer_config.json: Llama 2's special tokens and no chat template (they are base models)."""
    return {
        "added_tokens_decoder": {
            str(i): {"content": c, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                     "special": True}
            for i, c in enumerate((LLAMA2_UNK, LLAMA2_BOS, LLAMA2_EOS))
        },
        "bos_token": LLAMA2_BOS,
        "eos_token": LLAMA2_EOS,
        "unk_token": LLAMA2_UNK,
        "clean_up_tokenization_spaces": False,
        "legacy": True,
        "model_max_length": model_max_length,
        "tokenizer_class": "LlamaTokenizer",
    }


# ---------------------------------------------------------------------------------------------------------------
# writing


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_model(folder: str | os.PathLike, preset: str = "tiny", *, seed: int = 0,
                linear_class: str | None = None, overwrite: bool = False, head_dtype: str = "BF16",
                **overrides) -> Path:
    """Write a random packed BitNet b1.58 model into `folder` and return its path.

    overrides are config.json keys (hidden_size, num_hidden_layers, vocab_size, rope_theta, ...). head_dtype: how an
    untied lm_head is stored (HEAD_DTYPES). Everything is
    written into a hidden sibling folder first and renamed into place at the end, so an interrupted write never
    leaves a complete-looking model. An existing non-empty folder is replaced only with overwrite=True.
    """
    folder = Path(folder)
    config = make_config(preset, linear_class=linear_class, **overrides)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise FileExistsError(f"{folder} is not empty (pass overwrite=True to replace it)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
    try:
        conventions, vocab, positions = preset_conventions(preset), config["vocab_size"], \
            config["max_position_embeddings"]
        if conventions is None:
            build_llama2_tokenizer(vocab).save(str(tmp / TOKENIZER_FILE))
            _write_json(tmp / TOKENIZER_CONFIG_FILE, llama2_tokenizer_config(positions))
        else:
            build_tokenizer(vocab, conventions).save(str(tmp / TOKENIZER_FILE))
            _write_json(tmp / TOKENIZER_CONFIG_FILE, tokenizer_config(vocab, positions, conventions))
        _write_json(tmp / GENERATION_CONFIG_FILE, generation_config(vocab, preset))
        meta = {"format": "pt", "generator": "trit engine.tools.synthetic", "preset": preset, "seed": str(seed)}
        if head_dtype not in HEAD_DTYPES:
            raise ValueError(f"head_dtype must be one of {', '.join(HEAD_DTYPES)}, not {head_dtype!r}")
        write_safetensors(tmp / WEIGHTS_FILE, generate_tensors(config, seed, head_dtype), metadata=meta)
        _write_json(tmp / CONFIG_FILE, config)  # last: a folder with config.json is taken as complete
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        if folder.is_dir():
            old = folder.parent / f".{folder.name}.old-{os.getpid()}"
            folder.rename(old)
            tmp.rename(folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m trit.engine.tools.synthetic", description=__doc__.split("\n\n")[0])
    ap.add_argument("folder")
    ap.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--linear-class", default=None, choices=LINEAR_CLASSES,
                    help="the weight scale's direction (default: the preset family's own)")
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config.json key (value parsed as JSON), e.g. --set num_hidden_layers=3")
    args = ap.parse_args(argv)
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value)
    path = write_model(args.folder, args.preset, seed=args.seed, linear_class=args.linear_class,
                       overwrite=args.overwrite, **overrides)
    print(path)


if __name__ == "__main__":
    main()
