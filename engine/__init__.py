"""Trit's engine: BitNet b1.58 packed checkpoints run by the project's own C kernel.

    import trit
    model = trit.load("path/to/model")            # memory-maps and checks the folder (trit.engine.load)
    logits = model.logits([128000, 9906])         # float32 [n_tokens, vocab], fresh context
    ctx = model.context()                         # a KV cache for incremental generation
    last = ctx.eval(prompt_ids)                   # logits of the last token

    for event in model.chat([{"role": "user", "content": "Hi"}], model.default_params(seed=1)):
        print(event.text if isinstance(event, Piece) else f"\n{event.generated_tokens} tokens", end="")

    gguf = trit.load("Llama-3.2-1B-Instruct-Q4_K_M.gguf")  # any GGUF through llama-cpp-python: same chat()
    check_gguf("model.gguf")                       # its header checked without loading: architecture, context…
    find_gguf("folder")                            # the GGUF file trit.load would run for a path, or None
"""

from trit import __version__
from trit.engine.backends.llamacpp.model import GGUFModel
from trit.engine.errors import CheckpointError, EngineError, InputError, NativeError, SamplingError
from trit.engine.formats.checkpoint import Checkpoint, ModelConfig
from trit.engine.formats.gguf import GGUFError, GGUFInfo, check_gguf
from trit.engine.locate import find_gguf, load
from trit.engine.runtime.chat import ChatResult, Piece
from trit.engine.runtime.model import Context, Model
from trit.engine.runtime.sampling import SamplingParams

__all__ = [
    "ChatResult", "Checkpoint", "CheckpointError", "Context", "EngineError", "GGUFError", "GGUFInfo", "GGUFModel",
    "InputError", "Model", "ModelConfig", "NativeError", "Piece", "SamplingError", "SamplingParams", "check_gguf",
    "find_gguf",
    "load",
    "__version__",
]
