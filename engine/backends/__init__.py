"""Other engines behind the same chat interface: llama.cpp through llama-cpp-python, for GGUF models."""
