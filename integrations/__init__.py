"""Adapters that let other libraries (transformers, vLLM) read and write flash checkpoints."""
