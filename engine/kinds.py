"""The two kinds of model Trit runs, named once: a BitNet b1.58 checkpoint folder on Trit's own kernel, and any GGUF
file through llama.cpp. `trit.engine.locate` decides which kind a path holds."""

BITNET = "bitnet"        # Trit's own engine: trit.engine.runtime on the native library
LLAMA_CPP = "llama.cpp"  # trit.engine.backends.llamacpp, through llama-cpp-python
BACKENDS = (BITNET, LLAMA_CPP)
