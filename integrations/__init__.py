"""Adapters that let other libraries (transformers, vLLM, SGLang) read and write flash checkpoints."""
