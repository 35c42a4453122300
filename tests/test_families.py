"""Issue 19: every ternary family bitnet.cpp runs — BitNet b1.58 (2B4T), the Llama block with the bitnet quantizer
(Falcon-E, Falcon3-1.58bit, Llama3-8B-1.58) — judged from config.json, run by the engine, proven against
transformers."""

from __future__ import annotations

import pytest

from trit.engine.errors import CheckpointError
from trit.engine.formats.checkpoint import FAMILY_BITNET, FAMILY_LLAMA, family_of

BITNET_CONFIG = {"architectures": ["BitNetForCausalLM"], "model_type": "bitnet",
                 "quantization_config": {"quant_method": "bitnet", "linear_class": "autobitlinear"}}
LLAMA_CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                "quantization_config": {"quant_method": "bitnet", "modules_to_not_convert": None}}


def test_family_of_the_supported_configs():
    assert family_of(BITNET_CONFIG) == FAMILY_BITNET
    assert family_of(LLAMA_CONFIG) == FAMILY_LLAMA


@pytest.mark.parametrize("config, words", [
    ({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}, ["quantization_config", "'bitnet'", "16-bit"]),
    ({**LLAMA_CONFIG, "quantization_config": {"quant_method": "gptq"}}, ["quantization_config", "'bitnet'"]),
    ({"architectures": ["MistralForCausalLM"], "model_type": "mistral"}, ["model_type is 'mistral'",
                                                                           "MistralForCausalLM"]),
    ({"architectures": ["BitnetForCausalLM"], "model_type": "llama"}, ["BitnetForCausalLM", "1bitLLM"]),
    ({}, ["model_type is None"]),
    ({"model_type": "llama", "architectures": "LlamaForCausalLM"}, ["architectures must be a list"]),
])
def test_family_of_an_unsupported_config_names_what_is_missing(config, words):
    with pytest.raises(CheckpointError) as e:
        family_of(config, "someone/repo config.json")
    message = str(e.value)
    assert message.startswith("someone/repo config.json: ") and "\n" not in message
    for word in words:
        assert word in message
